"""The OGA authors' conventions as switches (issue #15), each against a hand computation on a tiny case.

The cases are the "Check:" lines of /work/notes/authors_code.md (switches S5, S8-S12, S14): cleanlab with the
predicted labels, DataInf's LiSSA recursion, the per-sample self-influence engine, DataInf's 1-D reshape bug in
its "exact" influence, pyod's iForest labels, the lowest-IF tail and the 10% budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.influence import (ExactInfluenceScorer, GradientTracingScorer, LiSSAScorer, SelfDataInfScorer,
                                        SelfLiSSAScorer)
from gradsift.scoring.label_quality import LabelQualityScorer
from gradsift.scoring.outliers import IsolationForestScorer
from gradsift.trim import Trim, detection_metrics


def _set(rows, labels=None, blocks=None) -> GradientSet:
    g = np.asarray(rows, dtype=np.float32)
    labels = np.zeros(len(g), dtype=np.int64) if labels is None else np.asarray(labels)
    return GradientSet(g, np.arange(len(g)), labels, blocks=blocks or [])


# -- S12: cleanlab with the model's predicted labels ------------------------------------------------------------

def test_predicted_labels_score_the_models_confidence_not_the_given_label() -> None:
    # probs (0.7, 0.3), given label 1: self-confidence 0.3 with the given label, 0.7 with the predicted one (class 0)
    inputs = ScoringInputs(train=_set([[0.0]], labels=[1]), train_probs=np.array([[0.7, 0.3]]))
    given = LabelQualityScorer("self_confidence").fit_score(inputs)
    predicted = LabelQualityScorer("self_confidence", labels="predicted").fit_score(inputs)
    np.testing.assert_allclose(1 - given, [0.3], atol=1e-12)
    np.testing.assert_allclose(1 - predicted, [0.7], atol=1e-12)
    # normalized margin with labels = argmax is (p_max - p_2nd + 1) / 2: 0.7 for (0.7, 0.3)
    margin = LabelQualityScorer("normalized_margin", labels="predicted").fit_score(inputs)
    np.testing.assert_allclose(1 - margin, [0.7], atol=1e-12)


def test_predicted_labels_ignore_the_given_labels() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 40)
    probs = np.stack([1 - p, p], axis=1)
    a = ScoringInputs(train=_set(np.zeros((40, 1)), labels=rng.integers(0, 2, 40)), train_probs=probs)
    b = ScoringInputs(train=_set(np.zeros((40, 1)), labels=rng.integers(0, 2, 40)), train_probs=probs)
    for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        sa = LabelQualityScorer(method, labels="predicted").fit_score(a)
        np.testing.assert_array_equal(sa, LabelQualityScorer(method, labels="predicted").fit_score(b))
        # binary and labels = argmax: every method orders by max(p, 1 - p), so they trim the same samples
        np.testing.assert_array_equal(np.argsort(-sa, kind="stable"),
                                      np.argsort(np.maximum(p, 1 - p), kind="stable"))


def test_bad_labels_value_names_the_key() -> None:
    with pytest.raises(ValueError, match="scorer.labels"):
        LabelQualityScorer(labels="noisy")


# -- S9: DataInf's LiSSA recursion, r <- v + r - (G r - lambda r) ----------------------------------------------

def _lissa_case() -> ScoringInputs:
    # (1/n) G^T G = diag(0.5, 0.2) from two training rows; v = the reference mean = (1, 1)
    return ScoringInputs(train=_set([[1.0, 0.0], [0.0, np.sqrt(0.4)]]), reference=_set([[1.0, 1.0]]))


def test_datainf_code_lissa_matches_the_recursion_by_hand() -> None:
    inputs = _lissa_case()
    # per coordinate a_{k+1} = 1 + a_k (1 - (h - lambda)), a_0 = 1: a_10 = (1 - q^11) / (1 - q), q = 1 - h + lambda
    q = np.array([1 - 0.5 + 0.05, 1 - 0.2 + 0.05])
    ten = LiSSAScorer(damping=0.05, variant="datainf_code").ihvp(inputs)
    np.testing.assert_allclose(ten, (1 - q ** 11) / (1 - q), rtol=1e-6)
    # its fixed point is (G - lambda I)^-1 v = (1/0.45, 1/0.15), not (G + lambda I)^-1 v = (1/0.55, 1/0.25)
    fixed = LiSSAScorer(damping=0.05, variant="datainf_code", depth=400).ihvp(inputs)
    np.testing.assert_allclose(fixed, [1 / 0.45, 1 / 0.15], rtol=1e-6)
    standard = LiSSAScorer(damping=0.05, scale=1.0, depth=400).ihvp(inputs)
    np.testing.assert_allclose(standard, [1 / 0.55, 1 / 0.25], rtol=1e-6)
    # 10 iterations do not reach the fixed point: the 0.15 mode contracts by 0.85 per step
    assert abs(ten[1] - 1 / 0.15) > 1.0
    # score = -g . s_10 for every training row
    scores = LiSSAScorer(damping=0.05, variant="datainf_code").fit_score(inputs)
    np.testing.assert_allclose(scores, -inputs.train.grads.astype(np.float64) @ ten, rtol=1e-6)


def test_datainf_code_lissa_has_no_scale() -> None:
    with pytest.raises(ValueError, match="scorer.variant=datainf_code has no scale"):
        LiSSAScorer(variant="datainf_code", scale=2.0)
    with pytest.raises(ValueError, match="scorer.variant"):
        LiSSAScorer(variant="datainf")
    inputs = ScoringInputs(train=_set([[3.0, 0.0], [0.0, 0.1]]), reference=_set([[1.0, 1.0]]))
    with pytest.raises(FloatingPointError, match="variant=datainf_code"):
        LiSSAScorer(damping=0.01, variant="datainf_code", depth=200).fit_score(inputs)


# -- S11: one engine per sample (H, lambda, v from that sample's gradient alone) --------------------------------

def test_per_sample_self_datainf_is_a_constant() -> None:
    # lambda_i = ||g_i||^2 / (10 d): ||g||^2 / (lambda_i + ||g||^2) = 10 d / (10 d + 1) whatever the gradient
    rng = np.random.default_rng(0)
    g = rng.standard_normal((30, 2)) * rng.uniform(0.01, 10, (30, 1))
    scores = SelfDataInfScorer(hessian_from="sample").fit_score(ScoringInputs(train=_set(g)))
    np.testing.assert_allclose(scores, 20 / 21, rtol=1e-5)  # float32 rounding: the only thing that orders them
    assert len(np.unique(scores)) > 1
    # d = 2048, g = 0.01 * 1: 20480 / 20481 = 0.99995117 (float32: DataInf's v - C g cancels, so ~1e-3 only)
    big = SelfDataInfScorer(hessian_from="sample").fit_score(ScoringInputs(train=_set(np.full((2, 2048), 0.01))))
    np.testing.assert_allclose(big, 20480 / 20481, atol=1e-3)
    # per block (DataInf's weight names): each block adds its own constant; a zero block adds 0 (DataInf: 0/0)
    blocks = [Block("a", 0, 2), Block("b", 2, 5)]
    two = SelfDataInfScorer(hessian_from="sample").fit_score(
        ScoringInputs(train=_set([[1.0, 2.0, 3.0, 0.5, 1.0], [1.0, 2.0, 0.0, 0.0, 0.0]], blocks=blocks)))
    np.testing.assert_allclose(two, [20 / 21 + 30 / 31, 20 / 21], rtol=1e-5)


def test_per_sample_self_lissa_is_monotone_in_the_norm() -> None:
    # r_k = a_k g with a_{k+1} = 1 + a_k (1 - s + lambda), lambda = s / (10 d): score = a_10 s (= -IF)
    def by_hand(s: float, d: int = 2) -> float:
        a = 1.0
        for _ in range(10):
            a = 1 + a * (1 - s + s / (10 * d))
        return a * s

    g = np.array([[np.sqrt(0.2), 0.0], [0.0, np.sqrt(0.4)]])
    scores = SelfLiSSAScorer(hessian_from="sample", variant="datainf_code").fit_score(ScoringInputs(train=_set(g)))
    np.testing.assert_allclose(scores, [by_hand(0.2), by_hand(0.4)], rtol=1e-5)
    assert scores[1] > scores[0]  # in the authors' sign: Self-LiSSA(0.4) < Self-LiSSA(0.2)
    # the closed form (1 - c^11) / (1 - 1/(10 d)), c = 1 - s (1 - 1/(10 d)): increasing in s, the L2 ranking (in
    # float32 only where c^11 is above rounding: near s = 1 / (1 - 1/(10 d)) the scores are flat at 1 / (1 - 1/(10 d)))
    rng = np.random.default_rng(1)
    g = rng.standard_normal((50, 2)) * 0.2
    scores = SelfLiSSAScorer(hessian_from="sample", variant="datainf_code").fit_score(ScoringInputs(train=_set(g)))
    s = (g.astype(np.float32).astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(scores, (1 - (1 - s * 0.95) ** 11) / 0.95, rtol=1e-4)
    np.testing.assert_array_equal(np.argsort(scores), np.argsort(s))


def test_per_sample_self_lissa_standard_variant_by_hand() -> None:
    # textbook recursion with H = g g^T, lambda = 0.1 s / d, scale = max(1, s + lambda): a_{k+1} = 1 + a_k (1 - (s +
    # lambda) / scale), score = a_10 s / scale
    g = np.array([[0.3, 0.4], [2.0, 1.0]])
    out = SelfLiSSAScorer(hessian_from="sample").fit_score(ScoringInputs(train=_set(g)))
    want = []
    for s in (g ** 2).sum(1):
        lam, a = s / 20, 1.0
        scale = max(1.0, s + lam)
        for _ in range(10):
            a = 1 + a * (1 - (s + lam) / scale)
        want.append(a * s / scale)
    np.testing.assert_allclose(out, want, rtol=1e-5)


def test_hessian_from_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="scorer.hessian_from"):
        SelfDataInfScorer(hessian_from="val")
    with pytest.raises(ValueError, match="needs scorer.hessian=gauss_newton"):
        SelfLiSSAScorer(hessian="exact", hessian_from="sample")


# -- S10: DataInf's "exact" influence with 1-D gradients ---------------------------------------------------------

def test_reshape_bug_gives_minus_sum_h_times_sum_g() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((50, 2))
    inputs = ScoringInputs(train=_set(g), reference=_set(g))
    g = g.astype(np.float32).astype(np.float64)
    lam = 0.1 * (g ** 2).sum(1).mean() / 2
    h = np.linalg.solve(g.T @ g / 50 + lam * np.eye(2), g.mean(0))  # eig of sum g g^T: (1/n) G^T G + lambda I
    bug = ExactInfluenceScorer(hessian="gauss_newton", datainf_reshape_bug=True).fit_score(inputs)
    np.testing.assert_allclose(bug, -(h[0] + h[1]) * (g[:, 0] + g[:, 1]), rtol=1e-8)
    plain = ExactInfluenceScorer(hessian="gauss_newton").fit_score(inputs)
    np.testing.assert_allclose(plain, -g @ h, rtol=1e-8)
    assert not np.allclose(bug, plain)
    with pytest.raises(ValueError, match="scorer.datainf_reshape_bug"):
        ExactInfluenceScorer(datainf_reshape_bug="yes")


# -- S8: reference = the training set, the lowest IF trimmed -----------------------------------------------------

def test_lowest_if_with_the_training_set_as_reference() -> None:
    # g = (1,0), (0,1), (2,0): v = (1, 1/3), IF = -(v . g) = (-1, -1/3, -2); the lowest one is sample 3
    train = _set([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    scores = GradientTracingScorer().fit_score(ScoringInputs(train=train, reference=train))
    np.testing.assert_allclose(scores, [-1.0, -1 / 3, -2.0], rtol=1e-6)
    # gradsift's score has DataInf's sign, so "delete the lowest IF" is trim.remove=beneficial ...
    np.testing.assert_array_equal(Trim(count=1, remove="beneficial").select(scores), [False, False, True])
    # ... and, for a helper without DataInf's minus sign, trim.remove=detrimental
    np.testing.assert_array_equal(Trim(count=1, remove="detrimental").select(scores), [False, True, False])


# -- S5/S14: iForest labels and the 10% budget -------------------------------------------------------------------

def test_sklearn_outlier_labels_equal_pyods_at_the_same_contamination() -> None:
    # pyod's IForest (the authors' detector) fits sklearn's forest, scores -decision_function and labels 1 where that
    # score exceeds its (1 - contamination) percentile; gradsift labels sklearn's predict == -1
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((225, 2)), rng.standard_normal((25, 2)) * 4])
    scorer = IsolationForestScorer(contamination=0.1)
    scorer.fit_score(ScoringInputs(train=_set(x), seed=0))
    pyod_scores = -scorer.model.decision_function(scorer._x)
    pyod_labels = pyod_scores > np.percentile(pyod_scores, 100 * (1 - 0.1))
    np.testing.assert_array_equal(scorer.predicted_outliers(), pyod_labels)
    assert pyod_labels.sum() == 25 == int(0.1 * 250)
    # and both are the 25 lowest score_samples (no ties here)
    lowest = np.zeros(250, dtype=bool)
    lowest[np.argsort(scorer.model.score_samples(scorer._x))[:25]] = True
    np.testing.assert_array_equal(pyod_labels, lowest)


def test_ten_percent_budget_and_the_detection_accuracy_it_can_reach() -> None:
    assert Trim(fraction=0.1).n_remove(250) == 25 == int(0.1 * 250)
    noise = np.zeros(250, dtype=bool)
    noise[:20] = True
    # 25 flagged, 20 noisy: errors = 45 - 2 TP, so 82% <=> TP 0, 90% <=> TP 10, 98% <=> TP 20
    for tp, acc in ((0, 0.82), (10, 0.90), (20, 0.98)):
        flagged = np.zeros(250, dtype=bool)
        flagged[20 - tp:45 - tp] = True
        assert detection_metrics(flagged, None, noise)["detection_acc"] == pytest.approx(acc)
