"""Any ``nn.Module`` classifier as a gradsift model, with no subclass: module + loss + the batch keys it reads.

    model=torch_module model.module.in_features=8     # conf/model/torch_module.yaml: an nn.Sequential MLP

:class:`TorchModule` gives the ``per_sample_loss`` / ``logits`` contract of :mod:`gradsift.models.base` and loads
the wrapped module's own state dict (``0.weight``, as ``torch.save(net.state_dict())`` writes it) as well as its own
(``net.0.weight``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradsift.models.base import GradsiftModule
from gradsift.models.optim import OptimizerFactory, SchedulerFactory, TrainingRecipe

#: loss names accepted by ``model.loss``: per-sample losses of (logits [B, C], target [B])
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": functools.partial(F.cross_entropy, reduction="none"),
    "nll": functools.partial(F.nll_loss, reduction="none"),
}


class TorchModule(TrainingRecipe, GradsiftModule):
    """Wrap ``module`` (an ``nn.Module`` whose outputs are class logits) for attribution and training.

    Args:
        module: the network, or (from a config) a ``_target_`` that builds it. Called as
            ``module(*[batch[k] for k in inputs])``, or with keywords when ``inputs`` is a mapping.
        loss: ``"cross_entropy"`` (default), ``"nll"``, or any callable ``(logits, target) -> Tensor[B]`` that
            keeps one loss per sample (``reduction="none"``); per-sample losses of shape [B, ...] are averaged
            over the trailing dimensions.
        inputs: batch key(s) of the module's inputs (``x`` for :class:`gradsift.data.generic.ArrayDataModule`),
            or ``{argument name: batch key}``.
        target: batch key of the training labels.
        optimizer, scheduler, scheduler_interval, no_weight_decay: the training recipe, as every gradsift model
            takes it (:mod:`gradsift.models.optim`; ``model/optimizer=...``, ``model/scheduler=...``).
    """

    def __init__(self, module: nn.Module, loss: str | Callable = "cross_entropy",
                 inputs: str | Sequence[str] | Mapping[str, str] = "x", target: str = "label",
                 optimizer: OptimizerFactory = functools.partial(torch.optim.Adam, lr=1e-3),
                 scheduler: SchedulerFactory | None = None, scheduler_interval: str = "step",
                 no_weight_decay: Sequence[str] = ()):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"model.module must be an nn.Module (or a _target_ building one), got {type(module).__name__}")
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"model.loss={loss!r}; expected one of {sorted(LOSSES)} or a callable")
            loss = LOSSES[loss]
        if not callable(loss):
            raise TypeError(f"model.loss must be a loss name or a callable, got {type(loss).__name__}")
        self.save_hyperparameters(ignore=["module", "loss"])
        self.net = module
        self.loss_fn = loss
        self.inputs = dict(inputs) if isinstance(inputs, Mapping) else [inputs] if isinstance(inputs, str) else list(inputs)
        self.target = target

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.net(*args, **kwargs)

    def logits(self, batch: dict) -> torch.Tensor:
        if isinstance(self.inputs, dict):
            return self.net(**{arg: batch[key] for arg, key in self.inputs.items()})
        return self.net(*(batch[k] for k in self.inputs))

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return self._loss(self.logits(batch), batch[self.target])

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(logits, target)
        if loss.ndim == 0:
            raise ValueError("model.loss returned one number for the whole batch: it must keep one loss per "
                             "sample (reduction='none')")
        return loss.reshape(len(loss), -1).mean(1) if loss.ndim > 1 else loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self.logits(batch)
        n = len(batch[self.target])
        target = batch.get("clean_label", batch[self.target])  # evaluation splits are scored on clean labels
        self.log(f"{stage}/loss", self._loss(logits, target).mean(), batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc", (logits.argmax(-1) == target).float().mean(), prog_bar=True, batch_size=n,
                 sync_dist=True)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Also accepts the wrapped module's own keys (``0.weight``): they are read as ``net.0.weight``."""
        keys = set(state_dict)
        if keys and not keys & set(self.state_dict()) and keys <= set(self.net.state_dict()):
            state_dict = {f"net.{k}": v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
