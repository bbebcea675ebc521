"""A user's own data as a gradsift datamodule: numpy arrays, ``.npz``, CSV, Parquet or a ``datasets`` folder.

    python experiments/run.py data=generic data.train=my.csv data.label=y data.features=[f1,f2] \
        model=torch_module 'model.module._args_.0.in_features=2' trim=fraction trim.fraction=0.05

Every item is ``{"x": features, "label", "clean_label", "index"}`` (see :mod:`gradsift.data.base`). Without a
clean-label column the clean labels are unknown: the datamodule says so (``has_clean_labels = False``), so a run
reports no detection metrics and refuses ``trim.budget=n_noisy``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsift.data.base import DictDataset, MissingInputError, NoisyLabelDataModule

log = logging.getLogger(__name__)

#: file suffixes read as one table
TABLE_SUFFIXES = (".npz", ".csv", ".parquet", ".pq")
#: split names of a ``datasets.DatasetDict`` used for val / test when those are not given
VAL_SPLITS, TEST_SPLITS = ("validation", "val", "valid"), ("test",)

Columns = dict[str, np.ndarray]


def read_source(source: Any, key: str) -> dict[str, Columns]:
    """``{split: {column: array}}`` from a file, a ``save_to_disk`` folder, a mapping of arrays or a DataFrame.

    One split named ``""`` except for a ``datasets.DatasetDict`` folder, which gives each of its splits.
    ``key`` (``data.train`` ...) names the config key in errors.
    """
    if isinstance(source, Mapping):
        return {"": {str(k): np.asarray(v) for k, v in source.items()}}
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        return {"": {str(c): source[c].to_numpy() for c in source.columns}}
    path = Path(str(source))
    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise ValueError(f"{key}={source}: a folder must be a datasets save_to_disk folder ({e})") from None
        splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
        return {name: {c: np.asarray(ds.with_format("numpy")[c]) for c in ds.column_names}
                for name, ds in splits.items()}
    if not path.is_file():
        raise FileNotFoundError(f"{key}={source}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {"": {k: z[k] for k in z.files}}
    if suffix in (".csv", ".parquet", ".pq"):
        import pandas as pd

        df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        return {"": {str(c): df[c].to_numpy() for c in df.columns}}
    raise ValueError(f"{key}={source}: expected one of {', '.join(TABLE_SUFFIXES)} or a datasets save_to_disk folder")


class ArrayDataModule(NoisyLabelDataModule):
    """Train / val / test splits from a user's own arrays or files; features become the ``x`` the models read.

    Args:
        train: the training split: a ``.npz`` / ``.csv`` / ``.parquet`` file, a folder saved with
            ``datasets``' ``save_to_disk`` (a ``DatasetDict`` gives its ``train`` split, and its ``validation`` /
            ``test`` splits where ``val`` / ``test`` are not given), a mapping of column -> array, or a DataFrame.
        val: the validation split in the same forms; None = ``val_fraction`` of ``train`` (seeded).
        test: the test split; None = ``test_fraction`` of ``train`` (seeded). The pipeline needs one.
        features: the input column, or a list of columns concatenated in order; a column may hold vectors (an
            ``.npz`` array of shape [n, d], a list column). None = every column but label / clean label / index.
        label: the column the model is trained on (possibly noisy labels).
        clean_label: the column with the true labels, where known (e.g. a re-annotation). None = unknown: no noise
            mask, so no detection metrics and no ``trim.budget=n_noisy``. A val / test split without it is scored
            on its ``label``.
        index: a column of unique integer sample ids; None = the row number in the split's source.
        val_fraction: share of ``train`` held out as validation when ``val`` is None.
        test_fraction: share of ``train`` held out as test when ``test`` is None.
        num_classes: None = from the labels (integers 0..C-1 as given; any other labels are mapped to 0..C-1
            in sorted order, kept in :attr:`classes`).
        standardize: scale each feature to mean 0, std 1 on the training split.
        name: the dataset name results record; None = the training file's stem.
    """

    def __init__(self, train: Any = None, val: Any = None, test: Any = None,
                 features: str | Sequence[str] | None = None, label: str = "label", clean_label: str | None = None,
                 index: str | None = None, val_fraction: float = 0.0, test_fraction: float = 0.2,
                 num_classes: int | None = None, standardize: bool = False, batch_size: int = 128,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0, keep=None,
                 name: str | None = None, drop_last: bool = False):
        if name is None:
            name = Path(str(train)).stem if isinstance(train, (str, Path)) else "arrays"
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed,
                         keep=keep, name=name, drop_last=drop_last)
        for key, frac in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
            if not 0 <= frac < 1:
                raise ValueError(f"{key}={frac}; expected a share in [0, 1)")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction}: nothing "
                             "would be left to train on")
        self.sources = {"train": train, "val": val, "test": test}
        self.features = [features] if isinstance(features, str) else (None if features is None else list(features))
        self.label, self.clean_label, self.index_column = label, clean_label, index
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_classes = num_classes
        self.standardize = standardize
        self.has_clean_labels = clean_label is not None
        self.classes: list | None = None
        self.n_features: int | None = None

    def check(self) -> None:
        """Each split given as a path must exist (a file, or a ``save_to_disk`` folder)."""
        for split, source in self.sources.items():
            if isinstance(source, (str, Path)) and not Path(source).exists():
                raise MissingInputError(f"data.{split}={source}: no such file or folder (expected a "
                                        f"{', '.join(TABLE_SUFFIXES)} file or a datasets save_to_disk folder)")

    # -- reading ----------------------------------------------------------------------------------
    def _splits(self) -> dict[str, tuple[Columns, str]]:
        """Each given split's columns and the config key it came from."""
        if self.sources["train"] is None:
            raise ValueError("data.train is not set: give a .npz/.csv/.parquet file, a datasets folder or arrays")
        read = read_source(self.sources["train"], "data.train")
        out = {}
        if "" in read:
            out["train"] = (read[""], "data.train")
        elif "train" in read:
            out["train"] = (read["train"], "data.train")
        else:
            raise ValueError(f"data.train={self.sources['train']}: a DatasetDict without a 'train' split "
                             f"(has {sorted(read)})")
        for split, names in (("val", VAL_SPLITS), ("test", TEST_SPLITS)):
            key = f"data.{split}"
            if self.sources[split] is not None:
                given = read_source(self.sources[split], key)
                if len(given) != 1:
                    raise ValueError(f"{key}={self.sources[split]}: expected one split, got {sorted(given)}")
                out[split] = (next(iter(given.values())), key)
            else:
                found = next((n for n in names if n in read), None)
                if found is not None:
                    out[split] = (read[found], f"data.train[{found}]")
        return out

    def _column(self, cols: Columns, name: str, key: str, where: str) -> np.ndarray:
        if name not in cols:
            raise ValueError(f"{key}={name!r} is not a column of {where} (columns: {', '.join(cols)})")
        return cols[name]

    def _features(self, cols: Columns, where: str) -> np.ndarray:
        names = self.features
        if names is None:
            taken = {self.label, self.clean_label, self.index_column}
            names = [c for c in cols if c not in taken]
            if not names:
                raise ValueError(f"{where} has no feature columns besides the label (data.features)")
        parts = []
        for n in names:
            v = self._column(cols, n, "data.features", where)
            if v.dtype == object:  # a list column read as an array of arrays
                v = np.stack(v)
            if not np.issubdtype(v.dtype, np.number) and v.dtype != bool:
                raise ValueError(f"data.features column {n!r} of {where} is not numeric (dtype {v.dtype})")
            parts.append(v.reshape(len(v), -1).astype(np.float32))
        x = np.concatenate(parts, axis=1)
        if not np.isfinite(x).all():
            raise ValueError(f"data.features of {where} have missing or infinite values")
        return x

    def _rows(self, cols: Columns, key: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(features, label, clean label, index) of one split, labels still raw. An evaluation split without the
        clean-label column is scored on its labels (taken as clean)."""
        x = self._features(cols, key)
        y = self._column(cols, self.label, "data.label", key)
        if self.clean_label and (split == "train" or self.clean_label in cols):
            clean = self._column(cols, self.clean_label, "data.clean_label", key)
        else:
            clean = y
        if self.index_column:
            ix = self._column(cols, self.index_column, "data.index", key)
            if not np.issubdtype(ix.dtype, np.integer) or len(np.unique(ix)) != len(ix):
                raise ValueError(f"data.index={self.index_column!r} of {key} must hold unique integers")
        else:
            ix = np.arange(len(y))
        return x, y, clean, np.asarray(ix, dtype=np.int64)

    def _encode(self, labels: list[np.ndarray]) -> list[np.ndarray]:
        """Labels as int64 0..C-1: integer labels as given, any other kind mapped in sorted order (:attr:`classes`)."""
        flat = np.concatenate(labels)
        integral = np.issubdtype(flat.dtype, np.integer) or (
            np.issubdtype(flat.dtype, np.floating) and bool(np.all(np.mod(flat, 1) == 0)))
        if integral and flat.min() >= 0:
            codes, found = flat.astype(np.int64), int(flat.max()) + 1
        else:
            classes, codes = np.unique(flat.astype(str) if flat.dtype == object else flat, return_inverse=True)
            self.classes, found = classes.tolist(), len(classes)
        if self.num_classes is None:
            self.num_classes = found
        elif found > self.num_classes:
            raise ValueError(f"data.num_classes={self.num_classes} but the labels have {found} classes")
        return np.split(codes.astype(np.int64), np.cumsum([len(v) for v in labels])[:-1])

    # -- building ---------------------------------------------------------------------------------
    def build(self) -> tuple[DictDataset, DictDataset | None, DictDataset]:
        splits = {name: self._rows(cols, key, name) for name, (cols, key) in self._splits().items()}
        train = splits["train"]
        n = len(train[1])
        order = np.random.default_rng(self.seed).permutation(n)
        n_test = 0 if "test" in splits else int(round(self.test_fraction * n))
        n_val = 0 if "val" in splits else int(round(self.val_fraction * n))
        if "test" not in splits and n_test == 0:
            raise ValueError("no test split: set data.test, or data.test_fraction > 0 (the runs report test metrics)")
        held = {"test": order[:n_test], "val": order[n_test:n_test + n_val]}
        for name, rows in held.items():
            if len(rows):
                splits[name] = tuple(a[rows] for a in train)
        splits["train"] = tuple(a[np.sort(order[n_test + n_val:])] for a in train)
        names = list(splits)
        encoded = self._encode([splits[s][1] for s in names] + [splits[s][2] for s in names])
        k = len(names)
        label = dict(zip(names, encoded[:k]))
        clean = dict(zip(names, encoded[k:]))
        if self.standardize:
            mu, sd = splits["train"][0].mean(0), splits["train"][0].std(0)
            sd[sd == 0] = 1.0
        self.n_features = splits["train"][0].shape[1]
        if not self.has_clean_labels:
            log.info("%s: no data.clean_label column, so clean labels are unknown: no noise mask, no detection "
                     "metrics, and trim.budget=n_noisy is refused", self.name)

        def dataset(s: str) -> DictDataset:
            x = splits[s][0]
            if self.standardize:
                x = (x - mu) / sd
            return DictDataset({"x": torch.tensor(x, dtype=torch.float32),
                                "label": torch.tensor(label[s]), "clean_label": torch.tensor(clean[s])},
                               index=splits[s][3])

        return dataset("train"), dataset("val") if "val" in splits else None, dataset("test")
