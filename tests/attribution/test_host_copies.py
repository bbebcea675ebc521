"""The reused host buffers of PerSampleGradients.gather (issue #16): a turn is handed out again only after the batch
copied into it was read, the short last batch reuses the full batch's buffers, and rows come out bit for bit.

On a CUDA device the buffers are pinned and the copies non-blocking; here a pool that stages host tensors too (and
does not pin) runs the same turn logic on CPU, where a copy lands at once: a buffer reused before its batch was read
would show as wrong rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.attribution import gradients
from gradsift.attribution.gradients import PerSampleGradients, _HostCopy, _PinnedBuffers
from gradsift.attribution.store import GradientStore


class _StagingPool(_PinnedBuffers):
    """Stages every tensor (host ones too) into unpinned buffers and records each allocation and hand-out."""

    pools: list[_StagingPool] = []

    def __init__(self, depth: int = 2, pin: bool = True):
        super().__init__(depth=depth, pin=False)
        self.allocated: list[tuple] = []
        self.handed: list[tuple[int, int, tuple]] = []
        _StagingPool.pools.append(self)

    def stages(self, t: torch.Tensor) -> bool:
        return True

    def get(self, turn: int, slot: int, like: torch.Tensor) -> torch.Tensor:
        before = dict(self.buffers)
        out = super().get(turn, slot, like)
        self.allocated += [k for k in self.buffers if before.get(k) is not self.buffers[k]]
        self.handed.append((turn, slot, tuple(like.shape)))
        return out


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.fc = nn.Linear(6, 5), nn.Linear(5, 4)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self.fc(torch.tanh(self.body(batch["x"]))), batch["label"], reduction="none")


def _batches(sizes=(4, 4, 4, 2)) -> list[dict]:
    g, start, out = torch.Generator().manual_seed(3), 0, []
    for b in sizes:
        out.append({"x": torch.randn(b, 6, generator=g), "label": torch.randint(0, 4, (b,), generator=g),
                    "index": torch.arange(start, start + b)})
        start += b
    return out


class _Loader:
    def __init__(self, batches: list[dict]):
        self.batches, self.dataset = batches, range(sum(len(b["label"]) for b in batches))

    def __iter__(self):
        return iter(self.batches)


@pytest.fixture
def staging(monkeypatch):
    _StagingPool.pools = []
    monkeypatch.setattr(gradients, "_PinnedBuffers", _StagingPool)
    return _StagingPool.pools


def _reference(model: nn.Module, batches: list[dict]) -> np.ndarray:
    eng = PerSampleGradients("last_layer", progress=False)
    params, plan = eng.prepare(model)
    with torch.no_grad():
        return torch.cat([eng.compress_batch(model, b, params, plan) for b in batches]).float().numpy()


def test_gather_through_reused_buffers_gives_the_rows_bit_for_bit(staging):
    model, batches = _Model(), _batches()
    ref = _reference(model, batches)
    got = PerSampleGradients("last_layer", progress=False).gather(model, _Loader(batches))
    assert got.grads.dtype == np.float32 and np.array_equal(got.grads, ref)
    assert got.index.tolist() == list(range(14))
    assert got.labels.tolist() == torch.cat([b["label"] for b in batches]).tolist()
    (pool,) = staging
    # 2 turns x 3 slots (gradients, index, labels), allocated for the first two batches; the short last batch
    # (turn 1 again) gets views of turn 1's buffers, nothing new
    assert sorted((k[0], k[1]) for k in pool.allocated) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [h[0] for h in pool.handed[::3]] == [0, 1, 0, 1] and pool.handed[-3] == (1, 0, (2, 20 + 4))
    assert pool.unread == set()  # every turn was read and released


def test_the_store_path_keeps_copies_of_the_reused_buffers(staging, tmp_path):
    """store.append keeps the arrays until its shard is written: they must not be the buffers of later batches."""
    model, batches = _Model(), _batches()
    ref = _reference(model, batches)
    store = GradientStore(tmp_path / "store", batches_per_shard=3)  # a shard holds batches of both turns
    got = PerSampleGradients("last_layer", progress=False).gather(model, _Loader(batches), store=store)
    assert np.array_equal(np.asarray(got.grads), ref) and got.index.tolist() == list(range(14))


def test_a_turn_is_handed_out_again_only_after_its_batch_was_read():
    pool = _StagingPool(depth=2)
    first = _HostCopy([torch.arange(6.0).reshape(3, 2), torch.arange(3)], pool)
    second = _HostCopy([torch.ones(3, 2), torch.zeros(3, dtype=torch.long)], pool)
    with pytest.raises(RuntimeError, match="handed out again before the batch copied into them was read"):
        _HostCopy([torch.full((3, 2), 7.0), torch.arange(3)], pool)
    g, ix = first.arrays()
    assert g.tolist() == [[0, 1], [2, 3], [4, 5]] and ix.tolist() == [0, 1, 2]
    first.release()
    third = _HostCopy([torch.full((2, 2), 7.0), torch.arange(2)], pool)  # a short batch into turn 0
    assert third.turn == first.turn == 0 and second.turn == 1
    assert third.tensors[0].data_ptr() == first.tensors[0].data_ptr()  # the same buffer, its first rows
    assert third.arrays()[0].tolist() == [[7, 7], [7, 7]]
    assert g.tolist()[:2] == [[7, 7], [7, 7]]  # first's views now show the new batch: why release waits for reads


def test_host_tensors_pass_through_the_real_pool_unstaged():
    pool = _PinnedBuffers(depth=2)
    t = torch.arange(4.0)
    copy = _HostCopy([t], pool)
    assert copy.event is None and pool.buffers == {} and copy.arrays()[0].tolist() == [0, 1, 2, 3]
    copy.release()
    assert pool.unread == set()


def test_prefaulted_rows_hold_exactly_the_rows_written():
    """The prefault thread touches pages ahead of the writer and never overwrites a written row, however the two
    threads interleave (tiny blocks force many hand-overs; the rows are written as fast as the writer can)."""
    from gradsift.attribution.gradients import _Prefault, _Rows

    rng = np.random.default_rng(0)
    n, dim, bs = 997, 1031, 7
    want = rng.standard_normal((n, dim)).astype(np.float32)
    rows = _Rows(n, dim=dim, prefault_bytes=0)
    assert isinstance(rows.prefault, _Prefault)
    rows.prefault.rows_per_block = 3
    for i in range(0, n, bs):
        rows.add(want[i:i + bs], np.arange(i, min(n, i + bs)), np.zeros(min(bs, n - i), dtype=np.int64))
    grads, index, _ = rows.result(dim)
    assert not rows.prefault.thread.is_alive()
    np.testing.assert_array_equal(grads, want)
    np.testing.assert_array_equal(index, np.arange(n))


def test_rows_without_prefault_and_with_fewer_rows_than_the_dataset():
    from gradsift.attribution.gradients import _Rows

    rows = _Rows(10, dim=3)  # far below the prefault threshold: no thread
    assert rows.prefault is None
    rows.add(np.ones((4, 3), np.float32), np.arange(4), np.zeros(4, np.int64))
    grads, index, _ = rows.result(3)
    assert grads.shape == (4, 3) and index.tolist() == [0, 1, 2, 3]
