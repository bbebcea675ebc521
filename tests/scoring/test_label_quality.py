"""cleanlab label-quality scorers give cleanlab's own scores (as 1 - quality) and rankings."""

from __future__ import annotations


import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradsift import CONFIG_DIR
from cleanlab.rank import get_label_quality_scores

from gradsift.attribution.gradient_set import GradientSet
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.label_quality import METHODS, LabelQualityScorer


@pytest.fixture
def inputs() -> ScoringInputs:
    rng = np.random.default_rng(0)
    n, c = 200, 4
    labels = rng.integers(0, c, n)
    logits = rng.standard_normal((n, c))
    logits[np.arange(n), labels] += 2.0
    labels[:20] = (labels[:20] + 1) % c  # mislabel the first 20
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    train = GradientSet(np.zeros((n, 1)), np.arange(n), labels)
    return ScoringInputs(train=train, train_probs=probs)


@pytest.mark.parametrize("method", list(METHODS))
def test_scores_and_ranking_match_cleanlab(inputs: ScoringInputs, method: str) -> None:
    quality = get_label_quality_scores(inputs.train_labels, inputs.train_probs, method=method)
    scores = LabelQualityScorer(method).fit_score(inputs)
    np.testing.assert_allclose(scores, 1 - quality, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.argsort(-scores, kind="stable"), np.argsort(quality, kind="stable"))
    # the mislabeled rows rank mostly on top
    assert np.isin(np.argsort(-scores)[:20], np.arange(20)).mean() >= 0.6


def test_display_names_and_bad_input(inputs: ScoringInputs) -> None:
    assert LabelQualityScorer("confidence_weighted_entropy").display_name == "Confidence Entropy"
    assert LabelQualityScorer("normalized_margin", display_name="NM").display_name == "NM"
    with pytest.raises(ValueError, match="scorer.method"):
        LabelQualityScorer("margin")
    with pytest.raises(ValueError, match="needs predicted probabilities"):
        LabelQualityScorer().fit_score(ScoringInputs(train=inputs.train))
    inputs.train_probs = inputs.train_probs[:, :2]
    with pytest.raises(ValueError, match="labels must be integers"):
        LabelQualityScorer().fit_score(inputs)


@pytest.mark.parametrize("name,display", [("normalized_margin", "Normalized Margin"),
                                          ("self_confidence", "Self-Confidence"),
                                          ("confidence_entropy", "Confidence Entropy")])
def test_configs_instantiate(inputs: ScoringInputs, name: str, display: str) -> None:
    scorer = instantiate(OmegaConf.load(CONFIG_DIR / "scorer" / f"{name}.yaml"))
    assert scorer.display_name == display
    quality = get_label_quality_scores(inputs.train_labels, inputs.train_probs, method=scorer.method)
    np.testing.assert_allclose(scorer.fit_score(inputs), 1 - quality)
