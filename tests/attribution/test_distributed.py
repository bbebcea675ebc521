"""Multi-process gathering: 2 real gloo processes merge, through the store, to the single-process gradient sets."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gradsift.attribution.distributed import RankSlice, rank_loader

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
_spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def test_rank_slices_cover_every_row_once():
    n, world = 23, 3
    parts = [list(RankSlice(n, r, world)) for r in range(world)]
    assert sorted(sum(parts, [])) == list(range(n)) and [len(p) for p in parts] == [8, 8, 7]
    loader = worker.TinyData().attribution_dataloader("train")
    got = torch.cat([b["index"] for b in rank_loader(loader, 1, 2)]).tolist()
    assert got == [100 + i for i in range(1, n, 2)]


def _run_two_ranks(tmp_path: Path, mode: str) -> None:
    (tmp_path / "t").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "t")}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", str(tmp_path / "pg"), str(tmp_path), mode],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)


def _check_against_single_process(tmp_path: Path, single: dict) -> None:
    assert set(single) == {"train", "val"}
    assert single["train"].index.tolist() == [100 + i for i in range(worker.N_TRAIN)]
    for r in range(2):
        with np.load(tmp_path / f"rank{r}.npz") as z:
            for tag in ("tmp", "kept"):
                for split, gs in single.items():
                    np.testing.assert_array_equal(z[f"{tag}_{split}_index"], gs.index)  # dataset order, no duplicates
                    np.testing.assert_array_equal(z[f"{tag}_{split}_labels"], gs.labels)
                    np.testing.assert_allclose(z[f"{tag}_{split}_grads"], gs.grads, rtol=1e-5, atol=1e-6)
    store = tmp_path / "store"
    for split in ("train", "val"):  # the kept store holds both ranks' shards and the merged, final manifest
        assert (store / split / "manifest.json").exists() and (store / split / "manifest-rank1.json").exists()
    assert list((tmp_path / "t").glob("gradsift-store-*")) == []  # the temporary store was removed


def test_two_gloo_ranks_equal_single_process(tmp_path):
    torch.set_num_threads(1)
    _run_two_ranks(tmp_path, "direct")
    data, model, eng = worker.TinyData(), worker.TinyModel(), worker.make_engine()
    single = {s: eng.gather(model, data.attribution_dataloader(s)) for s in ("train", "val")}
    _check_against_single_process(tmp_path, single)


def test_attributor_store_single_process_matches_in_memory(tmp_path):
    torch.set_num_threads(1)
    data, model = worker.TinyData(), worker.TinyModel()
    mem = worker.gathered(worker.make_attributor().gather(model, data))
    stored = worker.gathered(worker.make_attributor(str(tmp_path / "s")).gather(model, data))
    for split in ("train", "val"):
        assert isinstance(stored[split].grads, np.memmap)
        np.testing.assert_array_equal(stored[split].index, mem[split].index)
        np.testing.assert_array_equal(np.asarray(stored[split].grads), mem[split].grads)


@pytest.mark.slow
def test_two_gloo_ranks_through_the_attributor(tmp_path):
    """Same as above through ``Attributor.gather(dist=...)``, the path AttributionCallback takes under DDP."""
    torch.set_num_threads(1)
    _run_two_ranks(tmp_path, "attributor")
    data, model = worker.TinyData(), worker.TinyModel()
    _check_against_single_process(tmp_path, worker.gathered(worker.make_attributor().gather(model, data)))


@pytest.mark.slow
def test_lightning_ddp_two_cpu_processes(tmp_path):
    """A real ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` fit: on_fit_end gathers through the store."""
    torch.set_num_threads(1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(WORKER.with_name("ddp_lightning.py")), str(tmp_path)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    data, model = worker.TinyData(), worker.TinyModel()
    single = worker.gathered(worker.make_attributor().gather(model, data))
    for r in range(2):
        with np.load(tmp_path / f"lightning-rank{r}.npz") as z:
            for split, gs in single.items():
                np.testing.assert_array_equal(z[f"{split}_index"], gs.index)
                np.testing.assert_allclose(z[f"{split}_grads"], gs.grads, rtol=1e-5, atol=1e-6)
