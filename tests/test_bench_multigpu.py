"""benchmarks/bench_multigpu.py in --tiny mode on CPU: 2 gloo ranks gather through the Attributor's DDP path and the
merged store equals the single-rank one row for row (the code path the GPU run of scripts/gpu/multigpu.sh takes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gradsift.attribution.store import GradientStore

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_multigpu", ROOT / "benchmarks" / "bench_multigpu.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.slow
def test_tiny_gather_two_gloo_ranks_equals_single_rank(tmp_path):
    rc = bench.main(["--tiny", "--device", "cpu", "--ranks", "1,2", "--threads", "1", "--out", str(tmp_path),
                     "--timeout", "120"])
    assert rc == 0
    records = json.loads((tmp_path / "bench_multigpu.json").read_text())["records"]
    assert [(r["model"], r["world_size"], r["status"]) for r in records] == [
        ("gpt2", 1, "ok"), ("gpt2", 2, "ok"), ("resnet34", 1, "ok"), ("resnet34", 2, "ok")]
    for r in records:
        assert r["backend"] == "gloo" and r["vs_single_rank"]["equal"] and r["vs_single_rank"]["index_equal"]
        assert r["samples_per_s"] > 0 and len(r["peak_gib_per_rank"]) == r["world_size"]
    for model, n in (("gpt2", 24), ("resnet34", 40)):  # checked here again, independent of the benchmark's compare()
        one, two = (GradientStore(tmp_path / "stores" / f"{model}-n{w}" / "train").gradient_set() for w in (1, 2))
        assert one.index.tolist() == list(range(n)) and np.array_equal(two.index, one.index)
        np.testing.assert_array_equal(two.labels, one.labels)
        np.testing.assert_allclose(np.asarray(two.grads), np.asarray(one.grads), rtol=1e-5, atol=1e-7)
        assert len(list((tmp_path / "stores" / f"{model}-n2" / "train").glob("rank1-*.grads.npy"))) > 0  # rank 1 gathered
    assert "| resnet34 | 2 | gloo | 40 |" in (tmp_path / "bench_multigpu.md").read_text()


def test_compare_flags_a_different_store(tmp_path):
    """compare() says ``equal: false`` for a store whose gradients differ (the check can fail)."""
    from gradsift.attribution.gradient_set import Block

    for name, scale in (("a", 1.0), ("b", 1.01)):
        st = GradientStore(tmp_path / name / "train")
        st.open(3, [Block("w", 0, 3)], {})
        st.append(scale * np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2), np.zeros(2, np.int64))
        st.close()
    same, diff = bench.compare(tmp_path / "a", tmp_path / "a", 1e-4), bench.compare(tmp_path / "b", tmp_path / "a", 1e-4)
    assert same["equal"] and same["bitwise_equal"]
    assert diff["index_equal"] and not diff["equal"] and diff["max_row_rel_diff"] == pytest.approx(0.01, rel=1e-3)
