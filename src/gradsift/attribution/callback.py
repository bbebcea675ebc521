"""AttributionCallback: the one place that ties the gradient engine and the scorers to Lightning.

Attach it to any ``Trainer`` whose LightningModule has ``per_sample_loss(batch) -> Tensor[B]`` (see
``gradsift.models.base``) and whose datamodule yields dict batches with ``index`` and ``label`` and offers
``attribution_dataloader(split)`` (``gradsift.data.base.NoisyLabelDataModule`` does). At the end of ``fit`` it
gathers per-sample gradients of the chosen parameters for the training split (and the validation split when the
scorer needs it), compresses them on the fly, and, when given a scorer, scores every training sample and writes
``flagged.csv`` (index, given label, clean label, score, flagged), most detrimental first.

Under DDP (``trainer.world_size > 1``) each rank gathers every ``world_size``-th row of the unshuffled
attribution loader into rank-tagged shards of a :class:`~gradsift.attribution.store.GradientStore`; rank 0
merges them in dataset order and every rank then holds the same, complete gradient sets (see
``gradsift.attribution.distributed``). Scoring is deterministic and runs on every rank; only rank 0 writes files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from gradsift.attribution.compressors import Compressor
from gradsift.attribution.distributed import gather_distributed
from gradsift.attribution.gradient_set import GradientSet
from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.scoring.influence import check_exact_hessian_compressor
from gradsift.trim import Trim


#: which split's mean gradient is the reference loss of influence methods (``train`` reuses the training gradients)
REFERENCES = ("val", "train", "test")


class AttributionCallback(pl.Callback):
    """Gather per-sample gradients at fit end and (optionally) score and flag training samples."""

    def __init__(self, gradients: PerSampleGradients | None = None, parameters: str | list[str] = "last_layer",
                 compressor: Compressor | None = None, scorer: Scorer | None = None, trim: Trim | None = None,
                 reference: str = "val", probs: bool | None = None, output_dir: str | None = None, seed: int = 0,
                 store_dir: str | None = None, batches_per_shard: int = 16):
        """``store_dir``: keep the gradients in a sharded, resumable on-disk store there (``<store_dir>/<split>``,
        read back as memmaps); None keeps them in memory (under DDP a temporary store in rank 0's temp directory is
        used and removed, so multi-node runs need a ``store_dir`` on a shared filesystem). A store of the same
        setup (compressor, parameters) is *resumed*, not recomputed: use a fresh directory per trained model.
        With ``strategy="ddp_spawn"`` the gathering happens in the spawned processes and this object in the
        launching process stays empty (Lightning does not send callback state back): read ``store_dir`` instead."""
        if reference not in REFERENCES:
            raise ValueError(f"attribution.reference={reference!r}; expected one of {REFERENCES}")
        self.engine = gradients or PerSampleGradients(parameters=parameters, compressor=compressor)
        self.scorer, self.trim, self.reference, self.seed = scorer, trim, reference, seed
        self.want_probs = probs
        self.output_dir = Path(output_dir) if output_dir else None
        self.store_dir = store_dir
        self.batches_per_shard = int(batches_per_shard)
        self.rank, self.world_size = 0, 1
        self.gradients: dict[str, GradientSet] = {}
        self.train_probs: np.ndarray | None = None
        self.hessian: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.flagged: pd.DataFrame | None = None
        self.timings: dict[str, float] = {}

    # -- Lightning hook ---------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.datamodule is None:
            raise ValueError("AttributionCallback needs trainer.fit(model, datamodule=...) with a gradsift-style "
                             "datamodule (attribution_dataloader(split))")
        dist = None
        if trainer.world_size > 1:
            st = trainer.strategy
            dist = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                    "barrier": lambda: st.barrier("gradsift_store"), "broadcast": st.broadcast}
        self.attribute(pl_module, trainer.datamodule, dist=dist)

    # -- the work ---------------------------------------------------------------------------------
    def needs_reference(self) -> bool:
        """Whether to gather gradients of a reference split other than the training set."""
        return self.reference != "train" and (self.scorer is None or self.scorer.needs_val)

    def attribute(self, module: torch.nn.Module, datamodule, dist: dict | None = None) -> np.ndarray | None:
        """Gather, then score. ``dist``: ``{"rank", "world_size", "barrier", "broadcast"}`` when several processes
        share the work (every rank must call this; ``barrier()``/``broadcast(obj, src=0)`` as Lightning's strategy)."""
        if not callable(getattr(module, "per_sample_loss", None)):
            raise TypeError(f"{type(module).__name__} has no per_sample_loss(batch) -> Tensor[B]; "
                            "see gradsift.models.base for the contract")
        check_exact_hessian_compressor(self.scorer, self.engine.compressor)  # before the gather, not after
        t0 = time.perf_counter()
        self.gradients.update(self.gather(module, datamodule, dist))
        self.timings["gradients_s"] = time.perf_counter() - t0
        want_probs = self.want_probs if self.want_probs is not None else bool(self.scorer and self.scorer.needs_probs)
        if want_probs and callable(getattr(module, "logits", None)):
            self.train_probs = predict_probs(module, datamodule.attribution_dataloader("train"))
        if self.scorer is not None and getattr(self.scorer, "needs_hessian", False):
            self.hessian = self.compute_hessian(module, datamodule)
        if self.scorer is None:
            return None
        return self.score(datamodule)

    def gather(self, module: torch.nn.Module, datamodule, dist: dict | None = None) -> dict[str, GradientSet]:
        """Per-sample gradients of the training split (and of the reference split when needed) as ``{"train", "val"}``."""
        loaders = {"train": (datamodule.attribution_dataloader("train"), "train gradients")}
        if self.needs_reference() and getattr(datamodule, f"{self.reference}_set", None) is not None:
            loaders["val"] = (datamodule.attribution_dataloader(self.reference), f"{self.reference} gradients")
        if dist is None and self.store_dir is None:
            return {split: self.engine.gather(module, loader, desc) for split, (loader, desc) in loaders.items()}
        dist = dist or {"rank": 0, "world_size": 1, "barrier": lambda: None, "broadcast": lambda obj, src=0: obj}
        self.rank, self.world_size = int(dist["rank"]), int(dist["world_size"])
        return gather_distributed(self.engine, module, {s: loader for s, (loader, _) in loaders.items()},
                                  self.rank, self.world_size, root=self.store_dir, barrier=dist["barrier"],
                                  broadcast=dist["broadcast"], batches_per_shard=self.batches_per_shard)

    def compute_hessian(self, module: torch.nn.Module, datamodule) -> np.ndarray:
        from gradsift.attribution.hessian import loss_hessian

        params = select_parameters(module, self.engine.parameters)
        return loss_hessian(module, datamodule.attribution_dataloader("train"), params)

    def inputs(self) -> ScoringInputs:
        train = self.gradients["train"]
        val = train if self.reference == "train" else self.gradients.get("val")
        extra = {"hessian": self.hessian} if self.hessian is not None else {}
        return ScoringInputs(train=train, val=val, train_probs=self.train_probs, seed=self.seed, extra=extra)

    def score(self, datamodule=None) -> np.ndarray:
        t0 = time.perf_counter()
        self.scores = self.scorer.fit_score(self.inputs())
        self.timings["score_s"] = time.perf_counter() - t0
        train = self.gradients["train"]
        clean = _clean_labels(datamodule, train.index) if datamodule is not None else None
        clean = train.labels if clean is None else clean
        remove = (self.trim or Trim(budget=0.05)).select(self.scores, self.scorer.predicted_outliers(),
                                                         n_noisy=int((clean != train.labels).sum()))
        self.flagged = pd.DataFrame({"index": train.index, "label": train.labels, "clean_label": clean,
                                     "score": self.scores, "flagged": remove}).sort_values(
            "score", ascending=False, kind="stable")
        if self.output_dir is not None and self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.flagged.to_csv(self.output_dir / "flagged.csv", index=False)
        return self.scores


@torch.no_grad()
def predict_probs(module: torch.nn.Module, loader) -> np.ndarray:
    """Softmax of ``module.logits(batch)`` over a loader, in loader order (eval mode)."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out = []
    try:
        for batch in loader:
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            out.append(module.logits(batch).float().softmax(-1).cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(out)


def _clean_labels(datamodule, index: np.ndarray) -> np.ndarray | None:
    """Clean labels of the rows ``index`` when the datamodule knows them (gradsift datamodules do), else None."""
    ds = getattr(datamodule, "train_set", None)
    if ds is None or not hasattr(ds, "columns") or "clean_label" not in ds.columns:
        return None
    if hasattr(ds, "positions"):
        return ds.column("clean_label")[ds.positions(index)]
    pos = {int(ix): p for p, ix in enumerate(ds.index)}  # a user's own dataset with ``index`` and ``columns``
    return np.asarray(ds.columns["clean_label"])[[pos[int(i)] for i in index]]
