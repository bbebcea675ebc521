"""RandomScorer: uniform, reproducible from the seed."""

from __future__ import annotations


import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradsift import CONFIG_DIR

from gradsift.attribution.gradient_set import GradientSet
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.random import RandomScorer


def test_random_scores_follow_the_seed() -> None:
    train = GradientSet(np.zeros((5000, 2)), np.arange(5000), np.zeros(5000, dtype=int))
    a = RandomScorer().fit_score(ScoringInputs(train=train, seed=3))
    np.testing.assert_array_equal(a, np.random.default_rng(3).random(5000))
    np.testing.assert_array_equal(RandomScorer(seed=3).fit_score(ScoringInputs(train=train, seed=9)), a)
    assert not np.array_equal(RandomScorer().fit_score(ScoringInputs(train=train, seed=4)), a)
    assert abs(a.mean() - 0.5) < 0.02 and a.min() >= 0 and a.max() < 1


def test_config_instantiates() -> None:
    scorer = instantiate(OmegaConf.load(CONFIG_DIR / "scorer" / "random.yaml"))
    assert isinstance(scorer, RandomScorer) and scorer.display_name == "Random"
