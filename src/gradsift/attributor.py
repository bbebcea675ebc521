"""Attributor: the gradient engine, a scorer and a trim rule combined, usable with no Trainer.

``Attributor(engine, scorer, trim).attribute(model, datamodule)`` gathers per-sample gradients of the chosen
parameters for the training split (and for the reference split when the scorer needs it), compresses them on the
fly, scores every training sample (higher = more detrimental) and flags the trim budget's worst. The model needs
``per_sample_loss(batch) -> Tensor[B]`` (see ``gradsift.models.base``); the datamodule yields dict batches with
``index`` and ``label`` and offers ``attribution_dataloader(split)`` (``gradsift.data.NoisyLabelDataModule`` does).
:meth:`Attributor.gather` and :meth:`Attributor.score` are the two halves, for gradients gathered once and scored
many times (the pipeline's cache). :class:`gradsift.callback.AttributionCallback` runs it at the end of a fit.

Several processes (``dist``): each rank gathers every ``world_size``-th row of the unshuffled attribution loader
into rank-tagged shards of a :class:`~gradsift.attribution.store.GradientStore`; rank 0 merges them in dataset order
and every rank then holds the same, complete gradient sets (see ``gradsift.attribution.distributed``). Scoring is
deterministic and runs on every rank.

It sits above ``scoring`` and ``trim`` in the layers (``docs/ARCHITECTURE.md``): the engine in ``attribution/`` knows
nothing of scorers, and this module is the one place that combines them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gradsift.attribution.compressors import IdentityCompressor
from gradsift.attribution.distributed import gather_distributed
from gradsift.attribution.gradient_set import GradientSet
from gradsift.attribution.gradients import PerSampleGradients, select_parameters
from gradsift.attribution.hessian import loss_hessian
from gradsift.attribution.kfac import KroneckerFactorGatherer, KroneckerFactors
from gradsift.attribution.model_output import MARGIN, margin_output
from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.scoring.checkpoints import CheckpointInputs
from gradsift.trim import Trim

#: which split's mean gradient is the reference loss of influence methods (``train`` reuses the training gradients)
REFERENCES = ("val", "train", "test")


@dataclass
class Attribution:
    """What an :class:`Attributor` found.

    Attributes:
        scores: one score per training row, in the gradient set's row order; higher = more detrimental.
        flagged: one row per training sample (``index``, ``label``, ``clean_label``, ``score``, ``flagged``), most
            detrimental first; its pandas index is the training row.
        score_s: seconds the scorer took.
    """

    scores: np.ndarray
    flagged: pd.DataFrame
    score_s: float

    def write_flagged(self, folder: str | Path) -> Path:
        """Write ``flagged.csv`` into ``folder`` (created).

        Args:
            folder: the output folder.

        Returns:
            The path of the CSV file.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.flagged.to_csv(folder / "flagged.csv", index=False)
        return folder / "flagged.csv"


