"""Choose which training samples to drop, and measure a choice against the known noise mask.

The choice comes from scores (higher = more detrimental) or a detector's own labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

SELECTIONS = ("budget", "detector")
REMOVE = ("detrimental", "beneficial")


@dataclass
class Trim:
    """How many samples to drop and which.

    ``budget``: a fraction in (0, 1), a count >= 1, or ``"n_noisy"`` (as many as there are flipped labels, the
    OGA synthetic setting). ``selection="budget"`` drops the ``budget`` top-scored samples;
    ``selection="detector"`` drops exactly the samples the detector itself labels outliers (e.g. IsolationForest
    with contamination 0.1, as the authors' code does) and ignores ``budget``. ``remove="beneficial"`` drops the
    lowest-scored samples instead (the dropout paper's removal-retrain protocol, which removes the most helpful).
    """

    budget: float | int | str = "n_noisy"
    selection: str = "budget"
    remove: str = "detrimental"

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"trim.selection={self.selection!r}; expected one of {SELECTIONS}")
        if self.remove not in REMOVE:
            raise ValueError(f"trim.remove={self.remove!r}; expected one of {REMOVE}")
        if isinstance(self.budget, str):
            if self.budget != "n_noisy":
                raise ValueError(f"trim.budget={self.budget!r}; expected a fraction, a count or 'n_noisy'")
        elif isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
            raise ValueError(f"trim.budget={self.budget!r}; expected a fraction, a count or 'n_noisy'")
        elif self.budget < 0:
            raise ValueError(f"trim.budget={self.budget} is negative; expected a fraction in (0, 1) or a count >= 0")

    def count(self, n: int, n_noisy: int | None = None) -> int:
        """Number of samples the budget removes from a training set of ``n``."""
        b = self.budget
        if b == "n_noisy":
            if n_noisy is None:
                raise ValueError("trim.budget='n_noisy' needs a dataset with a known noise mask")
            k = n_noisy
        elif isinstance(b, float) and b < 1:
            k = int(round(b * n))
        else:
            if isinstance(b, float) and not b.is_integer():
                raise ValueError(f"trim.budget={b}: a budget >= 1 is a count and must be an integer")
            k = int(b)
        if k > n:
            raise ValueError(f"trim.budget={b} removes {k} samples but the training set has only {n}")
        return k

    def describe(self) -> dict:
        """The budget as result.json records it: ``kind`` (fraction, count, n_noisy or detector) and ``value``."""
        if self.selection == "detector":
            return {"kind": "detector", "value": None}
        b = self.budget
        kind = "n_noisy" if b == "n_noisy" else ("fraction" if isinstance(b, float) and b < 1 else "count")
        return {"kind": kind, "value": b}

    def select(self, scores: np.ndarray, predicted_outliers: np.ndarray | None = None,
               n_noisy: int | None = None) -> np.ndarray:
        """Boolean mask over training rows: True = remove."""
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        if self.selection == "detector":
            if predicted_outliers is None:
                raise ValueError("trim.selection='detector' needs a scorer with its own outlier labels "
                                 "(iforest, l1, l2, ocsvm); use trim.selection=budget for this scorer")
            return np.asarray(predicted_outliers, dtype=bool).copy()
        k = self.count(n, n_noisy)
        order = np.argsort(-scores if self.remove == "detrimental" else scores, kind="stable")
        mask = np.zeros(n, dtype=bool)
        mask[order[:k]] = True
        return mask


def detection_metrics(remove: np.ndarray, scores: np.ndarray | None, noise: np.ndarray) -> dict:
    """Detection quality of a trim against the true flip mask (OGA Table 1).

    Args:
        remove: boolean mask over training rows, True = trimmed.
        scores: the scores behind it (for the AUC), or None.
        noise: boolean mask over training rows, True = the label was flipped.

    Returns:
        ``detection_acc`` (flagged vs not, over ALL samples), ``n_trimmed``, ``n_noisy``, ``true_positives``,
        ``precision``, ``recall`` and, when both classes occur, ``detection_auc`` of the scores.
    """
    tp = int((remove & noise).sum())
    out = {"detection_acc": float((remove == noise).mean()), "n_trimmed": int(remove.sum()),
           "n_noisy": int(noise.sum()), "true_positives": tp,
           "precision": tp / int(remove.sum()) if remove.any() else float("nan"),
           "recall": tp / int(noise.sum()) if noise.any() else float("nan")}
    if scores is not None and 0 < noise.sum() < len(noise):
        out["detection_auc"] = float(roc_auc_score(noise, scores))
    return out
