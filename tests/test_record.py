"""result.json: written whatever happens, with the versions and the code revision that produced it."""

import json

import pytest

from gradsift import pipeline, record
from tests.test_pipeline import _cfg


def test_failed_run_still_writes_result_json(tmp_path):
    cfg = _cfg(tmp_path, "trim.budget=500")
    with pytest.raises(ValueError, match="trim.budget=500"):
        pipeline.run(cfg, tmp_path / "f")
    saved = json.loads((tmp_path / "f" / "result.json").read_text())
    assert saved["status"] == "failed" and "trim.budget=500" in saved["error"]


def test_code_revision_can_be_given_for_a_tree_without_git(monkeypatch):
    record.code_revision.cache_clear()
    monkeypatch.setenv("GRADSIFT_COMMIT", "0123abc")
    try:
        assert record.versions()["commit"] == "0123abc" and record.versions()["dirty"] is None
    finally:
        record.code_revision.cache_clear()


def test_recorded_keeps_the_metrics_computed_before_an_error(tmp_path):
    result = {"status": "running", "metrics": {}}
    with pytest.raises(RuntimeError, match="boom"):
        with record.recorded(result, tmp_path):
            result["metrics"]["detection_auc"] = 0.5
            raise RuntimeError("boom")
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == "RuntimeError: boom"
    assert saved["metrics"] == {"detection_auc": 0.5} and "Traceback" in saved["traceback"]
