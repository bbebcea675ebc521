"""The scorer interface shared by outlier detectors, influence methods and label-quality scores.

Every score array has one meaning: **higher = more detrimental** (a sample whose removal is expected to
help the model most scores highest). Scorers see gradients (and, when they need them, predicted
probabilities and labels) but never models or dataloaders: gradients come from the one engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from gradsift.attribution.gradient_set import GradientSet


@dataclass
class ScoringInputs:
    """Everything a scorer may read. ``val``/``train_probs`` are filled only when a scorer asks for them."""

    train: GradientSet
    val: GradientSet | None = None
    train_probs: np.ndarray | None = None  # [n, C] predicted class probabilities (see label_quality.py for how)
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def train_labels(self) -> np.ndarray:
        return self.train.labels


class Scorer(ABC):
    """Base class: ``fit(inputs)`` then ``score()`` -> one float per training row, higher = more detrimental."""

    #: the callback gathers validation gradients only for scorers that set this
    needs_val: bool = False
    #: the pipeline computes predicted probabilities only for scorers that set this
    needs_probs: bool = False
    #: name used in tables (the paper's row name)
    display_name: str = ""

    @abstractmethod
    def fit(self, inputs: ScoringInputs) -> "Scorer":
        """Learn whatever the method needs from the inputs; returns self."""

    @abstractmethod
    def score(self) -> np.ndarray:
        """One score per training row of ``inputs.train``; higher = more detrimental."""

    def predicted_outliers(self) -> np.ndarray | None:
        """The detector's own binary outlier labels (e.g. IsolationForest's contamination rule), if it has them."""
        return None

    def fit_score(self, inputs: ScoringInputs) -> np.ndarray:
        self._check_inputs(inputs)
        scores = np.asarray(self.fit(inputs).score(), dtype=np.float64)
        if scores.shape != (inputs.train.n,):
            raise ValueError(f"{type(self).__name__} returned {scores.shape} scores for {inputs.train.n} samples")
        if not np.isfinite(scores).all():
            raise FloatingPointError(f"{type(self).__name__} produced NaN/inf scores")
        return scores

    def _check_inputs(self, inputs: ScoringInputs) -> None:
        if inputs.train.n == 0:
            raise ValueError(f"{type(self).__name__}: the training gradient set is empty")
        inputs.train.check_finite("training gradients")
        if self.needs_val:
            if inputs.val is None or inputs.val.n == 0:
                raise ValueError(f"{type(self).__name__} needs validation gradients but none were gathered")
            inputs.val.check_finite("validation gradients")
        if self.needs_probs and inputs.train_probs is None:
            raise ValueError(f"{type(self).__name__} needs predicted probabilities but none were given")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
