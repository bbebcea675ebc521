"""Sweeps that are interrupted, partly fail or are run again (issue #19 items 6 and 7, and the acceptance test that
interrupts a real sweep): finished jobs are skipped, the sweep ends with "N of M jobs failed" and the list, and the
published summaries in multirun_summaries/ are never touched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


from gradsift import pipeline
from tests.test_pipeline import _cfg

REPO = Path(__file__).resolve().parents[1]
SMALL = ["experiment=table1_moons", "data.n_train=60", "data.n_test=20", "data.flips_per_class=3", "torch_threads=1"]


def test_a_finished_run_is_skipped_unless_forced(tmp_path, fit_stages, caplog) -> None:
    """Re-running a sweep redid its finished jobs (item 7)."""
    first = pipeline.run(_cfg(tmp_path, "scorer=l2", "cache=false"), tmp_path / "job")
    stamp = (tmp_path / "job" / "result.json").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="gradsift.record"):
        again = pipeline.run(_cfg(tmp_path, "scorer=l2", "cache=false"), tmp_path / "job")
    assert fit_stages == ["base", "retrain"] and again["skipped"] and again["metrics"] == first["metrics"]
    assert (tmp_path / "job" / "result.json").stat().st_mtime_ns == stamp
    assert "skipped; force=true runs it again" in caplog.records[-1].getMessage()
    forced = pipeline.run(_cfg(tmp_path, "scorer=l2", "cache=false", "force=true"), tmp_path / "job")
    assert fit_stages == ["base", "retrain"] * 2 and not forced.get("skipped")
    assert forced["config_hash"] == first["config_hash"] and "force" not in forced["config"]


def test_a_changed_or_failed_run_is_not_skipped(tmp_path, fit_stages) -> None:
    pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "job")
    changed = pipeline.run(_cfg(tmp_path, "scorer=l1", "retrain=false"), tmp_path / "job")  # same folder, new config
    assert not changed.get("skipped") and changed["method"] == "Outlier Gradient (L1)"
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    record["status"] = "failed"
    (tmp_path / "job" / "result.json").write_text(json.dumps(record))
    assert not pipeline.run(_cfg(tmp_path, "scorer=l1", "retrain=false"), tmp_path / "job").get("skipped")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "HYDRA_FULL_ERROR": ""}


def _sweep_cmd(sweep: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "experiments" / "run.py"), "-m", *SMALL, f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={cache}", *extra]


def test_a_sweep_ends_with_the_failed_jobs_and_their_errors(tmp_path) -> None:
    """12 of 60 jobs failed with one message and no count (item 6)."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(_sweep_cmd(sweep, tmp_path / "cache", "seed=0", "scorer=l2", "trainer.max_epochs=5",
                                     "trim=fraction", "trim.count=3,1000,2"),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    err = proc.stderr
    assert f"{sweep}: 3 jobs, 2 ran" in err and "1 of 3 jobs failed" in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("  1_")]
    assert "trim.count=1000" in line and "removes 1000 samples but the training set has only 60" in line


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ok_results(sweep: Path) -> dict[Path, int]:
    out = {}
    for f in sweep.rglob("result.json"):
        try:
            if json.loads(f.read_text()).get("status") == "ok":
                out[f] = f.stat().st_mtime_ns
        except ValueError:  # being replaced right now
            continue
    return out


def test_an_interrupted_sweep_changes_no_published_summary_and_its_rerun_skips_finished_jobs(tmp_path) -> None:
    """SIGINT during a real sweep of experiment=table1_moons (2 seeds x 4 scorers), then the same command again."""
    work = tmp_path / "checkout"  # the sweep's working directory holds a copy of the published summaries
    shutil.copytree(REPO / "multirun_summaries", work / "multirun_summaries")
    before = _digests(work / "multirun_summaries")
    sweep, cache = work / "multirun" / "table1_moons", work / ".cache"
    cmd = _sweep_cmd(sweep, cache, "seed=0,1", "scorer=l1,l2,iforest,tracin", "trainer.max_epochs=150")
    # SIGINT back to its default in the child: a test run started as a background job of a non-interactive shell
    # (`make test &`, some CI runners) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler,
    # so the sweep would ignore the signal, finish all 8 jobs and exit 0 (the cause of this test's rare failures)
    proc = subprocess.Popen(cmd, cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.monotonic() + 240
    while len(_ok_results(sweep)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    finished = _ok_results(sweep)
    assert 3 <= len(finished) < 8
    assert _digests(work / "multirun_summaries") == before  # nothing published, nothing overwritten
    assert (sweep / "summary" / "table1_synthetic_mlp_moons.md").exists()  # the sweep's own partial summary

    rerun = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{sweep}: 8 jobs, {8 - len(finished)} ran, {len(finished)} skipped" in rerun.stdout, rerun.stdout[-2000:]
    assert rerun.stdout.count(": skipped (finished before") == len(finished)
    assert all(f.stat().st_mtime_ns == stamp for f, stamp in finished.items())  # not recomputed
    assert len(_ok_results(sweep)) == 8
    assert _digests(work / "multirun_summaries") == before
