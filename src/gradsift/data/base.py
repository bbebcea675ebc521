"""What every gradsift datamodule provides: items that carry their index, given label and clean label.

A batch is a dict. Keys every datamodule fills:
  ``index``        int64 [B]  position of the sample in its split (stable across subsetting)
  ``label``        int64 [B]  the label the model is trained on (possibly noisy)
  ``clean_label``  int64 [B]  the true label where known (equal to ``label`` where unknown; a datamodule whose
                              clean labels are unknown says so with ``has_clean_labels = False``)
plus the model's inputs under keys the matching model reads (``x`` for tensors, ``input_ids`` ... for text).
"""

from __future__ import annotations

import copy
import logging

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


class MissingInputError(FileNotFoundError):
    """A file or folder that the config names is not there.

    Its message is one line naming the config key (``data.data_dir=...``) and what was expected; raised by
    :meth:`NoisyLabelDataModule.check` before anything slow runs.
    """


class DictDataset(Dataset):
    """Rows of named arrays; item ``i`` is ``{key: array[i]}`` plus ``index``."""

    def __init__(self, columns: Mapping[str, Any], index: np.ndarray | None = None,
                 transform: Callable[[dict], dict] | None = None):
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"DictDataset columns have different lengths: {lengths}")
        self.columns = dict(columns)
        n = next(iter(lengths.values()))
        self.index = np.arange(n) if index is None else np.asarray(index)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.columns.items()}
        item["index"] = int(self.index[i])
        return self.transform(item) if self.transform else item

    def __getitems__(self, rows: list[int]) -> dict | list[dict]:
        """Batched fetch (used by DataLoader): slice tensor columns at once instead of collating item by item."""
        if self.transform is not None or not all(isinstance(v, torch.Tensor) for v in self.columns.values()):
            return [self[i] for i in rows]
        t = torch.as_tensor(rows, dtype=torch.long)
        batch = {k: v[t] for k, v in self.columns.items()}
        batch["index"] = torch.as_tensor(self.index[rows], dtype=torch.long)
        return batch

    def column(self, key: str) -> np.ndarray:
        """One column as a host numpy array (columns may live on the GPU)."""
        v = self.columns[key]
        return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    def positions(self, indices: Sequence[int]) -> np.ndarray:
        """Row positions of the given sample indices (IndexError naming those that are not in this dataset)."""
        pos = {int(ix): p for p, ix in enumerate(self.index)}
        missing = [int(i) for i in indices if int(i) not in pos]
        if missing:
            raise IndexError(f"{len(missing)} sample indices are not in this split, e.g. {missing[:5]}")
        return np.array([pos[int(i)] for i in indices], dtype=np.int64)

    def subset(self, rows: Sequence[int]) -> "DictDataset":
        """The same dataset restricted to ``rows`` (positions), keeping each row's original ``index``."""
        rows = np.asarray(rows, dtype=np.int64)
        sub = copy.copy(self)  # keeps a subclass's type and settings (normalization, augmentation, device)
        sub.columns = {k: (v[torch.as_tensor(rows, device=v.device)] if isinstance(v, torch.Tensor)
                           else v[rows] if isinstance(v, np.ndarray) else [v[r] for r in rows])
                       for k, v in self.columns.items()}
        sub.index = self.index[rows]
        return sub


