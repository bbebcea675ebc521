"""Gradient store: kill-and-resume gives byte-identical files; simulated DDP ranks merge in dataset order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from gradsift.attribution.compressors import DropoutCompressor
from gradsift.attribution.gradient_set import Block
from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attribution.store import GradientStore

ROOT = Path(__file__).resolve().parents[2]


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 4)
        self.calls = 0

    def per_sample_loss(self, batch):
        self.calls += 1
        return F.cross_entropy(self.fc(batch["x"]), batch["label"], reduction="none")


def _batches(n: int = 10, b: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(b, 6, generator=g), "label": torch.randint(0, 4, (b,), generator=g),
             "index": torch.arange(i * b, (i + 1) * b)} for i in range(n)]


def _crash_after(batches: list[dict], k: int):
    for i, b in enumerate(batches):
        if i == k:
            raise KeyboardInterrupt("simulated kill")
        yield b


def test_killed_run_resumes_to_byte_identical_store(tmp_path):
    batches = _batches()
    eng = lambda: PerSampleGradients("all", DropoutCompressor(r=12, seed=0), progress=False)  # noqa: E731
    full = eng().gather(_Model(), batches, store=GradientStore(tmp_path / "a", batches_per_shard=2))
    with pytest.raises(KeyboardInterrupt):
        eng().gather(_Model(), _crash_after(batches, 5), store=GradientStore(tmp_path / "b", batches_per_shard=2))
    assert not (tmp_path / "b" / "manifest.json").exists()  # incomplete store is not readable
    model = _Model()
    resumed = eng().gather(model, batches, store=GradientStore(tmp_path / "b", batches_per_shard=2))
    assert model.calls == 10 - 4  # two complete shards of two batches were skipped
    for f in ("grads.npy", "index.npy", "labels.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    np.testing.assert_array_equal(np.asarray(full.grads), np.asarray(resumed.grads))
    assert resumed.index.tolist() == list(range(30)) and resumed.meta["compressor"]["r"] == 12
    # streaming reader returns the same rows
    rows = np.concatenate([np.asarray(g.grads) for g in GradientStore(tmp_path / "a").iter_rows(rows=7)])
    np.testing.assert_array_equal(rows, np.asarray(full.grads))
    with pytest.raises(ValueError, match="different setup"):
        PerSampleGradients("all", DropoutCompressor(r=12, seed=1), progress=False).gather(
            _Model(), batches, store=GradientStore(tmp_path / "b", batches_per_shard=2))


def test_two_ranks_merge_in_dataset_order(tmp_path):
    n, dim = 11, 3
    blocks = [Block("all", 0, dim)]
    stores = []
    for rank in range(2):  # DistributedSampler(shuffle=False) strides indices and pads rank 1 with index 0
        idx = np.array(list(DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=False)))
        st = GradientStore(tmp_path, rank=rank, world_size=2, batches_per_shard=1)
        assert st.open(dim=dim, blocks=blocks, meta={"c": 1}) == 0
        for chunk in np.array_split(idx, 3):
            st.append(np.repeat(chunk[:, None], dim, 1).astype(np.float32), chunk, chunk % 2)
        st.close()
        stores.append(st)
    stores[0].finalize()
    gs = stores[0].gradient_set()
    assert gs.index.tolist() == list(range(n))
    np.testing.assert_array_equal(np.asarray(gs.grads), np.repeat(np.arange(n)[:, None], dim, 1))
    assert gs.labels.tolist() == [i % 2 for i in range(n)] and isinstance(gs.grads, np.memmap)


def test_bench_gradients_cpu_smoke():
    out = subprocess.run([sys.executable, "benchmarks/bench_gradients.py", "--device", "cpu", "--model", "tiny",
                          "--seq-len", "8", "--batch-size", "2", "--r", "16", "--n-batches", "1",
                          "--naive-samples", "2", "--no-bf16", "--no-resnet", "--no-dattri"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(c) engine + dropout r=16" in out.stdout and "| setting |" in out.stdout


def test_bench_dattri_rows_cpu_smoke():
    """Rows (e') and (f): our LoGra and dattri 0.3.0's LoGraAttributor on the Conv1D->Linear GPT-2 (tiny, CPU)."""
    pytest.importorskip("dattri.algorithm.logra")
    import importlib.util

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("bench_gradients", ROOT / "benchmarks" / "bench_gradients.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.argparse.Namespace(model="tiny", seq_len=8, batch_size=2, r=16, bf16=False)
    torch.manual_seed(0)
    model = bench.LM("tiny").eval()
    batches = [{"x": torch.randint(0, 101, (2, 8)), "index": torch.arange(2) + 2 * i,
                "label": torch.zeros(2, dtype=torch.long)} for i in range(2)]
    spec_re = r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$"
    rows = bench.bench_dattri(args, torch.device("cpu"), model, batches, spec_re, base=1.0, rate_c=1.0)
    assert [r[0] for r in rows][:2] == ["(e') engine + logra r=16, Linear GPT-2", "(f) dattri 0.3.0 LoGra r=16"], rows
    assert rows[1][1] > 0 and "128 dims/sample" in rows[1][3]  # 8 Linear layers x 16
    # the conversion keeps the math: same losses before and after Conv1D -> Linear
    import copy

    lin = copy.deepcopy(model)
    assert len(bench.conv1d_to_linear(lin)) == 8 and not any(type(m).__name__ == "Conv1D" for m in lin.modules())
    with torch.no_grad():
        torch.testing.assert_close(lin.per_sample_loss(batches[0]), model.per_sample_loss(batches[0]))
