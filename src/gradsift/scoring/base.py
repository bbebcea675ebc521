"""The scorer interface shared by outlier detectors, influence methods and label-quality scores.

Every score array has one meaning: **higher = more detrimental** (a sample whose removal is expected to
help the model most scores highest). Scorers see gradients (and, when they need them, predicted
probabilities and labels) but never models or dataloaders: gradients come from the one engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from gradsift.attribution.compressors import Compressor, IdentityCompressor
from gradsift.attribution.gradient_set import GradientSet


@dataclass
class ScoringInputs:
    """Everything a scorer may read.

    Attributes:
        train: the training gradients, one row per training sample.
        reference: the reference split's gradients (the ``attribution.reference`` split: validation, test, or the
            training set itself), filled when a scorer needs them.
        train_probs: ``[n, C]`` predicted class probabilities, filled when a scorer needs them.
        seed: the run's seed, for scorers that draw random numbers.
        extra: anything else a scorer asks for (``"hessian"``: the exact loss Hessian of the chosen parameters).
    """

    train: GradientSet
    reference: GradientSet | None = None
    train_probs: np.ndarray | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def train_labels(self) -> np.ndarray:
        """The labels the model was trained on, one per training row."""
        return self.train.labels


class Scorer(ABC):
    """Base class: ``fit(inputs)`` then ``score()`` -> one float per training row, higher = more detrimental."""

    #: the attributor gathers reference gradients (``inputs.reference``) only for scorers that set this
    needs_reference: bool = False
    #: the attributor computes predicted probabilities only for scorers that set this
    needs_probs: bool = False
    #: the attributor computes the exact loss Hessian of the chosen parameters (``inputs.extra["hessian"]``) only
    #: for scorers that set this (an instance attribute where it depends on the config)
    needs_hessian: bool = False
    #: the attributor gathers K-FAC / EK-FAC Kronecker factors (``inputs.extra["kfac"]``, with the scorer's
    #: ``strategy`` and ``fisher``) only for scorers that set this
    needs_kfac: bool = False
    #: what the engine differentiates for this scorer: ``"loss"`` (``per_sample_loss``) or ``"margin"`` (TRAK's
    #: model output, ``attribution.model_output``)
    model_output: str = "loss"
    #: the scorer reads gradients at the saved checkpoints (``inputs.extra["checkpoints"]``, see
    #: ``scoring/checkpoints.py``) when the run saves some (``attribution.checkpoints``)
    uses_checkpoints: bool = False
    #: ``"in_sample"``: probabilities of the trained model on its own training set; ``"kfold"``: out-of-sample
    #: probabilities of K models, each trained without one fold (the pipeline computes them; cleanlab's advice)
    probs: str = "in_sample"
    #: False for a scorer whose scores depend on the run's seed and the number of training samples only (no model,
    #: no gradients: the random control); ``retrain_from`` then scores the run itself and takes only the base model's
    #: facts from a detection run of another scorer (:func:`gradsift.handoff.model_free`)
    needs_model: bool = True
    #: name used in tables (the paper's row name)
    display_name: str = ""

    @abstractmethod
    def fit(self, inputs: ScoringInputs) -> "Scorer":
        """Learn whatever the method needs from the inputs.

        Args:
            inputs: the gathered gradients (and probabilities) of one model.

        Returns:
            The fitted scorer itself.
        """

    @abstractmethod
    def score(self) -> np.ndarray:
        """One score per training row of ``inputs.train``; higher = more detrimental."""

    def predicted_outliers(self) -> np.ndarray | None:
        """The detector's own binary outlier labels (e.g. IsolationForest's contamination rule), if it has them."""
        return None

    def fit_score(self, inputs: ScoringInputs) -> np.ndarray:
        """Check the inputs, fit and score.

        Args:
            inputs: the gathered gradients (and probabilities) of one model.

        Returns:
            float64 ``[n_train]`` scores, higher = more detrimental.

        Raises:
            ValueError: the inputs lack what the scorer needs, or it returned the wrong shape.
            FloatingPointError: a gradient or a score is NaN or infinite.
        """
        self._check_inputs(inputs)
        scores = np.asarray(self.fit(inputs).score(), dtype=np.float64)
        if scores.shape != (inputs.train.n,):
            raise ValueError(f"{type(self).__name__} returned {scores.shape} scores for {inputs.train.n} samples")
        if not np.isfinite(scores).all():
            raise FloatingPointError(f"{type(self).__name__} produced NaN/inf scores")
        return scores

    def check_compressor(self, compressor: Compressor | None) -> None:
        """Refuse a compressor this scorer cannot use, before anything is trained or gathered.

        The exact loss Hessian (``needs_hessian``) has one row per parameter, so it only matches uncompressed
        gradients; without this check the mismatch surfaced only after the (expensive) Hessian had been computed.

        Args:
            compressor: the gradient engine's compressor (None = uncompressed).

        Raises:
            ValueError: the scorer needs the exact Hessian and the compressor is not the identity.
        """
        if self.needs_hessian and compressor is not None and not isinstance(compressor, IdentityCompressor):
            raise ValueError(f"scorer.hessian='exact' ({type(self).__name__}) needs uncompressed gradients, but "
                             f"compressor is {type(compressor).__name__}: use compressor=identity, or "
                             "scorer.hessian=gauss_newton to build the Hessian from the compressed gradients")

    @property
    def pairwise_name(self) -> str:
        """The method's row name in per-test-prompt tables (OGA Table 3)."""
        return self.display_name or type(self).__name__

    #: after :meth:`pairwise`, per-class scores ``[n_reference, n_classes]`` of methods that score per class
    pairwise_class_scores: np.ndarray | None = None

    def pairwise(self, train: GradientSet, reference: GradientSet, seed: int = 0,
                 device: str | None = None) -> np.ndarray:
        """One score per (reference row, training row) pair, for influential-data identification (OGA Table 3).

        The generic rule fits this scorer once per reference row, that row alone being the reference; subclasses
        with a batched form override it.

        Args:
            train: the training gradients.
            reference: the reference rows (test prompts), one ranking of the training set each.
            seed: the run's seed.
            device: where batched forms compute (``"auto"``/None: CUDA when available); the generic rule ignores it.

        Returns:
            ``[n_reference, n_train]`` scores; row j ranks the training samples for reference row j.

        Raises:
            ValueError: the scorer ranks training samples without a reference, so it cannot rank them per row.
        """
        if not self.needs_reference:
            raise ValueError(f"flow=identification needs a per-class outlier detector (scorer=iforest) or a "
                             f"reference-based influence scorer (tracin, datainf, lissa, ...); {type(self).__name__} "
                             "scores training samples without a reference, so it cannot rank them per test prompt")
        rows = []
        for j in range(reference.n):
            ref = GradientSet(np.asarray(reference.grads[j:j + 1]), reference.index[j:j + 1],
                              reference.labels[j:j + 1], blocks=reference.blocks)
            rows.append(self.fit_score(ScoringInputs(train=train, reference=ref, seed=seed)))
        return np.stack(rows)

    def _check_inputs(self, inputs: ScoringInputs) -> None:
        if inputs.train.n == 0:
            raise ValueError(f"{type(self).__name__}: the training gradient set is empty")
        inputs.train.check_finite("training gradients")
        if self.needs_reference:
            if inputs.reference is None or inputs.reference.n == 0:
                raise ValueError(f"{type(self).__name__} needs reference gradients but none were gathered")
            inputs.reference.check_finite("reference gradients")
        if self.needs_probs and inputs.train_probs is None:
            raise ValueError(f"{type(self).__name__} needs predicted probabilities but none were given")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def compute_device(device: str | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; any other name as torch spells it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
