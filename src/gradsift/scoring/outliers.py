"""Outlier Gradient Analysis (OGA paper, Section 3.3 and Algorithm 1).

Detrimental samples are outliers in gradient space. Detectors: Isolation Forest, L1 / L2 norm thresholding, and the semi-supervised One-Class SVM
fitted on validation gradients as inliers (Appendix C.8); for influential-data identification (Section 7), one
Isolation Forest per class (:class:`PerClassIsolationForest`). All sklearn underneath; higher score = more outlying.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

from gradsift.attribution.gradient_set import GradientSet
from gradsift.scoring.base import Scorer, ScoringInputs


class IsolationForestScorer(Scorer):
    """Outlier Gradient (iForest): sklearn IsolationForest on the training gradients; score = -score_samples."""

    display_name = "Outlier Gradient (iForest)"

    def __init__(self, n_estimators: int = 100, contamination: float | str = 0.1, max_samples: int | str = "auto",
                 max_features: float = 1.0, n_jobs: int | None = None, seed: int | None = None,
                 calibration: str = "none"):
        self.kwargs = dict(n_estimators=n_estimators, contamination=contamination, max_samples=max_samples,
                           max_features=max_features, n_jobs=n_jobs)
        self.seed = seed
        # only the per-class form (pairwise) reads it: see PerClassIsolationForest
        self.calibration = check_calibration(calibration)
        self.model: IsolationForest | None = None

    def fit(self, inputs: ScoringInputs) -> "IsolationForestScorer":
        """Fit the forest on the training gradients."""
        self._x = np.asarray(inputs.train.grads, dtype=np.float32)
        seed = inputs.seed if self.seed is None else self.seed
        self.model = IsolationForest(random_state=seed, **self.kwargs).fit(self._x)
        return self

    def score(self) -> np.ndarray:
        """``-score_samples``: larger for more isolated gradients."""
        return -self.model.score_samples(self._x)

    def predicted_outliers(self) -> np.ndarray:
        """IsolationForest's own labels (its ``contamination`` threshold), as the authors' code deletes them."""
        return self.model.predict(self._x) == -1

    @property
    def pairwise_name(self) -> str:
        """OGA Table 3 names the per-class form "Outlier Gradient"."""
        return PerClassIsolationForest.display_name

    def pairwise(self, train: GradientSet, reference: GradientSet, seed: int = 0,
                 device: str | None = None) -> np.ndarray:
        """One IsolationForest per class (OGA Section 7).

        Training sample k of class c gets reference row j's inlier-ness under class c's forest.
        Also sets ``pairwise_class_scores`` to the ``[n_reference, n_classes]`` inlier-ness (Figure 4's heatmap).

        Args:
            train: the training gradients (``labels`` = class ids).
            reference: the reference rows (test prompts).
            seed: the forests' seed unless the scorer has its own ``seed``.
            device: unused (sklearn runs on the CPU).

        Returns:
            ``[n_reference, n_train]`` scores.
        """
        kwargs = {k: v for k, v in self.kwargs.items() if k != "contamination"}
        forest = PerClassIsolationForest(seed=seed if self.seed is None else self.seed, calibration=self.calibration,
                                         **kwargs).fit(train)
        self.pairwise_class_scores = forest.class_scores(reference)
        return forest.train_scores(reference, train)


class NormScorer(Scorer):
    """Outlier Gradient (L1 / L2): the gradient's norm; large-norm gradients are the outliers."""

    def __init__(self, ord: int = 2, contamination: float = 0.1):
        if ord not in (1, 2):
            raise ValueError(f"scorer.ord must be 1 or 2, got {ord}")
        self.ord, self.contamination = ord, contamination
        self.display_name = f"Outlier Gradient (L{ord})"

    def fit(self, inputs: ScoringInputs) -> "NormScorer":
        """The row norms of the training gradients."""
        self._scores = row_norms(inputs.train.grads, self.ord)
        return self

    def score(self) -> np.ndarray:
        """The norms of the last :meth:`fit`."""
        return self._scores

    def predicted_outliers(self) -> np.ndarray:
        """Norm thresholding at the (1 - contamination) quantile."""
        return self._scores > np.quantile(self._scores, 1 - self.contamination)


_BLOCK_BYTES = 2 << 20  # float64 bytes per block of row_norms: fits the L2/L3 cache of current x86 cores


def row_norms(grads, ord: int, rows: int | None = None) -> np.ndarray:
    """Float64 L1 / L2 norm of every row, converted a block of ``rows`` rows at a time.

    The same arithmetic as ``np.linalg.norm(grads.astype(np.float64), ord, axis=1)`` (equal to the last bit), without
    the float64 copy of the whole matrix (two for L1), whose fresh pages cost a job's single call 5-6x the time on
    50,000 x 5,130. By default a block holds about 2 MiB of float64, so the converted block is still in the CPU
    cache when it is reduced: about 4x faster than 4,096-row blocks (docs/BENCHMARKS.md, benchmarks/bench_norms.py).
    """
    n = len(grads)
    rows = rows or max(1, _BLOCK_BYTES // (8 * max(1, int(np.prod(np.shape(grads)[1:])))))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, rows):
        block = np.asarray(grads[start:start + rows], dtype=np.float64)
        out[start:start + rows] = np.add.reduce(np.abs(block), axis=1) if ord == 1 else \
            np.sqrt(np.add.reduce(block * block, axis=1))
    return out


class OneClassSVMScorer(Scorer):
    """Outlier Gradient (OneClassSVM): fitted on the reference (validation) gradients as inliers.

    Scores the training gradients.
    Adapts OGA to a validation distribution (OGA Appendix C.8). Gradients are scaled by the validation RMS norm
    so the RBF ``gamma='scale'`` heuristic behaves across models.
    """

    display_name = "Outlier Gradient (OneClassSVM)"
    needs_reference = True

    def __init__(self, kernel: str = "rbf", nu: float = 0.1, gamma: str | float = "scale"):
        self.model = OneClassSVM(kernel=kernel, nu=nu, gamma=gamma)

    def fit(self, inputs: ScoringInputs) -> "OneClassSVMScorer":
        """Fit the SVM on the scaled reference gradients."""
        ref = np.asarray(inputs.reference.grads, dtype=np.float64)
        scale = np.sqrt(np.mean(np.sum(ref**2, axis=1))) or 1.0
        self.model.fit(ref / scale)
        self._x = np.asarray(inputs.train.grads, dtype=np.float64) / scale
        return self

    def score(self) -> np.ndarray:
        """``-decision_function``: larger outside the reference gradients' support."""
        return -self.model.decision_function(self._x)

    def predicted_outliers(self) -> np.ndarray:
        """The SVM's own outlier labels."""
        return self.model.predict(self._x) == -1


def expand_class_scores(class_scores: np.ndarray, train_classes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """[n_test, n_classes] -> [n_test, n_train]: sample i gets the column of its class ``train_classes[i]``."""
    classes = np.asarray(classes)
    col = np.searchsorted(classes, train_classes)
    if (col >= len(classes)).any() or (classes[np.minimum(col, len(classes) - 1)] != train_classes).any():
        raise ValueError("train_classes holds a class that has no column in class_scores")
    return np.asarray(class_scores)[:, col]


CALIBRATIONS = ("none", "zscore", "rank")


def check_calibration(calibration: str) -> str:
    """``calibration`` if it is one of :data:`CALIBRATIONS`, else a ValueError naming ``scorer.calibration``."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"scorer.calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    return calibration


class PerClassIsolationForest:
    """One sklearn IsolationForest per class, fitted on that class's training gradients (OGA Section 7).

    Each forest's raw inlier-ness ``1 + score_samples(x)`` has its own scale: a class whose gradients are spread
    out gives every point a short path, so its forest calls most test prompts inliers. ``calibration`` puts the
    forests on one scale before they are compared (the OGA authors compare the raw ``score_samples``,
    ``nlp/LLM_INFL_ID_2.py`` lines 48-62, i.e. ``none``):

    * ``none``: the raw inlier-ness.
    * ``zscore``: ``(raw - m_c) / s_c``, with ``m_c``, ``s_c`` the mean and (population) std of forest c's raw
      scores on its own class's training gradients (``s_c = 0`` counts as 1).
    * ``rank``: the fraction of class c's training gradients whose raw score is at most the test prompt's
      (forest c's own empirical CDF; 0 when the prompt is more outlying than all of class c's training prompts).

    The training scores are in-sample (each tree saw those points), so both calibrations measure "how typical
    for class c, relative to class c's own members", not a held-out probability.
    """

    display_name = "Outlier Gradient"

    def __init__(self, n_estimators: int = 100, max_samples: int | str = "auto", max_features: float = 1.0,
                 n_jobs: int | None = None, seed: int = 0, calibration: str = "none"):
        self.kwargs = dict(n_estimators=n_estimators, max_samples=max_samples, max_features=max_features,
                           n_jobs=n_jobs)
        self.seed = seed
        self.calibration = check_calibration(calibration)
        self.classes: np.ndarray | None = None
        self.forests: list[IsolationForest] = []
        self.train_raw: list[np.ndarray] = []

    def fit(self, train: GradientSet) -> "PerClassIsolationForest":
        """One forest per class of ``train.labels``."""
        train.check_finite("training gradients")
        self.classes = np.unique(train.labels)
        x = np.asarray(train.grads, dtype=np.float32)
        self.forests = [IsolationForest(random_state=self.seed, **self.kwargs).fit(x[train.labels == c])
                        for c in self.classes]
        # each forest's raw scores on its own class's training gradients: the calibration reference
        self.train_raw = [1.0 + f.score_samples(x[train.labels == c]) for f, c in zip(self.forests, self.classes)]
        return self

    def class_scores(self, test: GradientSet) -> np.ndarray:
        """[n_test, n_classes] inlier-ness of each test gradient under each class's forest.

        ``1 - s(x)``, then the ``calibration`` (see the class docstring).
        """
        if self.classes is None:
            raise RuntimeError("PerClassIsolationForest.class_scores() called before fit()")
        x = np.asarray(test.grads, dtype=np.float32)
        cols = []
        for forest, ref in zip(self.forests, self.train_raw):
            raw = 1.0 + forest.score_samples(x)
            if self.calibration == "zscore":
                std = float(ref.std())
                raw = (raw - ref.mean()) / (std if std > 0 else 1.0)
            elif self.calibration == "rank":
                raw = np.searchsorted(np.sort(ref), raw, side="right") / len(ref)
            cols.append(raw)
        return np.stack(cols, axis=1)

    def train_scores(self, test: GradientSet, train: GradientSet) -> np.ndarray:
        """[n_test, n_train] scores for :func:`class_detection_metrics` (see the module docstring)."""
        return expand_class_scores(self.class_scores(test), train.labels, self.classes)
