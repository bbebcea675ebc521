"""The small contract a LightningModule meets so gradsift can attribute it.

A module is attributable when it implements ``per_sample_loss(batch) -> Tensor[B]``: the unreduced loss of
every sample in a batch dict, computed so that sample i's loss depends only on sample i (true in eval mode for
every standard layer; BatchNorm must be in eval mode, which the engine ensures). ``logits(batch)`` is optional
and enables probability-based scorers (cleanlab) and accuracy metrics.

:class:`GradsiftModule` implements the Lightning steps from those two methods, so a subclass only writes
``forward``/``logits``/``per_sample_loss`` and ``configure_optimizers``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F


@runtime_checkable
class Attributable(Protocol):
    """What attribution needs of a model: the unreduced loss, sample i depending only on sample i."""

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        """Unreduced loss ``[B]``, sample i depending only on sample i."""


class GradsiftModule(pl.LightningModule):
    """Classification module whose steps are built from ``logits(batch)``; loss = cross entropy on ``label``."""

    def logits(self, batch: dict) -> torch.Tensor:
        """Class logits ``[B, C]``; subclasses implement it."""
        raise NotImplementedError

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        """Cross entropy of the logits against ``label``, one per sample."""
        return F.cross_entropy(self.logits(batch), batch["label"], reduction="none")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Mean per-sample loss, logged as ``train/loss``."""
        loss = self.per_sample_loss(batch).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch["label"]),
                 sync_dist=True)
        return loss

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
