"""Sharded, resumable on-disk storage of per-sample gradients (TRAK-style memory-mapped store).

Layout of a store directory::

    manifest-rank{r}.json          shards rank r has completed (+ dim, blocks, meta, world_size)
    rank{r}-{k:05d}.grads.npy      float32 [rows, dim] rows of shard k (index/labels in .index.npy/.labels.npy)
    grads.npy index.npy labels.npy the merged set in dataset order (after :meth:`GradientStore.finalize`)
    manifest.json                  written last by finalize: the store is complete

Every file is written to a temporary name and renamed (atomic on POSIX), and a shard exists for readers only
once the manifest lists it, so a killed run resumes from its last complete shard. Under DDP each rank writes
its own shards and manifest; rank 0's :meth:`finalize` merges all ranks in dataset order (rows sorted by the
``index`` column, duplicates from the sampler's padding dropped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gradsift.attribution.gradient_set import Block, GradientSet


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _blocks_json(blocks: list[Block]) -> list[list]:
    return [[b.name, int(b.start), int(b.stop)] for b in blocks]


class GradientStore:
    """Writer (one rank) and reader of a gradient store at ``root``; ``batches_per_shard`` batches per shard."""

    def __init__(self, root: str | os.PathLike, rank: int = 0, world_size: int = 1, batches_per_shard: int = 16):
        if not 0 <= rank < world_size:
            raise ValueError(f"store rank={rank} must be in [0, world_size={world_size})")
        self.root = Path(root)
        self.rank, self.world_size = int(rank), int(world_size)
        self.batches_per_shard = int(batches_per_shard)
        self._manifest: dict | None = None
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def manifest_path(self) -> Path:
        """This rank's manifest file."""
        return self.root / f"manifest-rank{self.rank}.json"

    # ---- writing ------------------------------------------------------------------------------------
    def open(self, dim: int, blocks: list[Block], meta: dict) -> int:
        """Start or resume writing; returns how many loader batches complete shards already hold."""
        self.root.mkdir(parents=True, exist_ok=True)
        header = {"dim": int(dim), "blocks": _blocks_json(blocks), "meta": json.loads(json.dumps(meta)),
                  "rank": self.rank, "world_size": self.world_size}
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            diff = [k for k in header if old.get(k) != header[k]]
            if diff:
                raise ValueError(f"gradient store {self.root} holds gradients of a different setup ({diff} differ); "
                                 "delete it or point the store at a new directory")
            self._manifest = old
        else:
            self._manifest = {**header, "shards": [], "complete": False}
            _atomic_save_json(self.manifest_path, self._manifest)
        self._buf = []
        return sum(s["batches"] for s in self._manifest["shards"])

    def append(self, grads: np.ndarray, index: np.ndarray, labels: np.ndarray) -> None:
        """Add one batch of rows; a shard is written every ``batches_per_shard`` batches."""
        if self._manifest is None:
            raise RuntimeError("GradientStore.append called before open()")
        self._buf.append((np.asarray(grads, dtype=np.float32), np.asarray(index, dtype=np.int64), np.asarray(labels)))
        if len(self._buf) >= self.batches_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        k = len(self._manifest["shards"])
        name = f"rank{self.rank}-{k:05d}"
        for part, arr in zip(("grads", "index", "labels"), zip(*self._buf)):
            _atomic_save_npy(self.root / f"{name}.{part}.npy", np.concatenate(arr))
        self._manifest["shards"].append({"name": name, "rows": int(sum(len(b[1]) for b in self._buf)),
                                         "batches": len(self._buf)})
        _atomic_save_json(self.manifest_path, self._manifest)
        self._buf = []

    def close(self) -> None:
        """Write the last partial shard and mark this rank complete; a single rank also finalizes."""
        self._flush()
        self._manifest["complete"] = True
        _atomic_save_json(self.manifest_path, self._manifest)
        if self.world_size == 1:
            self.finalize()

    def finalize(self) -> None:
        """Merge every rank's shards into ``grads.npy`` (memory-mapped, streamed shard by shard) in dataset order."""
        manifests = [self.root / f"manifest-rank{r}.json" for r in range(self.world_size)]
        missing = [str(p) for p in manifests if not p.exists() or not json.loads(p.read_text())["complete"]]
        if missing:
            raise RuntimeError(f"cannot merge gradient store {self.root}: ranks not complete: {missing}")
        mans = [json.loads(p.read_text()) for p in manifests]
        shards = [s["name"] for m in mans for s in m["shards"]]
        index = np.concatenate([np.load(self.root / f"{s}.index.npy") for s in shards]) if shards else np.empty(0, np.int64)
        # dataset order; stable sort keeps the first copy of an index that the DDP sampler repeated as padding
        order = np.argsort(index, kind="stable")
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = index[order][1:] != index[order][:-1]
        target = np.full(len(index), -1, dtype=np.int64)
        target[order[keep]] = np.arange(int(keep.sum()))
        n, dim = int(keep.sum()), mans[0]["dim"]
        tmp = self.root / ".tmp-grads.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        labels = None
        start = 0
        for s in shards:
            g = np.load(self.root / f"{s}.grads.npy", mmap_mode="r")
            lab = np.load(self.root / f"{s}.labels.npy")
            t = target[start:start + len(g)]
            sel = t >= 0
            out[t[sel]] = g[sel]
            if labels is None:
                labels = np.empty(n, dtype=lab.dtype)
            labels[t[sel]] = lab[sel]
            start += len(g)
        out.flush()
        del out
        os.replace(tmp, self.root / "grads.npy")
        _atomic_save_npy(self.root / "index.npy", index[order[keep]])
        _atomic_save_npy(self.root / "labels.npy", labels if labels is not None else np.empty(0, np.int64))
        _atomic_save_json(self.root / "manifest.json", {"dim": dim, "blocks": mans[0]["blocks"], "meta": mans[0]["meta"],
                                                          "rows": n, "world_size": self.world_size,
                                                          "shards": shards})

    # ---- reading ------------------------------------------------------------------------------------
    def gradient_set(self, mmap: bool = True) -> GradientSet:
        """The merged set (read-only memmap by default)."""
        man = self._final_manifest()
        grads = np.load(self.root / "grads.npy", mmap_mode="r" if mmap else None)
        return GradientSet(grads, np.load(self.root / "index.npy"), np.load(self.root / "labels.npy"),
                           blocks=[Block(*b) for b in man["blocks"]], meta=man["meta"])

    def iter_rows(self, rows: int = 4096) -> Iterator[GradientSet]:
        """Stream the merged set in blocks of ``rows`` rows (each a read-only memmap slice)."""
        full = self.gradient_set(mmap=True)
        for s in range(0, full.n, rows):
            sl = slice(s, s + rows)
            yield GradientSet(full.grads[sl], full.index[sl], full.labels[sl], blocks=full.blocks, meta=full.meta)

    def _final_manifest(self) -> dict:
        path = self.root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the gradient store is not complete (run gathering to the end, "
                                    "and finalize() on rank 0 under DDP)")
        return json.loads(path.read_text())
