"""The OGA paper's synthetic sets (Section 4, Appendix B.1.1): linear blobs, half-moons, and the authors' toy set.

Blobs: ``make_blobs``, 150 train / 100 test, 10 flipped training labels (5 per class), for logistic regression.
Moons: ``make_moons``, 250 train / 100 test, 20 flipped training labels (10 per class), for the MLP.
Toy: the authors' own 150-point linear set with its 10 known flipped points (``oga-toy/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import make_blobs, make_moons
from sklearn.preprocessing import StandardScaler

from gradsift.data.base import DictDataset, MissingInputError, NoisyLabelDataModule, flip_labels


def _columns(x: np.ndarray, y: np.ndarray, clean: np.ndarray) -> dict:
    return {"x": torch.tensor(np.asarray(x), dtype=torch.float32), "label": torch.tensor(np.asarray(y), dtype=torch.long),
            "clean_label": torch.tensor(np.asarray(clean), dtype=torch.long)}


class _Synthetic2D(NoisyLabelDataModule):
    """Generated 2-D binary data: train/test drawn together, standardized on train, train labels flipped per class."""

    def __init__(self, n_train: int, n_test: int, flips_per_class: int, noise: float, batch_size: int = 0,
                 seed: int = 0, keep=None, **kw):
        # batch_size 0 = full batch (the sets are tiny; full-batch training is deterministic and fast)
        super().__init__(batch_size=batch_size or n_train, eval_batch_size=max(n_train, n_test), seed=seed,
                         keep=keep, **kw)
        self.n_train, self.n_test, self.flips_per_class, self.noise = n_train, n_test, flips_per_class, noise

    def generate(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def build(self):
        x, y = self.generate(self.n_train + self.n_test)
        xtr, ytr, xte, yte = x[: self.n_train], y[: self.n_train], x[self.n_train :], y[self.n_train :]
        scaler = StandardScaler().fit(xtr)
        xtr, xte = scaler.transform(xtr), scaler.transform(xte)
        noisy, _ = flip_labels(ytr, per_class=self.flips_per_class, seed=self.seed)
        return DictDataset(_columns(xtr, noisy, ytr)), None, DictDataset(_columns(xte, yte, yte))


class MoonsDataModule(_Synthetic2D):
    """Two half-moons, 250 train (20 flipped, 10 per class) / 100 test (Figure 1 E-H, Table 1)."""

    def __init__(self, n_train: int = 250, n_test: int = 100, flips_per_class: int = 10, noise: float = 0.2, **kw):
        super().__init__(n_train, n_test, flips_per_class, noise, **kw)

    def generate(self, n: int):
        """``n`` points of scikit-learn's two half-moons."""
        return make_moons(n_samples=n, noise=self.noise, random_state=self.seed)


class BlobsDataModule(_Synthetic2D):
    """Two linearly separable blobs, 150 train (10 flipped, 5 per class) / 100 test (Figure 1 A-D)."""

    def __init__(self, n_train: int = 150, n_test: int = 100, flips_per_class: int = 5, noise: float = 1.5, **kw):
        super().__init__(n_train, n_test, flips_per_class, noise, **kw)

    def generate(self, n: int):
        """``n`` points of scikit-learn's blobs."""
        return make_blobs(n_samples=n, centers=2, cluster_std=self.noise, random_state=self.seed)


class OGAToyDataModule(NoisyLabelDataModule):
    """The authors' linear toy set (``oga-toy/``): 150 train points, the 10 rows of ``idx_val.csv`` flipped.

    ``train.csv`` holds the flipped labels; ``train_unflipped_infdatasel.csv`` the originals; the SEX column
    is dropped as the OGA code does. Features are standardized on the training set.
    """

    def __init__(self, data_dir: str, batch_size: int = 0, seed: int = 0, keep=None, **kw):
        super().__init__(batch_size=batch_size or 150, eval_batch_size=150, seed=seed, keep=keep, **kw)
        self.data_dir = Path(data_dir)

    def check(self) -> None:
        """The three CSV files of the toy set must be in ``data_dir``."""
        missing = [n for n in ("train.csv", "train_unflipped_infdatasel.csv", "test.csv")
                   if not (self.data_dir / n).is_file()]
        if missing:
            raise MissingInputError(f"data.data_dir={self.data_dir}: expected {', '.join(missing)} of the OGA toy "
                                    "set there (see ../shared/data/SOURCES.md, folder oga-toy/)")

    def _read(self, name: str) -> pd.DataFrame:
        path = self.data_dir / name
        if not path.exists():
            raise FileNotFoundError(f"data.data_dir={self.data_dir}: expected {name} of the OGA toy set there "
                                    "(see ../shared/data/SOURCES.md, folder oga-toy/)")
        df = pd.read_csv(path, header=None, names=["FEATURE1", "FEATURE2", "SEX", "TARGET"])
        df["y"] = (df["TARGET"].str.strip() == "Y").astype(np.int64)
        return df

    def build(self):
        """The authors' toy set from ``data_dir``, its flipped labels as ``label``."""
        train, clean, test = self._read("train.csv"), self._read("train_unflipped_infdatasel.csv"), self._read("test.csv")
        cols = ["FEATURE1", "FEATURE2"]
        if not np.allclose(train[cols].to_numpy(), clean[cols].to_numpy()):
            raise ValueError(f"{self.data_dir}: train.csv and train_unflipped_infdatasel.csv list different points")
        scaler = StandardScaler().fit(train[cols].to_numpy())
        xtr, xte = scaler.transform(train[cols].to_numpy()), scaler.transform(test[cols].to_numpy())
        return (DictDataset(_columns(xtr, train["y"].to_numpy(), clean["y"].to_numpy())), None,
                DictDataset(_columns(xte, test["y"].to_numpy(), test["y"].to_numpy())))