class NoisyLabelDataModule(pl.LightningDataModule):
    """Base datamodule: train/val/test ``DictDataset``s with a known noise mask on the training split.

    Subclasses implement :meth:`build` returning ``(train, val, test)``; ``val`` may be ``None``.
    ``keep`` restricts the training split to the given original indices (used to retrain after trimming).
    """

    num_classes: int = 2
    #: False where items carry no class labels (causal-LM corpora): label-noise detection metrics
    #: (precision, recall, detection AUC against the noise mask) mean nothing there and are not reported
    has_label_noise: bool = True
    #: False where the training split's clean labels are unknown (a user's own data without a clean-label column):
    #: ``clean_label`` repeats ``label``, so there is no noise mask, ``trim.budget=n_noisy`` is refused and no
    #: detection metrics are reported
    has_clean_labels: bool = True

    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 seed: int = 0, keep: Sequence[int] | None = None, name: str | None = None, drop_last: bool = False):
        super().__init__()
        self.name = name or type(self).__name__
        self.batch_size = batch_size
        #: drop each epoch's short last training batch (``data.drop_last``; the ffcv / TRAK ResNet-9 loaders do).
        #: A trimmed training split can end on a batch of a few samples, whose BatchNorm statistics and step at a
        #: high learning rate cost test accuracy: 4,585 - 229 rows at batch 128 end on 4 samples (docs/STATUS.md)
        self.drop_last = bool(drop_last)
        self._warned_short_batch = False
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.keep = None if keep is None else np.asarray(keep, dtype=np.int64)
        self.train_set: DictDataset | None = None
        self.full_train_set: DictDataset | None = None
        self.val_set: DictDataset | None = None
        self.test_set: DictDataset | None = None

    # -- subclasses -------------------------------------------------------------------------------
    def build(self) -> tuple[DictDataset, DictDataset | None, DictDataset]:
        """The ``(train, val, test)`` datasets, ``val`` possibly None; subclasses implement it."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`MissingInputError` when an input this datamodule reads is missing.

        Cheap (no reading, no download), so a run fails at once rather than after imports and downloads.
        :meth:`setup` calls it first; the base class reads no files.
        """

    # -- lightning --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Check the inputs, build the splits once; with ``keep``, restrict the training split to it."""
        if self.full_train_set is not None:
            return
        self.check()
        self.full_train_set, self.val_set, self.test_set = self.build()
        if len(self.full_train_set) == 0:
            raise ValueError(f"{type(self).__name__}: the training split is empty")
        self.train_set = self.full_train_set
        if self.keep is not None:
            self.train_set = self.restrict(self.keep)

    def restrict(self, keep: Sequence[int]) -> DictDataset:
        """Training split restricted to the original sample indices in ``keep``."""
        keep = np.asarray(keep, dtype=np.int64)
        try:
            rows = self.full_train_set.positions(keep)
        except IndexError as e:
            raise IndexError(f"keep lists indices not in the training split: {e}") from None
        if len(keep) == 0:
            raise ValueError("keep is empty: trimming removed every training sample")
        return self.full_train_set.subset(rows)

    def with_keep(self, keep: Sequence[int]) -> "NoisyLabelDataModule":
        """A datamodule over the same data whose training split is ``keep`` (for retraining)."""
        self.setup()
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.keep = np.asarray(keep, dtype=np.int64)
        clone.train_set = self.restrict(clone.keep)
        return clone

    def _loader(self, ds: Dataset | None, shuffle: bool, batch_size: int, drop_last: bool = False
                ) -> DataLoader | None:
        if ds is None:
            return None
        # a generator also when unshuffled: an iterator of a loader without one draws its base seed from the global
        # RNG, which would move the weight init of a training in another thread (gradsift.parallel) and every
        # dropout draw after a test pass
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=self.collate, generator=gen, drop_last=drop_last,
                          persistent_workers=self.num_workers > 0)

    def collate(self, items: list[dict] | dict) -> dict:
        """One dict batch from items (a batch that ``DictDataset.__getitems__`` already built passes through)."""
        if isinstance(items, dict):  # already batched by DictDataset.__getitems__
            return items
        return torch.utils.data.default_collate(items)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded); without the short last one with ``drop_last``."""
        self.check_last_batch()
        return self._loader(self.train_set, True, self.batch_size, drop_last=self.drop_last)

    def check_last_batch(self) -> int:
        """The training split's last-batch size (0 when it divides evenly or with ``drop_last``).

        Warns once when it is below an eighth of the batch size, where one step on it can move a BatchNorm model far.
        """
        n = len(self.train_set)
        rest = 0 if self.drop_last else n % self.batch_size
        if 0 < rest < max(2, self.batch_size // 8) and not self._warned_short_batch:
            self._warned_short_batch = True
            log.warning("data: the training split's %d rows end each epoch on a batch of %d (data.batch_size=%d); a "
                        "step on so few samples can cost a BatchNorm model points of test accuracy, and trimmed "
                        "retrains of one budget all share it. data.drop_last=true (+data.drop_last=true where the data config "
                        "does not list it) drops it", n, rest, self.batch_size)
        return rest

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches, or an empty list without a validation split."""
        return self._loader(self.val_set, False, self.eval_batch_size) or []

    def test_dataloader(self) -> DataLoader:
        """Test batches, unshuffled."""
        return self._loader(self.test_set, False, self.eval_batch_size)

    def attribution_dataloader(self, split: str = "train") -> DataLoader:
        """Deterministic, unshuffled, un-augmented loader over a split, for gathering gradients."""
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        if ds is None:
            raise ValueError(f"{type(self).__name__} has no '{split}' split")
        return self._loader(ds, False, self.eval_batch_size)

    # -- noise ------------------------------------------------------------------------------------
    @property
    def has_noise_mask(self) -> bool:
        """Whether :attr:`noise_mask` means anything: class labels with known clean labels."""
        return bool(self.has_label_noise and self.has_clean_labels)

    @property
    def noise_mask(self) -> np.ndarray:
        """Boolean [n_train]: True where the given label differs from the clean label (current train split)."""
        if not self.has_clean_labels:
            raise ValueError(f"{self.name}: clean labels are unknown, so there is no noise mask")
        self.setup()
        return self.train_set.column("label") != self.train_set.column("clean_label")


def flip_labels(labels: np.ndarray, per_class: int | Mapping[int, int] | None = None, fraction: float | None = None,
                num_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flip labels of a seeded random subset: ``per_class`` samples of each class, or a ``fraction`` overall.

    Binary labels are flipped; with more classes a flipped label moves to a random other class.
    Returns ``(noisy_labels, flipped_mask)``.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if per_class is not None:
        chosen = []
        for c in range(num_classes):
            k = per_class[c] if isinstance(per_class, Mapping) else per_class
            members = np.flatnonzero(labels == c)
            if k > len(members):
                raise ValueError(f"cannot flip {k} labels of class {c}: it has {len(members)} samples")
            chosen.append(rng.choice(members, size=k, replace=False))
        flip = np.concatenate(chosen)
    elif fraction is not None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"noise fraction must be in [0, 1], got {fraction}")
        flip = rng.choice(n, size=int(round(fraction * n)), replace=False)
    else:
        raise ValueError("flip_labels needs per_class or fraction")
    noisy = labels.copy()
    if num_classes == 2:
        noisy[flip] = 1 - noisy[flip]
    else:
        noisy[flip] = (noisy[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    mask = np.zeros(n, dtype=bool)
    mask[flip] = True
    return noisy, mask
