"""The small contract a LightningModule meets so gradsift can attribute it.

A module is attributable when it implements ``per_sample_loss(batch) -> Tensor[B]``: the unreduced loss of
every sample in a batch dict, computed so that sample i's loss depends only on sample i (true in eval mode for
every standard layer; BatchNorm must be in eval mode, which the engine ensures). ``logits(batch)`` is optional
and enables probability-based scorers (cleanlab) and accuracy metrics.

:class:`GradsiftModule` implements the Lightning steps from those two methods, so a subclass only writes
``forward``/``logits``/``per_sample_loss`` and ``configure_optimizers``. With :meth:`GradsiftModule.use_cuda_graph`
the module optimizes manually through :class:`gradsift.models.train_step.TrainStep`, which on a CUDA device captures
the whole training step as a CUDA graph (one optimizer, one device, no gradient scaler).
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from gradsift.models.train_step import TrainStep, check_graph_optimizer


@runtime_checkable
class Attributable(Protocol):
    """What attribution needs of a model: the unreduced loss, sample i depending only on sample i."""

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        """Unreduced loss ``[B]``, sample i depending only on sample i."""


class GradsiftModule(pl.LightningModule):
    """Classification module whose steps are built from ``logits(batch)``; loss = cross entropy on ``label``."""

    #: optimize through :class:`TrainStep` (a CUDA graph on CUDA); set with :meth:`use_cuda_graph`
    cuda_graph: bool = False
    #: after a ``cuda_graph`` fit: how many steps ran eagerly / warmed up / were captured / replayed, and why a graph
    #: was given up (None when it was not)
    train_step_counts: dict[str, int] | None = None
    train_step_dropped: str | None = None
    _train_step: TrainStep | None = None

    def use_cuda_graph(self, enabled: bool) -> None:
        """Train with manual optimization through :class:`TrainStep`, captured as a CUDA graph on a CUDA device."""
        self.cuda_graph = bool(enabled)
        self.automatic_optimization = not self.cuda_graph

    def logits(self, batch: dict) -> torch.Tensor:
        """Class logits ``[B, C]``; subclasses implement it."""
        raise NotImplementedError

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        """Cross entropy of the logits against ``label``, one per sample."""
        return F.cross_entropy(self.logits(batch), batch["label"], reduction="none")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Mean per-sample loss (after the optimizer step, with ``cuda_graph``), logged as ``train/loss``."""
        loss = self._manual_step(batch, batch_idx) if self.cuda_graph else self.per_sample_loss(batch).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch["label"]),
                 sync_dist=True)
        return loss

    # -- manual optimization (cuda_graph) ---------------------------------------------------------------
    def make_train_step(self, optimizer: torch.optim.Optimizer) -> TrainStep:
        """The :class:`TrainStep` of this fit: a CUDA graph on a CUDA device, eager (with a warning) elsewhere."""
        trainer = self.trainer
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(f"model.cuda_graph=true cannot use trainer.precision={trainer.precision}: its gradient "
                             "scaler reads the gradients' finiteness back every step; use bf16-mixed or 32-true")
        if trainer.world_size > 1:
            raise ValueError("model.cuda_graph=true trains in one process; set it false for multi-device strategies")
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
        if any(isinstance(c.scheduler, plateau) for c in trainer.lr_scheduler_configs):
            raise ValueError("model.cuda_graph=true steps the schedulers itself and cannot feed ReduceLROnPlateau "
                             "a monitored metric")
        graph = self.device.type == "cuda"
        if graph:
            check_graph_optimizer(optimizer)
        else:
            warnings.warn(f"model.cuda_graph=true: training on {self.device.type}, not CUDA, so the training steps "
                          "run eagerly (same updates, no graph)", stacklevel=2)
        return TrainStep(lambda b: self.per_sample_loss(b).mean(), optimizer, self.device, graph=graph)

    def _manual_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        if isinstance(opt, list):
            raise ValueError(f"model.cuda_graph=true supports one optimizer, configure_optimizers gave {len(opt)}")
        if self._train_step is None:
            self._train_step = self.make_train_step(opt.optimizer)
        # what LightningOptimizer.step does around the step: it counts trainer.global_step
        opt._on_before_step()
        loss = self._train_step(batch)
        opt._on_after_step()
        self._step_schedulers("step", batch_idx + 1)
        return loss

    def _step_schedulers(self, interval: str, count: int) -> None:
        """Step the schedulers of ``interval`` as Lightning's automatic optimization does (every ``frequency``)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and count % config.frequency == 0:
                self.lr_scheduler_step(config.scheduler, None)

    def on_train_epoch_end(self) -> None:
        """With ``cuda_graph``: step the epoch-interval schedulers (automatic optimization would)."""
        if self.cuda_graph:
            self._step_schedulers("epoch", self.current_epoch + 1)

    def on_train_end(self) -> None:
        """With ``cuda_graph``: keep the step counts, free the graph and the gradients it owns."""
        if self._train_step is not None:
            self.train_step_counts = dict(self._train_step.counts)
            self.train_step_dropped = self._train_step.dropped
            self._train_step.release()
            self._train_step = None

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self.logits(batch)
        n = len(batch["label"])
        # evaluation splits are clean: score against clean_label where the datamodule provides it
        target = batch.get("clean_label", batch["label"])
        # sync_dist: under DDP each rank sees a share of the split; the logged value is the mean over all ranks
        self.log(f"{stage}/loss", F.cross_entropy(logits, target), batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc", (logits.argmax(-1) == target).float().mean(), prog_bar=True, batch_size=n,
                 sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Log ``val/loss`` and ``val/acc`` (against ``clean_label`` where given)."""
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Log ``test/loss`` and ``test/acc`` (against ``clean_label`` where given)."""
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Predicted class probabilities."""
        return self.logits(batch).softmax(-1)
