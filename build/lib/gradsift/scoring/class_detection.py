"""Influential-data identification for LLMs (OGA Section 7, Table 3; the DataInf benchmarks).

For every test prompt, each training prompt gets a score; the training prompts of the test prompt's class
(pseudo-label 1, Kwon et al. 2024) should score highest in magnitude. Metrics, per test prompt, then averaged:

* Class detection AUC: ROC AUC of ``|score|`` of the training samples against the same-class pseudo-labels.
* Class detection recall: fraction of same-class samples among the ``top_k`` training samples by ``|score|``
  (``top_k`` = training samples per class = 90 in the paper, DataInf's ``cov_cnt``).
* top-1 accuracy: whether the single highest-``|score|`` sample is of the same class (DataInf's ``acc``).

Score matrices: Gradient Tracing / DataInf give [n_test, n_train] directly (:func:`pairwise_scores` runs the
influence scorers of :mod:`gradsift.scoring.influence` with one test prompt as the reference;
DataInf's damping is ``0.1 * mean ||g_l||^2 / d_l`` per block, as in DataInf's own code). Outlier Gradient
(:class:`PerClassIsolationForest`) fits one IsolationForest per class on that class's training gradients and
scores each test prompt under every forest, giving [n_test, n_classes]; :func:`expand_class_scores` turns that
into [n_test, n_train] by giving every training sample of class c the test prompt's inlier-ness under class c's
forest, ``1 - s(x)`` where ``s(x) = -score_samples(x)`` in (0, 1] is the anomaly score of Liu et al. (2008):
positive, and larger when the prompt looks like class c's training gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from gradsift.attribution.gradient_set import GradientSet
from gradsift.scoring.base import Scorer, ScoringInputs
from gradsift.scoring.influence import DataInf, GradientTracing


def class_detection_metrics(scores: np.ndarray, train_classes: np.ndarray, test_classes: np.ndarray,
                            top_k: int | None = None) -> dict[str, float | np.ndarray]:
    """Class-detection AUC, recall@top_k and top-1 accuracy of a [n_test, n_train] score matrix (OGA Sec. 7).

    ``top_k=None`` uses ``n_train // n_classes`` (90 for the DataInf benchmarks). Returns the means
    (``auc``, ``recall``, ``top1``) and the per-test-prompt arrays (``auc_per_test``, ``recall_per_test``).
    """
    scores = np.abs(np.asarray(scores, dtype=np.float64))
    train_classes, test_classes = np.asarray(train_classes), np.asarray(test_classes)
    if scores.shape != (len(test_classes), len(train_classes)):
        raise ValueError(f"score matrix has shape {scores.shape}, expected [n_test={len(test_classes)}, "
                         f"n_train={len(train_classes)}]")
    k = top_k or len(train_classes) // len(np.unique(train_classes))
    if not 1 <= k <= len(train_classes):
        raise ValueError(f"top_k={k} must be in [1, n_train={len(train_classes)}]")
    auc, recall, top1 = [], [], []
    for row, c in zip(scores, test_classes):
        same = train_classes == c
        if same.all() or not same.any():
            raise ValueError(f"test class {c!r} must have some, but not all, training samples for an AUC")
        auc.append(roc_auc_score(same, row))
        order = np.argsort(-row, kind="stable")
        recall.append(same[order[:k]].mean())
        top1.append(float(same[order[0]]))
    auc_arr, recall_arr = np.array(auc), np.array(recall)
    return {"auc": float(auc_arr.mean()), "recall": float(recall_arr.mean()), "top1": float(np.mean(top1)),
            "auc_per_test": auc_arr, "recall_per_test": recall_arr}


def expand_class_scores(class_scores: np.ndarray, train_classes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """[n_test, n_classes] -> [n_test, n_train]: sample i gets the column of its class ``train_classes[i]``."""
    classes = np.asarray(classes)
    col = np.searchsorted(classes, train_classes)
    if (col >= len(classes)).any() or (classes[np.minimum(col, len(classes) - 1)] != train_classes).any():
        raise ValueError("train_classes holds a class that has no column in class_scores")
    return np.asarray(class_scores)[:, col]


class PerClassIsolationForest:
    """One sklearn IsolationForest per class, fitted on that class's training gradients (OGA Section 7)."""

    display_name = "Outlier Gradient"

    def __init__(self, n_estimators: int = 100, max_samples: int | str = "auto", max_features: float = 1.0,
                 n_jobs: int | None = None, seed: int = 0):
        self.kwargs = dict(n_estimators=n_estimators, max_samples=max_samples, max_features=max_features,
                           n_jobs=n_jobs)
        self.seed = seed
        self.classes: np.ndarray | None = None
        self.forests: list[IsolationForest] = []

    def fit(self, train: GradientSet) -> "PerClassIsolationForest":
        train.check_finite("training gradients")
        self.classes = np.unique(train.labels)
        x = np.asarray(train.grads, dtype=np.float32)
        self.forests = [IsolationForest(random_state=self.seed, **self.kwargs).fit(x[train.labels == c])
                        for c in self.classes]
        return self

    def class_scores(self, test: GradientSet) -> np.ndarray:
        """[n_test, n_classes] inlier-ness ``1 - s(x)`` of each test gradient under each class's forest."""
        if self.classes is None:
            raise RuntimeError("PerClassIsolationForest.class_scores() called before fit()")
        x = np.asarray(test.grads, dtype=np.float32)
        return np.stack([1.0 + f.score_samples(x) for f in self.forests], axis=1)

    def train_scores(self, test: GradientSet, train: GradientSet) -> np.ndarray:
        """[n_test, n_train] scores for :func:`class_detection_metrics` (see the module docstring)."""
        return expand_class_scores(self.class_scores(test), train.labels, self.classes)


def pairwise_scores(make_scorer: Callable[[], Scorer], train: GradientSet, test: GradientSet,
                    seed: int = 0) -> np.ndarray:
    """[n_test, n_train]: row j = a reference-based influence scorer's training scores with test prompt j alone
    as the reference (``inputs.val``), e.g. ``GradientTracing`` or ``DataInf`` from scoring/influence.py."""
    rows = []
    for j in range(test.n):
        ref = GradientSet(np.asarray(test.grads[j:j + 1]), test.index[j:j + 1], test.labels[j:j + 1],
                          blocks=test.blocks)
        rows.append(make_scorer().fit_score(ScoringInputs(train=train, val=ref, seed=seed)))
    return np.stack(rows)


def influential_data_identification(train: GradientSet, test: GradientSet, seed: int = 0,
                                    n_estimators: int = 100) -> dict[str, dict]:
    """OGA Table 3 on one benchmark: ``{method: {"scores": [n_test, n_train], **class_detection_metrics}}`` for
    Gradient Tracing, DataInf (per-test-prompt influence, damping as in DataInf's code) and Outlier Gradient
    (per-class iForest). ``train.labels`` / ``test.labels`` are the class ids (``variation``)."""
    forest = PerClassIsolationForest(n_estimators=n_estimators, seed=seed).fit(train)
    matrices = {"Gradient Tracing": pairwise_scores(GradientTracing, train, test, seed),
                "DataInf": pairwise_scores(DataInf, train, test, seed),
                "Outlier Gradient": forest.train_scores(test, train)}
    return {name: {"scores": s, **class_detection_metrics(s, train.labels, test.labels)}
            for name, s in matrices.items()}
