"""The whole pipeline under a real 2-process DDP launch (Lightning's subprocess launcher re-runs the script for rank 1,
gloo on CPU): no deadlock on the cache locks, one published model, gradients gathered by both ranks, and only
rank 0 writes the run's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gradsift.attribution.gradient_set import GradientSet
from gradsift.cache import launcher_rank

ROOT = Path(__file__).resolve().parents[1]


def test_launcher_rank_reads_the_launchers_variables(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert launcher_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launcher_rank() == 1
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launcher_rank() == 3


def test_pipeline_runs_under_two_process_ddp(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "experiments/run.py", "scorer=l2", "data.n_train=80", "data.n_test=40",
           "data.flips_per_class=4", "trainer.max_epochs=5", "trainer.enable_progress_bar=false",
           "attribution.reference=train", "torch_threads=1", "trainer.accelerator=cpu", "trainer.devices=2",
           "+trainer.strategy=ddp", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stderr  # a second process really trained (before the fix: a deadlock)
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["status"] == "ok" and 0 <= res["metrics"]["test_acc"] <= 1
    assert res["config"]["trainer"]["devices"] == 2
    # one published model and one retrain: rank 1 trained alongside rank 0 in private folders
    assert len(list((tmp_path / "cache" / "model").glob("*/COMPLETE"))) == 1
    assert len(list((tmp_path / "cache" / "retrain").glob("*/COMPLETE"))) == 1
    # the gradients were gathered by both ranks (strided shares merged by rank 0), not by rank 0 alone
    (base,) = (tmp_path / "cache" / "base").glob("*/meta.json")
    assert json.loads(base.read_text())["gather_world_size"] == 2
    gs = GradientSet.load(str(base.parent / "grads_train.npz"))
    assert gs.n == 80 and len(set(gs.index.tolist())) == 80  # every training row once, no sampler padding
