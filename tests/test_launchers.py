"""Real parallel multiruns through the Hydra launchers: every job ok, the base model trained once per seed.

The jobs of one seed share a base-model cache entry (``gradsift.cache.ArtifactCache``, file lock + atomic
rename), so exactly one of them builds it (``cache_hit`` false) and the others wait and reuse it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["experiment=table1_moons", "trainer.max_epochs=20", "data.n_train=60", "data.n_test=20",
         "data.flips_per_class=3", "torch_threads=1"]


def multirun(tmp_path: Path, launcher: list[str], seeds: list[int], scorers: list[str]) -> list[dict]:
    cache, sweep, summary = tmp_path / "cache", tmp_path / "sweep", tmp_path / "summary"
    cmd = [sys.executable, "experiments/run.py", "-m", *SMALL, *launcher,
           f"seed={','.join(map(str, seeds))}", f"scorer={','.join(scorers)}",
           f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}", f"hydra.callbacks.summary.out_dir={summary}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"multirun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # rglob: the job subdir is named from the overrides, and a path-valued override (paths.cache_dir=/tmp/...)
    # puts slashes in it
    results = [json.loads(p.read_text()) for p in sorted(sweep.rglob("result.json"))]
    assert len(results) == len(seeds) * len(scorers), sorted(str(p) for p in sweep.rglob("*"))[:20]
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    by_seed: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_seed[r["seed"]].append(r)
    assert sorted(by_seed) == seeds
    for seed, runs in by_seed.items():
        assert len({r["base_key"] for r in runs}) == 1, f"seed {seed}: jobs disagree on the base model key"
        assert sum(not r["cache_hit"] for r in runs) == 1, f"seed {seed}: base model trained {sum(not r['cache_hit'] for r in runs)} times"
    assert len({r["base_key"] for r in results}) == len(seeds)
    assert len([p for p in (cache / "base").iterdir() if p.is_dir()]) == len(seeds)
    assert len([p for p in (cache / "model").iterdir() if p.is_dir()]) == len(seeds)  # one trained model per seed
    assert sum(not r["model_cache_hit"] for r in results) == len(seeds)
    return results


def test_joblib_launcher_trains_base_once_per_seed(tmp_path: Path) -> None:
    # an override list whose joined form passes the 255-byte file-name limit: the job folders are cut + hashed
    # (gradsift.resolvers), resolved inside the joblib workers
    long_name = "a-method-name-long-enough-" * 12
    results = multirun(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"method={long_name}"], [0, 1],
                       ["l1", "l2", "iforest"])
    assert {r["scorer"] for r in results} == {"l1", "l2", "iforest"} and {r["method"] for r in results} == {long_name}
    job_dirs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    assert len(job_dirs) == 6 and all(len(p.name) <= 150 for p in job_dirs), [p.name for p in job_dirs]


def test_submitit_local_launcher_trains_base_once_per_seed(tmp_path: Path) -> None:
    multirun(tmp_path, ["hydra/launcher=submitit_local"], [0], ["l1", "l2"])
