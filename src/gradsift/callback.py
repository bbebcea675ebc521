"""AttributionCallback: the one place that ties an :class:`~gradsift.attributor.Attributor` to Lightning.

Attach it to any ``Trainer`` whose LightningModule has ``per_sample_loss(batch) -> Tensor[B]`` and whose datamodule
offers ``attribution_dataloader(split)``; at the end of ``fit`` it runs the attributor on the trained module and,
given an ``output_dir``, writes ``flagged.csv`` (index, given label, clean label, score, flagged), most detrimental
first. Under DDP (``trainer.world_size > 1``) every rank gathers a strided share of the rows through the strategy's
barrier and broadcast, rank 0 merges them, every rank scores the same sets, and only rank 0 writes the file. With
``strategy="ddp_spawn"`` the work happens in the spawned processes and this object in the launching process stays
empty (Lightning does not send callback state back): read the attributor's ``store_dir`` instead.

``checkpoints=[epochs]`` also keeps the weights (and the learning rate) at the end of those epochs
(:class:`EpochCheckpoints`) and, at fit end, gathers the scorer's gradients at each of them into
``inputs.extra["checkpoints"]`` (TracInCP, TRAK's ensemble).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from gradsift.attributor import Attribution, Attributor
from gradsift.scoring.base import ScoringInputs


class EpochCheckpoints(pl.Callback):
    """Keep the weights and the learning rate at the end of the given (1-based) training epochs.

    A checkpoint's ``learning_rate`` is the mean learning rate of the optimizer steps since the previous kept epoch
    (since the start for the first): the interval it stands for in TracInCP's sum (Pruthi et al. 2020 Eq. 3). With a
    schedule that decays to zero, the lr at the end of the last epoch would be ~0 and drop the final model.

    Args:
        epochs: the epochs to keep, 1 = after the first epoch.
        folder: also write each as ``epoch_<e>.pt`` with ``checkpoints.json`` (epoch, learning rate, file) there.

    Attributes:
        checkpoints: ``{"epoch", "learning_rate", "name", "state"}`` per kept epoch (CPU state dicts), in epoch order.
    """

    def __init__(self, epochs: Sequence[int], folder: str | Path | None = None):
        epochs = sorted({int(e) for e in epochs})
        if not epochs or epochs[0] < 1:
            raise ValueError(f"attribution.checkpoints must list training epochs >= 1, got {list(epochs)}")
        self.epochs, self.folder = epochs, Path(folder) if folder else None
        self.checkpoints: list[dict] = []
        self._lr_sum, self._steps = 0.0, 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        """Add the learning rate this step will use."""
        if trainer.optimizers:
            self._lr_sum += float(trainer.optimizers[0].param_groups[0]["lr"])
            self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep this epoch's weights and learning rate when it is one of ``epochs``."""
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        lr = self._lr_sum / self._steps if self._steps else 1.0
        self._lr_sum, self._steps = 0.0, 0
        state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        self.checkpoints.append({"epoch": epoch, "learning_rate": lr, "name": f"epoch {epoch}", "state": state})
        if self.folder is not None and trainer.global_rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            torch.save(state, self.folder / f"epoch_{epoch}.pt")
            index = [{k: c[k] for k in ("epoch", "learning_rate", "name")} | {"file": f"epoch_{c['epoch']}.pt"}
                     for c in self.checkpoints]
            (self.folder / "checkpoints.json").write_text(json.dumps(index, indent=1))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fail when a listed epoch never ran (the training had fewer epochs)."""
        missing = sorted(set(self.epochs) - {c["epoch"] for c in self.checkpoints})
        if missing:
            raise ValueError(f"attribution.checkpoints lists epochs {missing}, but the training ran "
                             f"{trainer.current_epoch} epochs (trainer.max_epochs)")


def load_checkpoints(folder: str | Path) -> list[dict]:
    """What :class:`EpochCheckpoints` wrote to ``folder``, states loaded (CPU), in epoch order.

    Args:
        folder: the folder with ``checkpoints.json`` and the ``epoch_<e>.pt`` files.

    Returns:
        ``{"epoch", "learning_rate", "name", "state"}`` per checkpoint.
    """
    folder = Path(folder)
    index = json.loads((folder / "checkpoints.json").read_text())
    return [{**c, "state": torch.load(folder / c["file"], weights_only=True, map_location="cpu")} for c in index]


class AttributionCallback(pl.Callback):
    """Run an :class:`~gradsift.attributor.Attributor` at fit end.

    Args:
        attributor: what to gather, score and flag. Without a scorer the callback only gathers.
        output_dir: where rank 0 writes ``flagged.csv``; None writes nothing.
        checkpoints: training epochs (1-based) at whose end to keep the weights and, at fit end, gather the
            gradients again (``inputs.extra["checkpoints"]``); None = the final model only.

    Attributes:
        inputs: the gathered gradients (and probabilities) after the fit.
        attribution: the scores and flagged samples after the fit (None without a scorer).
    """

    def __init__(self, attributor: Attributor, output_dir: str | Path | None = None,
                 checkpoints: Sequence[int] | None = None):
        self.attributor = attributor
        self.output_dir = Path(output_dir) if output_dir else None
        self.saver = EpochCheckpoints(checkpoints) if checkpoints else None
        self.inputs: ScoringInputs | None = None
        self.attribution: Attribution | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        """Record the learning rate of the step (for the checkpoints' learning rates)."""
        if self.saver is not None:
            self.saver.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the weights at the end of a listed epoch."""
        if self.saver is not None:
            self.saver.on_train_epoch_end(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather (and score) on the trained module, every rank taking part under DDP."""
        if trainer.datamodule is None:
            raise ValueError("AttributionCallback needs trainer.fit(model, datamodule=...) with a gradsift-style "
                             "datamodule (attribution_dataloader(split))")
        dist = None
        if trainer.world_size > 1:
            st = trainer.strategy
            dist = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                    "barrier": lambda: st.barrier("gradsift_store"), "broadcast": st.broadcast}
        self.inputs = self.attributor.gather(pl_module, trainer.datamodule, dist=dist)
        if self.saver is not None:
            self.saver.on_fit_end(trainer, pl_module)
            self.inputs.extra["checkpoints"] = self.attributor.gather_checkpoints(pl_module, trainer.datamodule,
                                                                                  self.saver.checkpoints)
        if self.attributor.scorer is None:
            return
        self.attribution = self.attributor.score(self.inputs, trainer.datamodule)
        if self.output_dir is not None and trainer.global_rank == 0:
            self.attribution.write_flagged(self.output_dir)