class Attributor:
    """Per-sample gradients -> scores -> flagged training samples, from a model and a datamodule.

    Args:
        engine: the per-sample gradient engine (parameters and compressor).
        scorer: the scoring method; None only gathers.
        trim: which samples to flag (default: the top 5%).
        reference: the split whose gradients are the reference (``val``, ``train`` or ``test``).
        probs: gather predicted probabilities; None = when the scorer needs them.
        seed: passed to the scorer (``ScoringInputs.seed``).
        store_dir: keep the gradients in a sharded, resumable on-disk store there (``<store_dir>/<split>``, read
            back as memmaps); None keeps them in memory (several processes then share a temporary store in rank 0's
            temp directory that is removed, so multi-node runs need a ``store_dir`` on a shared filesystem). A store
            of the same setup (compressor, parameters) is resumed, not recomputed: use a fresh folder per model.
        batches_per_shard: batches per shard of the on-disk store.

    Raises:
        ValueError: an unknown ``reference``, or a scorer that cannot use the engine's compressor (checked here,
            before anything is gathered).
    """

    def __init__(self, engine: PerSampleGradients, scorer: Scorer | None = None, trim: Trim | None = None,
                 reference: str = "val", probs: bool | None = None, seed: int = 0, store_dir: str | None = None,
                 batches_per_shard: int = 16):
        if reference not in REFERENCES:
            raise ValueError(f"attribution.reference={reference!r}; expected one of {REFERENCES}")
        if scorer is not None:
            scorer.check_compressor(engine.compressor)
        self.engine, self.scorer, self.trim = engine, scorer, trim or Trim(budget=0.05)
        self.reference, self.probs, self.seed = reference, probs, seed
        self.store_dir, self.batches_per_shard = store_dir, int(batches_per_shard)
        #: seconds of the last gather (``gradients_s``) and score (``score_s``)
        self.timings: dict[str, float] = {}

    def attribute(self, module: torch.nn.Module, datamodule, dist: dict | None = None) -> Attribution:
        """Gather, then score.

        Args:
            module: the trained model (``per_sample_loss``; ``logits`` for probability-based scorers).
            datamodule: gives ``attribution_dataloader(split)``.
            dist: ``{"rank", "world_size", "barrier", "broadcast"}`` when several processes share the work (every
                rank calls this; ``barrier()`` / ``broadcast(obj, src=0)`` as Lightning's strategy has them).

        Returns:
            The scores and the flagged samples.

        Raises:
            ValueError: the Attributor has no scorer.
        """
        if self.scorer is None:
            raise ValueError("Attributor.attribute needs a scorer; use gather() to only gather gradients")
        return self.score(self.gather(module, datamodule, dist), datamodule)

    def needs_reference(self) -> bool:
        """Whether to gather gradients of a reference split other than the training set."""
        return self.reference != "train" and (self.scorer is None or self.scorer.needs_reference)

    def gather(self, module: torch.nn.Module, datamodule, dist: dict | None = None) -> ScoringInputs:
        """Per-sample gradients of the training split, the reference split's when needed, and what the scorer reads.

        Args:
            module: the trained model.
            datamodule: gives ``attribution_dataloader(split)`` (and ``<reference>_set`` for the reference split).
            dist: several processes sharing the work, as in :meth:`attribute`.

        Returns:
            The scorer's inputs: ``reference`` is the training set itself for ``reference="train"``, None when the
            datamodule has no such split; ``train_probs`` and ``extra["hessian"]`` are filled when asked for, and
            for a scorer with ``needs_kfac`` ``extra["kfac"]`` (plus ``extra["compressor"]``, the engine's compressor,
            for compressed gradients). Gradients are of TRAK's margin for a scorer with ``model_output="margin"``.

        Raises:
            TypeError: the module has no ``per_sample_loss``.
        """
        if not callable(getattr(module, "per_sample_loss", None)):
            raise TypeError(f"{type(module).__name__} has no per_sample_loss(batch) -> Tensor[B]; "
                            "see gradsift.models.base for the contract")
        t0 = time.perf_counter()
        with self.model_output(module):
            sets = self._gather_sets(module, datamodule, dist)
        self.timings["gradients_s"] = time.perf_counter() - t0
        train = sets["train"]
        want_probs = self.probs if self.probs is not None else bool(self.scorer and self.scorer.needs_probs)
        probs = None
        if want_probs and callable(getattr(module, "logits", None)):
            probs = predict_probs(module, datamodule.attribution_dataloader("train"))
        extra = {}
        if self.scorer is not None and self.scorer.needs_hessian:
            extra["hessian"] = self.hessian(module, datamodule)
        if self.scorer is not None and self.scorer.needs_kfac:
            extra["kfac"] = self.kronecker_factors(module, datamodule, self.scorer.strategy,
                                                   self.scorer.empirical_fisher)
            if not isinstance(self.engine.compressor, IdentityCompressor):
                extra["compressor"] = self.engine.compressor  # set up by the gather on the uncompressed blocks
        reference = train if self.reference == "train" else sets.get(self.reference)
        return ScoringInputs(train=train, reference=reference, train_probs=probs, seed=self.seed, extra=extra)

    def model_output(self, module: torch.nn.Module) -> contextlib.AbstractContextManager:
        """What the engine differentiates for the scorer: a ``with`` block (TRAK's margin, or the loss as is)."""
        if self.scorer is not None and self.scorer.model_output == MARGIN:
            return margin_output(module)
        return contextlib.nullcontext(module)

    def reference_loader(self, datamodule):
        """The reference split's unshuffled loader (the training split's for ``reference="train"``), or None."""
        split = self.reference
        if split != "train" and getattr(datamodule, f"{split}_set", None) is None:
            return None
        return datamodule.attribution_dataloader(split)

    def kronecker_factors(self, module: torch.nn.Module, datamodule, strategy: str = "ekfac",
                          empirical_fisher: bool = False) -> KroneckerFactors:
        """K-FAC / EK-FAC factors of the engine's parameters over the training split (``attribution/kfac.py``).

        Args:
            module: the trained model.
            datamodule: gives the training (and reference) loaders.
            strategy: ``"kfac"`` or ``"ekfac"``.
            empirical_fisher: False = the true Fisher (labels sampled from the model, seeded by the attributor's
                seed), True = the given labels.

        Returns:
            The factors, with the full mean reference gradient (which compressed gradients need).
        """
        gatherer = KroneckerFactorGatherer(self.engine.parameters, strategy=strategy, empirical_fisher=empirical_fisher,
                                           seed=self.seed,
                                           device=self.engine.device, progress=self.engine.progress)
        return gatherer.gather(module, datamodule.attribution_dataloader("train"),
                               reference=self.reference_loader(datamodule))

    def gather_checkpoints(self, module: torch.nn.Module, datamodule, checkpoints: list[dict]) -> list[CheckpointInputs]:
        """The scorer's gradients (and probabilities) at each saved checkpoint, for TracInCP and TRAK's ensemble.

        The module's own weights are restored afterwards.

        Args:
            module: the model (any weights; each checkpoint's ``state`` is loaded into it in turn).
            datamodule: gives the training and reference loaders.
            checkpoints: ``{"state": state_dict, "learning_rate": float, "name": str}`` per checkpoint
                (:class:`gradsift.callback.EpochCheckpoints` records them).

        Returns:
            One :class:`~gradsift.scoring.checkpoints.CheckpointInputs` per checkpoint, in the given order.
        """
        final = {k: v.detach().clone() for k, v in module.state_dict().items()}
        want_probs = self.probs if self.probs is not None else bool(self.scorer and self.scorer.needs_probs)
        out = []
        try:
            for ck in checkpoints:
                module.load_state_dict(ck["state"])
                with self.model_output(module):
                    train = self.engine.gather(module, datamodule.attribution_dataloader("train"),
                                               f"train gradients ({ck.get('name', 'checkpoint')})")
                    ref_loader = self.reference_loader(datamodule) if self.needs_reference() else None
                    reference = train if self.reference == "train" else (
                        self.engine.gather(module, ref_loader, "reference gradients") if ref_loader is not None else None)
                probs = None
                if want_probs and callable(getattr(module, "logits", None)):
                    probs = predict_probs(module, datamodule.attribution_dataloader("train"))
                out.append(CheckpointInputs(train, reference, probs, float(ck.get("learning_rate", 1.0)),
                                            str(ck.get("name", ""))))
        finally:
            module.load_state_dict(final)
        return out

    def _gather_sets(self, module: torch.nn.Module, datamodule, dist: dict | None) -> dict[str, GradientSet]:
        loaders = {"train": (datamodule.attribution_dataloader("train"), "train gradients")}
        if self.needs_reference() and getattr(datamodule, f"{self.reference}_set", None) is not None:
            loaders[self.reference] = (datamodule.attribution_dataloader(self.reference), f"{self.reference} gradients")
        if dist is None and self.store_dir is None:
            return {split: self.engine.gather(module, loader, desc) for split, (loader, desc) in loaders.items()}
        dist = dist or {"rank": 0, "world_size": 1, "barrier": lambda: None, "broadcast": lambda obj, src=0: obj}
        return gather_distributed(self.engine, module, {s: loader for s, (loader, _) in loaders.items()},
                                  int(dist["rank"]), int(dist["world_size"]), root=self.store_dir,
                                  barrier=dist["barrier"], broadcast=dist["broadcast"],
                                  batches_per_shard=self.batches_per_shard)

    def hessian(self, module: torch.nn.Module, datamodule) -> np.ndarray:
        """The exact loss Hessian of the engine's parameters over the training split.

        Args:
            module: the trained model.
            datamodule: gives ``attribution_dataloader("train")``.

        Returns:
            float64 ``[d, d]``, rows and columns in the order of the uncompressed gradient columns.
        """
        params = select_parameters(module, self.engine.parameters)
        return loss_hessian(module, datamodule.attribution_dataloader("train"), params)

    def score(self, inputs: ScoringInputs, datamodule=None) -> Attribution:
        """Score gathered gradients and flag the trim budget's samples.

        Args:
            inputs: what :meth:`gather` returned (or gradient sets gathered elsewhere).
            datamodule: when given and its ``train_set`` has a ``clean_label`` column, the flagged table carries the
                clean labels (and ``trim.budget="n_noisy"`` counts the flipped ones); else the given labels.

        Returns:
            The scores and the flagged samples.
        """
        t0 = time.perf_counter()
        scores = self.scorer.fit_score(inputs)
        score_s = time.perf_counter() - t0
        self.timings["score_s"] = score_s
        flagged = flag_samples(inputs.train, scores, self.scorer, self.trim, datamodule)
        return Attribution(scores=scores, flagged=flagged, score_s=score_s)


