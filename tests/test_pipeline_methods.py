"""The peer-library methods wired into the pipeline (issue #20): K-FAC / EK-FAC factors, TRAK's margin gradients,
gradients at saved checkpoints (TracInCP), k-fold probabilities and metric=lds, each built once and cached; and the
AttributionCallback gathering at checkpoints. Tiny two-moons runs on CPU."""

import numpy as np
import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gradsift import artifacts, pipeline, training
from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attributor import Attributor, predict_probs
from gradsift.callback import AttributionCallback
from gradsift.scoring.base import ScoringInputs
from gradsift.scoring.kfac import EKFACScorer
from gradsift.scoring.tracin import TracInCPScorer
from gradsift.trim import Trim
from tests.test_config import CONF

FAST = ["data.n_train=80", "data.n_test=40", "data.flips_per_class=4", "trainer.max_epochs=30",
        "trainer.enable_progress_bar=false", "attribution.reference=test", "torch_threads=1"]


def _cfg(tmp_path, *extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*FAST, f"paths.cache_dir={tmp_path / 'cache'}", *extra])


def _count_fits(monkeypatch) -> list:
    calls = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    return calls


@pytest.mark.parametrize("scorer", ["ekfac", "kfac", "trak", "tracin_cp"])
def test_new_scorers_run_end_to_end(scorer, tmp_path):
    res = pipeline.run(_cfg(tmp_path, f"scorer={scorer}", "trak_proj_dim=16"), tmp_path / "run")
    assert res["status"] == "ok" and 0 <= res["metrics"]["detection_auc"] <= 1 and 0 <= res["metrics"]["test_acc"] <= 1
    t = res["timings"]
    assert t["attribution_s"] == pytest.approx(t["gradients_s"] + t["extras_s"] + t["score_s"])


def test_kronecker_factors_are_gathered_once_per_strategy_and_match_the_library(tmp_path):
    cfg = _cfg(tmp_path, "scorer=ekfac")
    first = pipeline.run(cfg, tmp_path / "a")
    again = pipeline.run(cfg, tmp_path / "b")
    assert again["metrics"] == first["metrics"] and len(list((tmp_path / "cache" / "kfac").glob("*/COMPLETE"))) == 1
    pipeline.run(_cfg(tmp_path, "scorer=kfac"), tmp_path / "c")
    assert len(list((tmp_path / "cache" / "kfac").glob("*/COMPLETE"))) == 2
    # the cached factors give what the library computes from the model directly (true Fisher, the run's seed)
    dm = instantiate(cfg.data)
    dm.setup()
    art = artifacts.base_artifacts(cfg, dm)
    model = training.load_model(cfg, art.model_dir)
    attributor = Attributor(PerSampleGradients("all", progress=False), EKFACScorer(), reference="test", seed=cfg.seed)
    direct = attributor.score(attributor.gather(model, dm), dm).scores
    np.testing.assert_allclose(np.load(tmp_path / "a" / "scores.npy"), direct, rtol=1e-5)


def test_tracin_cp_sums_over_the_saved_checkpoints_with_their_learning_rates(tmp_path, monkeypatch):
    calls = _count_fits(monkeypatch)
    cfg = _cfg(tmp_path, "scorer=tracin_cp", "attribution.checkpoints=[10,20,30]")
    res = pipeline.run(cfg, tmp_path / "run")
    assert res["status"] == "ok" and calls == ["base", "retrain"]  # checkpoints come from the one base training
    dm = instantiate(cfg.data)
    dm.setup()
    art = artifacts.scorer_inputs(cfg, dm, TracInCPScorer(), artifacts.base_artifacts(cfg, dm))
    ckpts = art.inputs.extra["checkpoints"]
    assert [c.name for c in ckpts] == ["epoch 10", "epoch 20", "epoch 30"]
    assert [c.learning_rate for c in ckpts] == pytest.approx([0.01] * 3)  # the MLP's Adam learning rate
    expected = -sum(c.learning_rate * c.train.grads.astype(np.float64) @ c.reference.grads.astype(np.float64).mean(0)
                    for c in ckpts)
    np.testing.assert_allclose(np.load(tmp_path / "run" / "scores.npy"), expected, rtol=1e-6)
    # the last checkpoint is the final model: its gradients are the base run's
    np.testing.assert_allclose(ckpts[-1].train.grads, art.inputs.train.grads)
    with pytest.raises(ValueError, match="attribution.checkpoints"):
        pipeline.run(_cfg(tmp_path, "scorer=tracin_cp", "attribution.checkpoints=[40]"), tmp_path / "bad")


