"""AttributionCallback: the one place that ties an :class:`~gradsift.attributor.Attributor` to Lightning.

Attach it to any ``Trainer`` whose LightningModule has ``per_sample_loss(batch) -> Tensor[B]`` and whose datamodule
offers ``attribution_dataloader(split)``; at the end of ``fit`` it runs the attributor on the trained module and,
given an ``output_dir``, writes ``flagged.csv`` (index, given label, clean label, score, flagged), most detrimental
first. Under DDP (``trainer.world_size > 1``) every rank gathers a strided share of the rows through the strategy's
barrier and broadcast, rank 0 merges them, every rank scores the same sets, and only rank 0 writes the file. With
``strategy="ddp_spawn"`` the work happens in the spawned processes and this object in the launching process stays
empty (Lightning does not send callback state back): read the attributor's ``store_dir`` instead.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from gradsift.attributor import Attribution, Attributor
from gradsift.scoring.base import ScoringInputs


class AttributionCallback(pl.Callback):
    """Run an :class:`~gradsift.attributor.Attributor` at fit end.

    Args:
        attributor: what to gather, score and flag. Without a scorer the callback only gathers.
        output_dir: where rank 0 writes ``flagged.csv``; None writes nothing.

    Attributes:
        inputs: the gathered gradients (and probabilities) after the fit.
        attribution: the scores and flagged samples after the fit (None without a scorer).
    """

    def __init__(self, attributor: Attributor, output_dir: str | Path | None = None):
        self.attributor = attributor
        self.output_dir = Path(output_dir) if output_dir else None
        self.inputs: ScoringInputs | None = None
        self.attribution: Attribution | None = None

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
        if self.attributor.scorer is None:
            return
        self.attribution = self.attributor.score(self.inputs, trainer.datamodule)
        if self.output_dir is not None and trainer.global_rank == 0:
            self.attribution.write_flagged(self.output_dir)
