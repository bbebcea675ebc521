"""The OGA detectors flag planted outliers in a synthetic gradient matrix."""

import numpy as np
import pytest

from gradsift.attribution.gradient_set import GradientSet
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.outliers import IsolationForestScorer, NormScorer, OneClassSVMScorer, row_norms


def _planted(n=300, d=20, k=15, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(0, 1, size=(n, d))
    out = rng.choice(n, size=k, replace=False)
    g[out] += rng.normal(0, 1, size=(k, d)) * 6 + 8  # far from the bulk, larger norm
    mask = np.zeros(n, dtype=bool)
    mask[out] = True
    return GradientSet(g.astype(np.float32), np.arange(n), np.zeros(n, dtype=np.int64)), mask


@pytest.mark.parametrize("scorer", [IsolationForestScorer(), NormScorer(1), NormScorer(2)])
def test_detectors_rank_planted_outliers_first(scorer):
    gs, mask = _planted()
    s = scorer.fit_score(ScoringInputs(train=gs, seed=0))
    top = np.argsort(-s)[: mask.sum()]
    assert mask[top].all()
    flagged = scorer.predicted_outliers()
    assert flagged.dtype == bool and flagged[mask].all()  # contamination 0.1 > 5% planted


def test_norm_scores_are_norms():
    gs, _ = _planted(n=10, k=2)
    np.testing.assert_allclose(NormScorer(1).fit_score(ScoringInputs(train=gs)), np.abs(gs.grads).sum(1), rtol=1e-6)
    np.testing.assert_allclose(NormScorer(2).fit_score(ScoringInputs(train=gs)), np.linalg.norm(gs.grads, axis=1),
                               rtol=1e-6)


@pytest.mark.parametrize("ord", [1, 2])
def test_blockwise_norms_equal_the_whole_matrix_float64_norm_to_the_last_bit(ord):
    # 10 blocks of 7 rows and a ragged last block; float32 input as the gradient store holds it
    x = np.random.default_rng(3).standard_normal((73, 300)).astype(np.float32) * 1e3
    expected = np.linalg.norm(x.astype(np.float64), ord=ord, axis=1)
    assert np.array_equal(row_norms(x, ord, rows=7), expected)


def test_ocsvm_uses_validation_gradients_as_inliers():
    train, mask = _planted()
    rng = np.random.default_rng(1)
    val = GradientSet(rng.normal(0, 1, size=(200, 20)).astype(np.float32), np.arange(200), np.zeros(200, int))
    sc = OneClassSVMScorer(nu=0.05)
    s = sc.fit_score(ScoringInputs(train=train, reference=val))
    assert mask[np.argsort(-s)[: mask.sum()]].mean() >= 0.9
    with pytest.raises(ValueError, match="needs reference gradients"):
        OneClassSVMScorer().fit_score(ScoringInputs(train=train))


def test_nan_gradients_fail_clearly():
    gs, _ = _planted(n=20, k=2)
    gs.grads[3, 0] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        NormScorer(2).fit_score(ScoringInputs(train=gs))
