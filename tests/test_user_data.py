"""A user's own data and model, end to end on CPU: a CSV through the generic datamodule, an nn.Sequential through
the TorchModule wrapper, the pipeline, result.json (issue #19 items 3 and 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from sklearn.datasets import make_moons

from gradsift import pipeline
from tests.test_config import CONF

FLIPPED = [2, 5, 9, 14, 20, 27, 33, 41, 50, 62, 77, 90]


@pytest.fixture()
def csv_file(tmp_path: Path) -> Path:
    x, y = make_moons(n_samples=200, noise=0.15, random_state=0)
    noisy = y.copy()
    noisy[FLIPPED] = 1 - noisy[FLIPPED]
    path = tmp_path / "my_data.csv"
    pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "y": noisy, "y_clean": y}).to_csv(path, index=False)
    return path


def _cfg(tmp_path: Path, csv_file: Path, *extra: str):
    overrides = ["data=generic", f"data.train={csv_file}", "data.label=y", "data.features=[f1,f2]",
                 "data.batch_size=200", "model=torch_module", "trainer.max_epochs=40",
                 "trainer.enable_progress_bar=false", "attribution.reference=train", "torch_threads=1",
                 "scorer=l2", f"paths.cache_dir={tmp_path / 'cache'}", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_no_clean_labels_refuses_n_noisy_before_training(tmp_path, csv_file, fit_stages) -> None:
    """Issue #19 item 3: the root default trim (n_noisy) on data without clean labels trimmed nothing and reported
    detection accuracy 1.0."""
    with pytest.raises(ValueError, match=r"trim.budget=n_noisy .* no noise mask"):
        pipeline.run(_cfg(tmp_path, csv_file), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["status"] == "failed" and "trim.fraction=0.05" in saved["error"]
    assert fit_stages == []  # nothing was trained


def test_no_clean_labels_with_a_fraction_trims_and_reports_no_detection_metrics(tmp_path, csv_file, fit_stages) -> None:
    res = pipeline.run(_cfg(tmp_path, csv_file, "trim=fraction", "trim.fraction=0.1"), tmp_path / "run")
    m = res["metrics"]
    assert res["status"] == "ok" and res["dataset"] == "my_data" and fit_stages == ["base", "retrain"]
    assert m["n_trimmed"] == 14  # 10% of the 140 training rows (200 less 20% test, 10% val)
    assert not {"detection_acc", "detection_auc", "precision", "recall", "n_noisy"} & set(m)
    assert 0.5 < m["test_acc"] <= 1 and 0.5 < m["base_test_acc"] <= 1
    assert res["budget"] == {"kind": "fraction", "value": 0.1}


def test_with_clean_labels_the_same_data_reports_detection(tmp_path, csv_file) -> None:
    res = pipeline.run(_cfg(tmp_path, csv_file, "data.clean_label=y_clean"), tmp_path / "run")
    m = res["metrics"]
    dm_rows = 140
    train_flips = m["n_noisy"]
    assert 0 < train_flips <= len(FLIPPED) and m["n_trimmed"] == train_flips
    assert 0 <= m["detection_auc"] <= 1 and m["detection_acc"] == pytest.approx(
        1 - 2 * (train_flips - m["true_positives"]) / dm_rows)


@pytest.mark.parametrize("budget,match", [("trim.count=1000", r"trim.count=1000 removes 1000 samples but the "
                                                              r"training set has only 140"),
                                          ("trim.budget=1.5", r"trim.budget=1.5 is a float"),
                                          ("trim.fraction=1.0", r"trim.fraction=1.0")])
def test_bad_budgets_fail_before_the_first_training_step(tmp_path, csv_file, fit_stages, budget, match) -> None:
    """Issue #19 item 5: ``trim.budget=1000`` on a small set failed only after training."""
    # Hydra wraps the Trim's ValueError when it builds it from the config; the message is the same
    with pytest.raises(Exception, match=match):
        pipeline.run(_cfg(tmp_path, csv_file, "trim=fraction", budget), tmp_path / "run")
    assert fit_stages == []


def test_bad_budget_on_the_default_data_fails_before_training(tmp_path, fit_stages) -> None:
    """The same on the root config's moons data (250 training samples)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["trim.budget=1000", "trainer.max_epochs=2", "torch_threads=1",
                                           "trainer.enable_progress_bar=false", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ValueError, match="trim.budget=1000 removes 1000 samples but the training set has only 250"):
        pipeline.run(cfg, tmp_path / "run")
    assert fit_stages == []