def flag_samples(train: GradientSet, scores: np.ndarray, scorer: Scorer, trim: Trim, datamodule=None) -> pd.DataFrame:
    """The flagged table of scored training rows, most detrimental first.

    Columns ``index``, ``label``, ``clean_label``, ``score``, ``flagged`` (True = trimmed); the pandas index is the
    training row.

    Args:
        train: the training rows (their ``index`` and ``labels``; the gradients are not read).
        scores: one score per row, higher = more detrimental.
        scorer: the fitted scorer (its own outlier labels, for ``trim.selection=detector``).
        trim: the trim rule.
        datamodule: when it knows the clean labels, the table carries them (and ``n_noisy`` budgets count them).
    """
    clean = _clean_labels(datamodule, train.index) if datamodule is not None else None
    clean = train.labels if clean is None else clean
    remove = trim.select(scores, scorer.predicted_outliers(), n_noisy=int((clean != train.labels).sum()))
    return pd.DataFrame({"index": train.index, "label": train.labels, "clean_label": clean, "score": scores,
                         "flagged": remove}).sort_values("score", ascending=False, kind="stable")


@torch.no_grad()
def predict_probs(module: torch.nn.Module, loader) -> np.ndarray:
    """Softmax of ``module.logits(batch)`` over a loader, in loader order (eval mode).

    Args:
        module: a classifier with ``logits(batch)``.
        loader: an unshuffled loader of dict batches.

    Returns:
        float32 ``[n, n_classes]`` probabilities.
    """
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
