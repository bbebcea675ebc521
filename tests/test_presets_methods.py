"""experiment=methods_cifar10n_5k (the GPU comparison of every scorer) and experiment=lds_moons run end to end on
CPU: the CIFAR preset on a tiny slice of the real CIFAR-10N-5k data (fast_dev_run, one checkpoint, 3 LDS subsets)
for the scorers that need more than the loss gradients; the moons preset as committed, for two scorers."""

import pytest
from hydra import compose, initialize_config_dir

from gradsift import pipeline
from tests.test_config import CONF

TINY = ["data.subset=60", "data.test_size=20", "data.val_size=10", "data.device=null", "data.batch_size=20",
        "data.eval_batch_size=30", "+trainer.fast_dev_run=true", "trainer.precision=32", "torch_threads=1",
        "attribution.checkpoints=[1]", "metric.n_subsets=3", "trak_proj_dim=8"]


@pytest.mark.parametrize("scorer", ["ekfac", "trak", "tracin_cp", "self_confidence_kfold", "l2"])
def test_methods_preset_runs_on_cpu(scorer, tmp_path, shared_data):
    extra = ["scorer.folds=2"] if scorer.endswith("kfold") else []
    if scorer == "tracin_cp":  # the triangular schedule warms up from lr 0: fast_dev_run's one step would weigh 0
        extra.append("model.scheduler=null")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=methods_cifar10n_5k", f"scorer={scorer}", *TINY, *extra,
                                           f"paths.data_dir={shared_data}", f"paths.cache_dir={tmp_path / 'cache'}"])
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": scorer})
    m = res["metrics"]
    assert res["status"] == "ok" and res["paper_table"] == "methods.methods_cifar10n_5k"
    assert m["n_trimmed"] == round(0.05 * 60) and m["lds_subsets"] == 3 and -1 <= m["lds"] <= 1
    assert {"detection_auc", "precision", "test_acc"} <= set(m) and res["timings"]["attribution_s"] > 0


@pytest.mark.parametrize("scorer", ["ekfac", "trak"])
def test_lds_moons_preset_runs(scorer, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=lds_moons", f"scorer={scorer}", "metric.n_subsets=4",
                                           "trainer.max_epochs=60", "attribution.checkpoints=[30,60]",
                                           f"paths.cache_dir={tmp_path / 'cache'}"])
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": scorer})
    assert res["status"] == "ok" and -1 <= res["metrics"]["lds"] <= 1


def test_methods_preset_drops_the_short_last_batch_and_metric_can_be_removed(tmp_path, shared_data, caplog):
    """The preset drops each epoch's short last training batch (data.drop_last; its 5% retrains would end on 4
    images), and ``~metric`` on it runs no LDS (the preset's metric.n_subsets stays behind: warned, not a crash)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=methods_cifar10n_5k", "scorer=l2", "~metric", *TINY[:-2],
                                           f"paths.data_dir={shared_data}", f"paths.cache_dir={tmp_path / 'cache'}"])
    assert cfg.data.drop_last is True and "_target_" not in cfg.metric
    with caplog.at_level("WARNING", logger="gradsift.pipeline"):
        res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": "l2"})
    m = res["metrics"]
    assert res["status"] == "ok" and "lds" not in m and "test_acc" in m
    assert "no metric (_target_)" in caplog.text
    # eval_every_epoch: per-image correctness of both models, so each retrain has McNemar's test against its base
    assert isinstance(m["test_correct"], str) and isinstance(m["base_test_correct"], str)
    assert 0 <= m["test_vs_base"]["p"] <= 1
