"""benchmarks/bench_scorers.py: every scorer yaml instantiates (interpolations resolved) and the table prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_scorers", ROOT / "benchmarks" / "bench_scorers.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_every_scorer_yaml_loads_with_its_interpolations_resolved():
    # dropout_influence / gaussian_influence / trak read ${seed} (and ${trak_proj_dim}) from the root config
    scorers = bench.load_scorers(["dropout_influence", "gaussian_influence", "trak", "l2"])
    assert set(scorers) == {"dropout_influence", "gaussian_influence", "trak", "l2"}
    assert len(bench.load_scorers(None)) == len(list(bench.CONF.glob("*.yaml")))


def test_the_small_table_lists_scorers_it_cannot_time_with_the_reason(capsys):
    bench.main(["--skip-big", "--hessian-n", "0", "--scorers", "l2", "ekfac"])
    out = capsys.readouterr().out
    assert "| l2 | Outlier Gradient (L2) |" in out and "| ekfac | not timed here: " in out
