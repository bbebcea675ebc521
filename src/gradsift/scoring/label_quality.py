"""Label-quality baselines of OGA Table 1 (Appendix B.2.4) through cleanlab, default parameters.

Normalized margin (Northcutt et al. 2021), self-confidence, confidence-weighted entropy (Kuan & Mueller 2022).

Score = 1 - cleanlab's label quality (higher = more likely mislabeled = more detrimental). Probabilities come from
``inputs.train_probs``: the pipeline passes the trained model's own predicted probabilities on its training set,
as the OGA paper did. cleanlab recommends out-of-sample probabilities (k-fold cross-validation), which make these
scores sharper on memorised noisy labels; the pipeline may offer that later.

``labels``: which labels cleanlab scores. ``"given"`` (default) passes the (noisy) training labels, as cleanlab
means these scores to be used. ``"predicted"`` passes the model's own predicted labels ``argmax(probs)``, as the OGA
authors' code does (``synthetic/BASELINES_LABEL_TOY_MLP.py:175-183``,
``cifar-10-100n/baseline-experiment-label.py:292-301``: ``get_label_quality_scores(labels=preds, pred_probs=probs,
method=..., adjust_pred_probs=False)``): the scores then never look at the given labels and measure the model's
confidence only (self-confidence = max probability).
"""

from __future__ import annotations

import numpy as np
from cleanlab.rank import get_label_quality_scores

from gradsift.scoring.base import Scorer, ScoringInputs

LABELS = ("given", "predicted")
METHODS = {
    "normalized_margin": "Normalized Margin",
    "self_confidence": "Self-Confidence",
    "confidence_weighted_entropy": "Confidence Entropy",
}


class LabelQualityScorer(Scorer):
    """``1 - cleanlab.rank.get_label_quality_scores(labels, probs, method=method)``.

    Args:
        method: cleanlab's method: ``normalized_margin``, ``self_confidence`` or ``confidence_weighted_entropy``.
        labels: ``"given"`` (the training labels) or ``"predicted"`` (``argmax(probs)``, the OGA authors' code).
        display_name: the table's row name.
    """

    needs_probs = True

    def __init__(self, method: str = "self_confidence", labels: str = "given", display_name: str | None = None):
        if method not in METHODS:
            raise ValueError(f"scorer.method must be one of {list(METHODS)}, got {method!r}")
        if labels not in LABELS:
            raise ValueError(f"scorer.labels must be one of {list(LABELS)}, got {labels!r}")
        self.method, self.labels = method, labels
        self.display_name = display_name or METHODS[method]
        self._scores: np.ndarray | None = None

    def fit(self, inputs: ScoringInputs) -> "LabelQualityScorer":
        """``1 - label quality`` of every training row from its labels and predicted probabilities."""
        labels = np.asarray(inputs.train_labels)
        probs = np.asarray(inputs.train_probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != len(labels):
            raise ValueError(f"train_probs must be [n={len(labels)}, n_classes], got shape {probs.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= probs.shape[1]:
            raise ValueError(f"labels must be integers in [0, {probs.shape[1]}) to index train_probs columns")
        if self.labels == "predicted":
            labels = probs.argmax(axis=1)
        quality = get_label_quality_scores(labels, probs, method=self.method, adjust_pred_probs=False)
        self._scores = 1.0 - np.asarray(quality, dtype=np.float64)
        return self

    def score(self) -> np.ndarray:
        """The scores of the last :meth:`fit`."""
        if self._scores is None:
            raise RuntimeError("LabelQualityScorer.score() called before fit()")
        return self._scores

    def __repr__(self) -> str:
        return f"LabelQualityScorer(method={self.method!r}, labels={self.labels!r})"
