"""Training batches of a dataset that already lives on the accelerator, made there without waiting for the host.

:class:`ResidentBatches` yields the same batches as ``DataLoader(dataset, batch_size, shuffle, generator=...)``
followed by the augmenting collate of :mod:`gradsift.data.cifar_n`: the order comes from a ``DataLoader`` over
row positions with the same sampler arguments, and the crop offsets and flips from the same seeded host generator
in the same order (:meth:`gradsift.data.augment.Augment.draw`), so both paths consume their generators identically
and give bit-identical batches. What differs is where the work happens: each step sends its positions and random
numbers to the device in one non-blocking copy (from pinned memory), then gathers the rows, crops, flips and
normalises there. No step reads anything back, so the host can queue steps ahead of the device. Lightning accepts
it as a training loader (an iterable with ``__len__``); a retrain on kept samples passes the restricted dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from gradsift.data.augment import Augment, Normalize


class _Positions(Dataset):
    """Row positions ``0..n-1``; a batch of positions is one int64 tensor."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, rows: list[int]) -> torch.Tensor:
        return torch.as_tensor(rows, dtype=torch.long)


def _keep(batch: torch.Tensor) -> torch.Tensor:
    return batch


class ResidentBatches:
    """Batches of ``dataset`` (tensor ``columns`` on one device plus a host ``index``) gathered on that device.

    ``generator`` orders the rows when ``shuffle`` (as the DataLoader's sampler generator); ``augment`` with
    ``aug_generator`` crops and flips ``x``; ``normalize`` maps its uint8 pixels to floats. Items: every column,
    ``index`` (int64, on the device) and the augmented, normalised ``x``.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 normalize: Normalize, augment: Augment | None = None, aug_generator: torch.Generator | None = None,
                 drop_last: bool = False):
        if augment is not None and aug_generator is None:
            raise ValueError("ResidentBatches: augment needs aug_generator")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.normalize, self.augment, self.aug_generator = normalize, augment, aug_generator
        self.device = dataset.columns["x"].device
        # a generator also when unshuffled, so that iterating never draws from the global RNG
        self._positions = DataLoader(_Positions(len(dataset)), batch_size=batch_size, shuffle=shuffle,
                                     generator=generator if shuffle else torch.Generator(),
                                     collate_fn=_keep, drop_last=drop_last)
        self._index = torch.as_tensor(dataset.index, dtype=torch.long).to(self.device)

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self) -> Iterator[dict]:
        cols = self.dataset.columns
        for rows in self._positions:
            host = [rows]
            if self.augment is not None:
                host += self.augment.draw(len(rows), self.aug_generator)
            packed = torch.stack(host)
            if self.device.type == "cuda":
                packed = packed.pin_memory()
            dev = packed.to(self.device, non_blocking=True)
            pos = dev[0]
            batch = {k: v[pos] for k, v in cols.items()}
            batch["index"] = self._index[pos]
            x = batch["x"]
            if self.augment is not None:
                x = self.augment.apply(x, dev[1], dev[2], dev[3])
            batch["x"] = self.normalize(x).contiguous()  # the layout the DataLoader path gives
            yield batch
