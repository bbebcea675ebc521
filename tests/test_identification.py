"""The scorers' batched pairwise matrices equal the generic one-fit-per-reference-row rule, and a tiny end-to-end
identification run (OGA Table 3 flow) writes result.json, scores.npy, per_test.csv and the Figure-4 heatmap."""

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from gradsift import pipeline
from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.identification import figure4_grid
from gradsift.scoring.base import Scorer
from gradsift.scoring.influence import DataInfScorer, GradientTracingScorer, LiSSAScorer
from gradsift.scoring.outliers import IsolationForestScorer, PerClassIsolationForest
from gradsift.scoring.random import RandomScorer
from tests.test_config import CONF


def _toy(n_per_class: int, seed: int) -> GradientSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    centres = rng.normal(size=(3, 12)) * 3
    grads = centres[labels] + rng.normal(size=(len(labels), 12))
    return GradientSet(grads, np.arange(len(labels)) + 100 * seed, labels,
                       blocks=[Block("a", 0, 5), Block("b", 5, 12)])


def test_batched_matrices_equal_the_generic_rule():
    train, test = _toy(8, 0), _toy(2, 1)
    for scorer, rtol in ((GradientTracingScorer(), 1e-10), (DataInfScorer(), 1e-8), (DataInfScorer(damping=0.5), 1e-8)):
        np.testing.assert_allclose(scorer.pairwise(train, test, device="cpu"), Scorer.pairwise(scorer, train, test),
                                   rtol=rtol)


def test_each_scorer_answers_for_its_own_matrix():
    train, test = _toy(8, 0), _toy(2, 1)
    forest = IsolationForestScorer(n_estimators=20, contamination=0.1)
    s = forest.pairwise(train, test, seed=3)
    ref = PerClassIsolationForest(n_estimators=20, seed=3).fit(train)
    assert forest.pairwise_name == "Outlier Gradient" and s.shape == (6, 24)
    assert forest.pairwise_class_scores.shape == (6, 3)
    np.testing.assert_allclose(s, ref.train_scores(test, train))
    assert DataInfScorer().pairwise_name == "DataInf" and DataInfScorer().pairwise_class_scores is None
    assert LiSSAScorer(depth=3).pairwise(train, test).shape == (6, 24)
    with pytest.raises(ValueError, match="without a reference"):
        RandomScorer().pairwise(train, test)


TINY = ["model=tiny_gpt2", "data.generate=true", "data.num_classes=3", "data.train_per_class=6",
        "data.test_per_class=2", "data.batch_size=6", "data.eval_batch_size=6", "data.max_length=96",
        "trainer=default", "trainer.max_epochs=2", "model.optimizer.lr=3e-3", "torch_threads=1"]


def _compose(tmp_path, *extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=table3_datainf_identification", *TINY,
                                            f"paths.cache_dir={tmp_path / 'cache'}", *extra])


def test_tiny_identification_run_end_to_end(tmp_path):
    res = pipeline.run(_compose(tmp_path), tmp_path / "iforest", choices={"scorer": "iforest"})
    assert res["status"] == "ok" and res["method"] == "Outlier Gradient" and res["dataset"] == "grammars"
    m = res["metrics"]
    assert m["n_train"] == 18 and m["n_test"] == 6 and m["top_k"] == 6
    assert 0 <= m["detection_auc"] <= 1 and 0 <= m["recall"] <= 1 and "base_test_perplexity" in m
    scores = np.load(tmp_path / "iforest" / "scores.npy")
    assert scores.shape == (6, 18)
    for f in ("heatmap.png", "heatmap_classes.png", "per_test.csv"):
        assert (tmp_path / "iforest" / f).stat().st_size > 0
    on_disk = json.loads((tmp_path / "iforest" / "result.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["paper_table"] == "oga.table3_llm_influential_data"
    # a second method on the same benchmark reuses the fine-tuned model and gradients
    res2 = pipeline.run(_compose(tmp_path, "scorer=tracin"), tmp_path / "tracin", choices={"scorer": "tracin"})
    assert res2["cache_hit"] and res2["method"] == "Gradient Tracing" and res2["base_key"] == res["base_key"]
    assert not (tmp_path / "tracin" / "heatmap_classes.png").exists()
    with np.load(tmp_path / "tracin" / "classes.npz") as z:
        assert z["train"].tolist() == sorted(z["train"].tolist()) and len(z["test"]) == 6
    assert figure4_grid(tmp_path, tmp_path / "fig4.png").stat().st_size > 0

def test_identification_failure_is_recorded(tmp_path):
    with pytest.raises(ValueError, match="reference=test"):
        pipeline.run(_compose(tmp_path, "attribution.reference=val"), tmp_path / "bad")
    res = json.loads((tmp_path / "bad" / "result.json").read_text())
    assert res["status"] == "failed" and "reference=test" in res["error"] and "traceback" in res
