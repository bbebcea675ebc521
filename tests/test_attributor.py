"""Attributor with no Trainer: gather + score equals attribute, gradients gathered once score again, and a scorer
that cannot use the compressor is refused before anything is gathered."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import pytest

from gradsift.attribution.compressors import DropoutCompressor
from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attributor import Attributor
from gradsift.data.synthetic import MoonsDataModule
from gradsift.models.tabular import MLP
from gradsift.scoring.influence import ExactInfluenceScorer, GradientTracingScorer
from gradsift.scoring.outliers import IsolationForestScorer
from gradsift.trim import Trim


@pytest.fixture(scope="module")
def moons():
    dm = MoonsDataModule(n_train=60, n_test=20, flips_per_class=3, seed=0)
    dm.setup()
    pl.seed_everything(0, verbose=False)
    return dm, MLP()


def test_attribute_flags_the_budget_without_a_trainer(moons):
    dm, model = moons
    attributor = Attributor(PerSampleGradients("last_layer", progress=False), IsolationForestScorer(),
                            Trim(budget=6), reference="train")
    res = attributor.attribute(model, dm)
    assert list(res.flagged.columns) == ["index", "label", "clean_label", "score", "flagged"]
    assert res.flagged["score"].is_monotonic_decreasing and res.flagged["flagged"].sum() == 6
    assert res.flagged["flagged"].head(6).all()
    assert (res.flagged["label"] != res.flagged["clean_label"]).sum() == 6  # clean labels from the datamodule
    np.testing.assert_array_equal(res.flagged.sort_index()["score"].to_numpy(), res.scores)
    assert {"gradients_s", "score_s"} <= set(attributor.timings)


def test_gathered_gradients_score_again_with_another_scorer(moons):
    dm, model = moons
    gather = Attributor(PerSampleGradients("last_layer", progress=False), reference="test")
    inputs = gather.gather(model, dm)
    assert inputs.reference is not None and inputs.reference.n == len(dm.test_set)
    tracing = Attributor(gather.engine, GradientTracingScorer(), Trim(budget=0.1), reference="test")
    once = tracing.score(inputs, dm)
    np.testing.assert_allclose(once.scores, tracing.attribute(model, dm).scores)
    np.testing.assert_allclose(once.scores, -inputs.train.grads @ inputs.reference.grads.mean(0), rtol=1e-5)


def test_a_scorer_that_cannot_use_the_compressor_is_refused_before_gathering():
    engine = PerSampleGradients("last_layer", DropoutCompressor(r=8), progress=False)
    with pytest.raises(ValueError, match="compressor=identity"):
        Attributor(engine, ExactInfluenceScorer(hessian="exact"))
    with pytest.raises(ValueError, match="attribution.reference"):
        Attributor(engine, reference="holdout")