def test_kfold_probabilities_are_out_of_sample_and_cached_per_fold(tmp_path, monkeypatch):
    calls = _count_fits(monkeypatch)
    cfg = _cfg(tmp_path, "scorer=self_confidence_kfold", "scorer.folds=3")
    res = pipeline.run(cfg, tmp_path / "run")
    assert res["status"] == "ok" and calls == ["base", "fold", "fold", "fold", "retrain"]
    again = pipeline.run(cfg, tmp_path / "again")
    assert calls.count("fold") == 3 and again["metrics"] == res["metrics"]
    dm = instantiate(cfg.data)
    dm.setup()
    scorer = instantiate(cfg.scorer)
    art = artifacts.scorer_inputs(cfg, dm, scorer, artifacts.base_artifacts(cfg, dm))
    in_sample = artifacts.base_artifacts(cfg, dm).inputs.train_probs
    probs = art.inputs.train_probs
    assert probs.shape == in_sample.shape and np.allclose(probs.sum(1), 1, atol=1e-5)
    # the noisy labels the model memorised get a lower out-of-sample probability than in-sample
    noisy = dm.noise_mask
    given = art.inputs.train.labels
    assert probs[noisy, given[noisy]].mean() < in_sample[noisy, given[noisy]].mean()


def test_lds_retrains_the_subsets_once_for_every_scorer(tmp_path, monkeypatch):
    calls = _count_fits(monkeypatch)
    a = pipeline.run(_cfg(tmp_path, "scorer=l2", "metric=lds", "metric.n_subsets=6"), tmp_path / "a")
    b = pipeline.run(_cfg(tmp_path, "scorer=ekfac", "metric=lds", "metric.n_subsets=6"), tmp_path / "b")
    assert calls.count("retrain") <= 2 + 6 and b["metrics"]["lds_cache_hits"] == 6
    for res in (a, b):
        assert -1 <= res["metrics"]["lds"] <= 1 and res["metrics"]["lds_subsets"] == 6
    # the metric against its definition: the retrain cache holds every subset's test loss
    cfg = _cfg(tmp_path, "scorer=ekfac", "metric=lds", "metric.n_subsets=6")
    dm = instantiate(cfg.data)
    dm.setup()
    metric = instantiate(cfg.metric)
    art = artifacts.base_artifacts(cfg, dm)
    index = art.inputs.train.index
    masks = metric.masks(len(index))
    losses = [artifacts.retrain(cfg, dm, index[m], art.model_key)[0]["loss"] for m in masks]
    assert b["metrics"]["lds"] == pytest.approx(metric(np.load(tmp_path / "b" / "scores.npy"), masks, np.array(losses)))


def test_callback_gathers_at_the_checkpoints(tmp_path):
    cfg = _cfg(tmp_path)
    dm = instantiate(cfg.data)
    dm.setup()
    model = instantiate(cfg.model)
    attributor = Attributor(PerSampleGradients("all", progress=False), TracInCPScorer(), Trim(budget=0.1),
                            reference="test")
    cb = AttributionCallback(attributor, checkpoints=[5, 10])
    pl.Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
               enable_model_summary=False, limit_val_batches=0, callbacks=[cb],
               default_root_dir=str(tmp_path)).fit(model, datamodule=dm)
    ckpts = cb.inputs.extra["checkpoints"]
    assert [c.name for c in ckpts] == ["epoch 5", "epoch 10"] and ckpts[0].learning_rate == pytest.approx(0.01)
    assert not np.allclose(ckpts[0].train.grads, ckpts[1].train.grads)
    np.testing.assert_allclose(ckpts[1].train.grads, cb.inputs.train.grads, rtol=1e-6, atol=1e-8)
    expected = TracInCPScorer().fit_score(ScoringInputs(cb.inputs.train, cb.inputs.reference,
                                                        extra={"checkpoints": ckpts}))
    np.testing.assert_allclose(cb.attribution.scores, expected)
    assert predict_probs(model, dm.attribution_dataloader("train")).shape == (80, 2)
