"""Multi-process (DDP) gradient gathering through the sharded :class:`GradientStore`.

Each rank gathers the rows ``rank, rank + world_size, ...`` of the unshuffled attribution loader (the order of
``DistributedSampler(shuffle=False)``, but without its padding duplicates, so ranks may hold one row more or
less), writes them as rank-tagged shards with its own manifest, waits at a barrier, rank 0 merges every rank's
shards in dataset order (:meth:`GradientStore.finalize`), and after a second barrier every rank reads the
merged set. No collective runs during the gathering itself, so unequal shard sizes cannot dead-lock, and the
module is called directly (not through the DDP wrapper), so no gradient all-reduce is triggered.

This module imports no Lightning: :class:`gradsift.Attributor` passes the barrier / broadcast it is given
(:class:`gradsift.AttributionCallback` gives the strategy's); plain ``torch.distributed`` users get its defaults.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from gradsift.attribution.gradient_set import GradientSet
from gradsift.attribution.gradients import PerSampleGradients
from gradsift.attribution.store import GradientStore


class RankSlice(Sampler[int]):
    """Positions ``rank, rank + world_size, ...`` of a dataset of length ``n``.

    DistributedSampler's unshuffled split without padding (every position is gathered exactly once over all ranks).

    Args:
        n: the dataset's length.
        rank: this process's rank.
        world_size: the number of processes.
    """

    def __init__(self, n: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def rank_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """This rank's share of an unshuffled ``loader`` (same dataset, batch size, collate and workers)."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"distributed gathering needs a torch DataLoader, got {type(loader).__name__}")
    if loader.batch_size is None:
        raise ValueError("distributed gathering needs a DataLoader with a batch_size (not a custom batch_sampler)")
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=RankSlice(len(loader.dataset), rank, world_size),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=False, generator=torch.Generator())  # iterating draws nothing from the global RNG


def _dist_barrier() -> None:
    torch.distributed.barrier()


def _dist_broadcast(obj, src: int = 0):
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def torch_process_group() -> dict | None:
    """The ``dist`` argument of :meth:`gradsift.Attributor.gather` for an initialised ``torch.distributed`` group.

    Returns:
        ``{"rank", "world_size", "barrier", "broadcast"}`` when a group of several ranks exists (Lightning keeps the
        one of a DDP/FSDP fit), else None.
    """
    td = torch.distributed
    if not (td.is_available() and td.is_initialized() and td.get_world_size() > 1):
        return None
    return {"rank": td.get_rank(), "world_size": td.get_world_size(), "barrier": _dist_barrier,
            "broadcast": _dist_broadcast}


def gather_sharded(engine: PerSampleGradients, module: torch.nn.Module, loader: DataLoader, root: str | os.PathLike,
                   rank: int, world_size: int, barrier: Callable[[], None] = _dist_barrier,
                   desc: str = "gradients", batches_per_shard: int = 16, in_memory: bool = False) -> GradientSet:
    """Gather ``loader``'s per-sample gradients split over ``world_size`` ranks into the store at ``root``.

    Every rank must call it (same ``root``, a directory all ranks can reach). Returns the merged
    :class:`GradientSet` in dataset order on every rank (read-only memmap, or in memory with ``in_memory``).
    A store left by a killed run of the same setup resumes from each rank's last complete shard.
    """
    store = GradientStore(root, rank=rank, world_size=world_size, batches_per_shard=batches_per_shard)
    engine.gather(module, rank_loader(loader, rank, world_size) if world_size > 1 else loader, desc, store=store)
    if world_size > 1:
        barrier()  # every rank's manifest is complete
        if rank == 0:
            store.finalize()
        barrier()  # manifest.json is written
    gs = store.gradient_set(mmap=not in_memory)
    return gs


def gather_distributed(engine: PerSampleGradients, module: torch.nn.Module, loaders: dict[str, DataLoader],
                       rank: int, world_size: int, root: str | os.PathLike | None = None,
                       barrier: Callable[[], None] = _dist_barrier, broadcast: Callable = _dist_broadcast,
                       batches_per_shard: int = 16) -> dict[str, GradientSet]:
    """:func:`gather_sharded` for several splits (``{"train": loader, ...}``), one sub-store per split.

    With ``root=None`` a temporary directory made by rank 0 (its path broadcast to the others) holds the stores;
    the sets are then loaded into memory and the directory is removed. With a ``root`` the stores are kept (and
    resumed) and the sets are read-only memmaps of ``root/<split>/grads.npy``.
    """
    tmp = root is None
    if tmp:
        root = broadcast(tempfile.mkdtemp(prefix="gradsift-store-") if rank == 0 else None)
    out = {split: gather_sharded(engine, module, loader, Path(root) / split, rank, world_size, barrier,
                                 desc=f"{split} gradients (rank {rank}/{world_size})",
                                 batches_per_shard=batches_per_shard, in_memory=tmp)
           for split, loader in loaders.items()}
    if tmp:
        barrier()  # every rank has read the merged files
        if rank == 0:
            shutil.rmtree(root, ignore_errors=True)
    return out
