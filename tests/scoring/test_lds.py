"""The linear datamodeling score against a hand computation and dattri 0.3.0's ``metric.lds`` (skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from gradsift.scoring.lds import linear_datamodeling_score, subset_masks


def test_subset_masks_keep_the_fraction_and_are_seeded() -> None:
    masks = subset_masks(50, 8, 0.5, seed=3)
    assert masks.shape == (8, 50) and (masks.sum(1) == 25).all()
    assert (masks == subset_masks(50, 8, 0.5, seed=3)).all()
    assert not (masks == subset_masks(50, 8, 0.5, seed=4)).all()
    assert len({m.tobytes() for m in masks}) == 8
    with pytest.raises(ValueError, match="metric.fraction"):
        subset_masks(50, 8, 1.0, seed=0)


def test_hand_computation() -> None:
    """4 training samples, 4 subsets: predicted = sum of kept scores; LDS = Pearson of the ranks."""
    scores = np.array([3.0, -1.0, 0.5, 2.0])
    masks = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]], dtype=bool)
    predicted = np.array([2.0, -0.5, 5.0, 2.5])  # hand sums
    losses = np.array([0.30, 0.10, 0.40, 0.20])  # ranks 3, 1, 4, 2 vs predicted ranks 2, 1, 4, 3
    rp, rl = rankdata(predicted), rankdata(losses)
    expected = np.corrcoef(rp, rl)[0, 1]
    assert expected == pytest.approx(1 - 6 * 2 / (4 * 15))  # rank differences -1, 0, 0, 1
    assert linear_datamodeling_score(scores, masks, losses) == pytest.approx([0.8])
    # a higher score (more detrimental) for what the high-loss subsets keep = a positive LDS
    assert linear_datamodeling_score(-scores, masks, losses) == pytest.approx([-0.8])


def test_matches_dattri() -> None:
    pytest.importorskip("dattri.metric")
    import torch
    from dattri.metric import lds

    rng = np.random.default_rng(0)
    n, m, t = 40, 12, 5
    scores = rng.standard_normal((n, t))
    masks = subset_masks(n, m, 0.5, seed=1)
    losses = masks @ scores * 0.3 + rng.standard_normal((m, t))
    ours = linear_datamodeling_score(scores, masks, losses)
    indices = torch.tensor(np.stack([np.flatnonzero(row) for row in masks]))
    # dattri: scores = helpfulness, ground truth = -loss
    theirs, _ = lds(torch.tensor(-scores), (torch.tensor(-losses), indices))
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10)
    assert ours.mean() > 0.3
