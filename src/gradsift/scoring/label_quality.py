"""Label-quality baselines of OGA Table 1 (Appendix B.2.4) through cleanlab, default parameters.

Normalized margin (Northcutt et al. 2021), self-confidence, confidence-weighted entropy (Kuan & Mueller 2022).

Score = 1 - cleanlab's label quality (higher = more likely mislabeled = more detrimental). Probabilities come from
``inputs.train_probs``. With ``probs="in_sample"`` (default) the pipeline passes the trained model's own predicted
probabilities on its training set, as the OGA paper did; with ``probs="kfold"`` it passes out-of-sample ones, as
cleanlab recommends: the training set is split into ``folds`` stratified folds, one model is trained without each
fold and predicts it (``artifacts.kfold_probs``, cached per fold), which is sharper on memorised noisy labels.

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
#: where the predicted probabilities come from
PROBS = ("in_sample", "kfold")


class LabelQualityScorer(Scorer):
    """``1 - cleanlab.rank.get_label_quality_scores(labels, probs, method=method)``.

    Args:
        method: ``normalized_margin``, ``self_confidence`` or ``confidence_weighted_entropy``.
        probs: ``"in_sample"`` or ``"kfold"`` (out-of-sample probabilities of ``folds`` models).
        folds: the number of folds K for ``probs="kfold"``.
        labels: ``"given"`` (the training labels) or ``"predicted"`` (``argmax(probs)``, the OGA authors' code).
        display_name: the table row name.
    """

    needs_probs = True

    def __init__(self, method: str = "self_confidence", probs: str = "in_sample", folds: int = 5,
                 labels: str = "given", display_name: str | None = None):
        if method not in METHODS:
            raise ValueError(f"scorer.method must be one of {list(METHODS)}, got {method!r}")
        if probs not in PROBS:
            raise ValueError(f"scorer.probs must be one of {PROBS}, got {probs!r}")
        if probs == "kfold" and not (isinstance(folds, int) and folds >= 2):
            raise ValueError(f"scorer.folds must be an int >= 2 for scorer.probs=kfold, got {folds!r}")
        if labels not in LABELS:
            raise ValueError(f"scorer.labels must be one of {list(LABELS)}, got {labels!r}")
        self.method, self.probs, self.folds, self.labels = method, probs, int(folds), labels
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
        return f"LabelQualityScorer(method={self.method!r}, probs={self.probs!r}, labels={self.labels!r})"
