"""End-to-end: train -> gradients -> score -> trim -> retrain -> result.json, and the base-model cache."""

import json
import subprocess

import pytest
from hydra import compose, initialize_config_dir

from gradsift import pipeline, training
from tests.test_config import CONF

FAST = ["data.n_train=80", "data.n_test=40", "data.flips_per_class=4", "trainer.max_epochs=30",
        "trainer.enable_progress_bar=false", "attribution.reference=train", "torch_threads=1"]


def _cfg(tmp_path, *extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*FAST, f"paths.cache_dir={tmp_path / 'cache'}", *extra])


def test_end_to_end_writes_result_json(tmp_path):
    cfg = _cfg(tmp_path, "scorer=l2")
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": "l2"})
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["status"] == "ok" and saved["method"] == "Outlier Gradient (L2)" and saved["scorer"] == "l2"
    m = saved["metrics"]
    assert m["n_trimmed"] == m["n_noisy"] == 8
    assert 0 <= m["detection_acc"] <= 1 and 0 <= m["test_acc"] <= 1 and 0 <= m["detection_auc"] <= 1
    assert {"train_s", "gradients_s", "score_s", "retrain_s", "total_s"} <= set(saved["timings"])
    assert saved["versions"]["torch"] and len(saved["config_hash"]) == 16
    # the code revision, so two runs of one config can be told apart by code (this test runs from a git checkout)
    head = subprocess.run(["git", "-C", str(CONF), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert saved["versions"]["commit"] == head.stdout.strip() and isinstance(saved["versions"]["dirty"], bool)
    assert (tmp_path / "run" / "flagged.csv").exists()
    assert res["metrics"] == saved["metrics"]


def test_detection_only_run_skips_the_retrain(tmp_path, monkeypatch):
    calls = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    res = pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "det")
    assert calls == ["base"] and res["status"] == "ok"
    assert "test_acc" not in res["metrics"] and 0 <= res["metrics"]["detection_auc"] <= 1
    assert res["timings"]["retrain_s"] == 0.0


def test_eval_every_epoch_records_one_test_accuracy_per_epoch(tmp_path):
    res = pipeline.run(_cfg(tmp_path, "scorer=l2", "eval_every_epoch=true", "trainer.max_epochs=3"), tmp_path / "curve")
    m = res["metrics"]
    assert len(m["test_curve"]) == 3 and len(m["base_test_curve"]) == 3
    # the last point is the final model, which trainer.test scores too
    assert m["test_curve"][-1] == pytest.approx(m["test_acc"], abs=1e-6)
    assert m["base_test_curve"][-1] == pytest.approx(m["base_test_acc"], abs=1e-6)
    # best-epoch accuracy (the OGA authors' np.max): the max of the recorded curve, base and retrained
    assert m["test_best_acc"] == max(m["test_curve"]) and m["base_test_best_acc"] == max(m["base_test_curve"])
    assert m["test_curve"][m["test_best_epoch"] - 1] == m["test_best_acc"]


def test_detector_selection_trims_the_detectors_outliers(tmp_path):
    res = pipeline.run(_cfg(tmp_path, "scorer=iforest", "trim=detector", "scorer.contamination=0.2"), tmp_path / "d")
    assert res["selection"] == "detector" and res["metrics"]["n_trimmed"] == 16


def test_exact_hessian_on_compressed_gradients_is_refused_before_training(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")))
    with pytest.raises(ValueError, match="compressor=identity"):
        pipeline.run(_cfg(tmp_path, "scorer=exact", "compressor=dropout", "compressor.r=16"), tmp_path / "x")
    assert calls == []  # nothing trained, gathered or computed
    assert json.loads((tmp_path / "x" / "result.json").read_text())["status"] == "failed"


def test_csv_logger_records_the_attribution_run(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*FAST, f"paths.cache_dir={tmp_path / 'cache'}", "logger=csv", "scorer=l2",
                                           "eval_every_epoch=true"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    pipeline.run(cfg, tmp_path / "run")
    logged = list((tmp_path / "run" / "attribution").rglob("*"))
    names = {p.name for p in logged}
    assert {"flagged.csv", "metrics.csv"} <= names
    metrics = next(p for p in logged if p.name == "metrics.csv").read_text()
    assert "metrics/detection_acc" in metrics and "timings/retrain_s" in metrics
    assert "metrics/test_best_vs_base/p" in metrics  # a record's numbers (McNemar against the base model) too


@pytest.mark.slow  # wandb offline start-up is slow on 2 cores; tests/test_loggers.py covers the logging itself
def test_wandb_offline_run_of_a_pipeline_job(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tests.test_loggers import _finished_records, _keys

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_MACHINE_INFO": "true",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}.items():
        monkeypatch.setenv(key, value)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*FAST, f"paths.cache_dir={tmp_path / 'cache'}", "logger=wandb",
                                           "scorer=iforest", "experiment=table1_moons"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    pipeline.run(cfg, tmp_path / "run", choices={"scorer": "iforest"})
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    records = _finished_records(next(run_dir.glob("run-*.wandb")))
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.run_group == "table1_moons" and "scorer=iforest" in set(run.tags)
    history = set().union(*(_keys(r.history.item) for r in records if r.HasField("history")))
    assert {"metrics/detection_acc", "metrics/test_acc", "attribution/score_hist/_type", "attribution/flagged/_type",
            "attribution/plots/scores/_type"} <= history
    summary = set().union(*(_keys(r.summary.update) for r in records if r.HasField("summary")))
    assert {"timings/train_s", "timings/retrain_s", "attribution/n_flagged"} <= summary
