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

    How many, in one of three spellings:

    - ``fraction``: a share of the training set in [0, 1) (``trim.fraction=0.05`` drops 5%);
    - ``count``: a number of samples, an integer >= 0 (``trim.count=20``);
    - ``budget``: the older single key, read by its type: a float is a fraction (so it must be below 1; 1.0 is
      refused as ambiguous), an integer is a count, ``"n_noisy"`` is as many as there are flipped labels (the OGA
      synthetic setting; needs a dataset with a noise mask).

    The ``conf/trim`` presets set ``budget``; ``fraction`` or ``count``, when given, replace it (so
    ``trim.fraction=0.1`` works on top of any preset). Nothing given means ``n_noisy``.

    ``selection="budget"`` drops the top-scored samples; ``selection="detector"`` drops exactly the samples the
    detector itself labels outliers (e.g. IsolationForest with contamination 0.1, as the authors' code does) and
    ignores the budget. ``remove="beneficial"`` drops the lowest-scored samples instead (the dropout paper's
    removal-retrain protocol, which removes the most helpful).
    """

    budget: float | int | str | None = None
    selection: str = "budget"
    remove: str = "detrimental"
    fraction: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"trim.selection={self.selection!r}; expected one of {SELECTIONS}")
        if self.remove not in REMOVE:
            raise ValueError(f"trim.remove={self.remove!r}; expected one of {REMOVE}")
        self.kind, self.value, self.key = self._resolve()

    def _resolve(self) -> tuple[str, float | int | str, str]:
        """(kind, value, the ``trim.<key>=<value>`` that set it), checked for type and range."""
        if self.fraction is not None and self.count is not None:
            raise ValueError(f"trim.fraction={self.fraction} and trim.count={self.count} are both set; give one")
        if self.fraction is not None:
            return "fraction", _fraction(self.fraction, "trim.fraction"), f"trim.fraction={self.fraction}"
        if self.count is not None:
            return "count", _count(self.count, "trim.count"), f"trim.count={self.count}"
        b = "n_noisy" if self.budget is None else self.budget
        key = f"trim.budget={b}"
        if isinstance(b, str):
            if b != "n_noisy":
                raise ValueError(f"trim.budget={b!r}; expected a fraction, a count or 'n_noisy' "
                                 "(or set trim.fraction / trim.count)")
            return "n_noisy", b, key
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ValueError(f"trim.budget={b!r}; expected a fraction, a count or 'n_noisy'")
        if b < 0:
            raise ValueError(f"trim.budget={b} is negative; expected a fraction in [0, 1) or a count >= 0")
        if isinstance(b, int):
            return "count", b, key
        if b == 1.0:
            raise ValueError("trim.budget=1.0 is ambiguous (every sample, or one?): write trim.count=1 for one "
                             "sample, or trim.fraction=F with F below 1 for a share of the training set")
        if b > 1:
            raise ValueError(f"trim.budget={b} is a float, so a fraction, and a fraction must be below 1; for a "
                             f"count write an integer (trim.count={int(b) if b.is_integer() else '<integer>'})")
        return "fraction", float(b), key

    def validate(self, n_train: int, has_noise_mask: bool = True) -> int | None:
        """Check the budget against the training set before any training; returns how many samples it removes.

        Args:
            n_train: size of the training split that will be scored.
            has_noise_mask: whether the data knows which labels are flipped (clean labels known).

        Returns:
            The number of samples removed, or None where it is only known after scoring (the detector's own labels)
            or from the noise mask (``n_noisy``).

        Raises:
            ValueError: naming the ``trim.*`` key, for ``n_noisy`` without a noise mask or a budget that removes more
                than (or all of) the training set.
        """
        if self.selection == "detector":
            return None
        if self.kind == "n_noisy":
            if not has_noise_mask:
                raise ValueError(
                    f"{self.key} trims as many samples as there are flipped labels, but this data has no noise mask "
                    "(clean labels unknown, or no class labels): give an explicit budget instead, e.g. "
                    "trim=fraction trim.fraction=0.05, or trim.count=20")
            return None
        return self.n_remove(n_train)

    def n_remove(self, n: int, n_noisy: int | None = None) -> int:
        """Number of samples the budget removes from a training set of ``n``."""
        if self.kind == "n_noisy":
            if n_noisy is None:
                raise ValueError(f"{self.key} needs a dataset with a known noise mask")
            k = int(n_noisy)
        elif self.kind == "fraction":
            k = int(round(self.value * n))
        else:
            k = int(self.value)
        if k > n:
            raise ValueError(f"{self.key} removes {k} samples but the training set has only {n}")
        if k == n and n > 0:
            raise ValueError(f"{self.key} removes all {n} training samples; nothing would be left to retrain on")
        return k

    def describe(self) -> dict:
        """``{"kind": "fraction" | "count" | "n_noisy" | "detector", "value": ...}``, as result.json records it."""
        if self.selection == "detector":
            return {"kind": "detector", "value": None}
        return {"kind": self.kind, "value": self.value}

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
        k = self.n_remove(n, n_noisy)
        order = np.argsort(-scores if self.remove == "detrimental" else scores, kind="stable")
        mask = np.zeros(n, dtype=bool)
        mask[order[:k]] = True
        return mask


def _fraction(v: object, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ValueError(f"{key}={v!r}; expected a share of the training set in [0, 1) (for a number of samples "
                         "use trim.count)")
    return float(v)


def _count(v: object, key: str) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{key}={v!r}; expected a number of samples, an integer >= 0 (for a share use "
                         "trim.fraction)")
    return v


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
