"""Influential-data identification for LLMs (OGA Section 7, Table 3; the DataInf benchmarks).

For every test prompt, each training prompt gets a score; the training prompts of the test prompt's class
(pseudo-label 1, Kwon et al. 2024) should score highest in magnitude. Metrics, per test prompt, then averaged:

* Class detection AUC: ROC AUC of ``|score|`` of the training samples against the same-class pseudo-labels.
* Class detection recall: fraction of same-class samples among the ``top_k`` training samples by ``|score|``
  (``top_k`` = training samples per class = 90 in the paper, DataInf's ``cov_cnt``).
* top-1 accuracy: whether the single highest-``|score|`` sample is of the same class (DataInf's ``acc``).

Score matrices come from each scorer's ``pairwise(train, reference)``: Gradient Tracing and DataInf give
[n_test, n_train] directly (:mod:`gradsift.scoring.influence`; DataInf's damping is ``0.1 * mean ||g_l||^2 / d_l``
per block, as in DataInf's own code), any other reference-based scorer is fitted once per test prompt, and Outlier
Gradient (:class:`~gradsift.scoring.outliers.PerClassIsolationForest`) fits one IsolationForest per class on that
class's training gradients and gives every training sample of class c the test prompt's inlier-ness under class
c's forest, ``1 - s(x)`` where ``s(x) = -score_samples(x)`` in (0, 1] is the anomaly score of Liu et al. (2008):
positive, and larger when the prompt looks like class c's training gradients.

Which value is ranked is a switch (``on`` below, ``identification.auc_on`` / ``recall_on`` in the config): ``abs``
ranks ``|score|`` (ours, and DataInf's ``cov_cnt`` recall); ``signed`` ranks the score as it is (the OGA authors'
``nlp/LLM_INFL_ID_2.py``, lines 67-85, for the per-class forests' ``score_samples``, and ``nlp/LLM_INFL_ID_1.py``,
lines 86-87, for the AUC of Tracing / DataInf); ``negated`` ranks ``-score`` (a helpful, negative influence
first: DataInf's notebooks take the ``argmin`` of the influence as the most helpful prompt).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from gradsift.attribution.gradient_set import GradientSet
from gradsift.scoring.influence import DataInfScorer, GradientTracingScorer
from gradsift.scoring.outliers import IsolationForestScorer


RANKED_VALUES = ("abs", "signed", "negated")


def ranked_value(scores: np.ndarray, on: str, key: str = "identification.auc_on") -> np.ndarray:
    """The value a class-detection metric ranks.

    Args:
        scores: the score matrix.
        on: ``abs`` (``|score|``), ``signed`` (``score``) or ``negated`` (``-score``).
        key: the config key that the error for any other ``on`` names.

    Returns:
        The ranked values, float64.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if on == "abs":
        return np.abs(scores)
    if on == "signed":
        return scores
    if on == "negated":
        return -scores
    raise ValueError(f"{key} must be one of {RANKED_VALUES}, got {on!r}")


def class_detection_metrics(scores: np.ndarray, train_classes: np.ndarray, test_classes: np.ndarray,
                            top_k: int | None = None, auc_on: str = "abs",
                            recall_on: str = "abs") -> dict[str, float | np.ndarray]:
    """Class-detection AUC, recall@top_k and top-1 accuracy of a [n_test, n_train] score matrix (OGA Sec. 7).

    ``top_k=None`` uses ``n_train // n_classes`` (90 for the DataInf benchmarks). ``auc_on`` / ``recall_on``
    choose the ranked value (:func:`ranked_value`; top-1 follows ``recall_on``). Returns the means (``auc``,
    ``recall``, ``top1``) and the per-test-prompt arrays (``auc_per_test``, ``recall_per_test``).
    """
    raw = np.asarray(scores, dtype=np.float64)
    scores = ranked_value(raw, auc_on, "identification.auc_on")
    ranked = ranked_value(raw, recall_on, "identification.recall_on")
    train_classes, test_classes = np.asarray(train_classes), np.asarray(test_classes)
    if scores.shape != (len(test_classes), len(train_classes)):
        raise ValueError(f"score matrix has shape {scores.shape}, expected [n_test={len(test_classes)}, "
                         f"n_train={len(train_classes)}]")
    k = top_k or len(train_classes) // len(np.unique(train_classes))
    if not 1 <= k <= len(train_classes):
        raise ValueError(f"top_k={k} must be in [1, n_train={len(train_classes)}]")
    auc, recall, top1 = [], [], []
    for row, rrow, c in zip(scores, ranked, test_classes):
        same = train_classes == c
        if same.all() or not same.any():
            raise ValueError(f"test class {c!r} must have some, but not all, training samples for an AUC")
        auc.append(roc_auc_score(same, row))
        order = np.argsort(-rrow, kind="stable")
        recall.append(same[order[:k]].mean())
        top1.append(float(same[order[0]]))
    auc_arr, recall_arr = np.array(auc), np.array(recall)
    return {"auc": float(auc_arr.mean()), "recall": float(recall_arr.mean()), "top1": float(np.mean(top1)),
            "auc_per_test": auc_arr, "recall_per_test": recall_arr}


def influential_data_identification(train: GradientSet, test: GradientSet, seed: int = 0,
                                    n_estimators: int = 100) -> dict[str, dict]:
    """OGA Table 3 on one benchmark, for Gradient Tracing, DataInf and Outlier Gradient (per-class iForest).

    Args:
        train: the training prompts' gradients; ``labels`` are the class ids (``variation``).
        test: the test prompts' gradients, labelled the same way.
        seed: the forests' seed.
        n_estimators: trees per class forest.

    Returns:
        ``{method: {"scores": [n_test, n_train], **class_detection_metrics}}``.
    """
    scorers = [GradientTracingScorer(), DataInfScorer(), IsolationForestScorer(n_estimators=n_estimators)]
    matrices = {s.pairwise_name: s.pairwise(train, test, seed) for s in scorers}
    return {name: {"scores": s, **class_detection_metrics(s, train.labels, test.labels)}
            for name, s in matrices.items()}
