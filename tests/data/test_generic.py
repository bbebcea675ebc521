"""The generic datamodule reads arrays, .npz, CSV, Parquet and a datasets folder the test writes itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradsift.data.generic import ArrayDataModule

N = 50


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    clean = np.arange(N) % 3
    label = clean.copy()
    label[[3, 7, 11]] = (label[[3, 7, 11]] + 1) % 3  # three flipped labels
    return pd.DataFrame({"f1": rng.normal(size=N), "f2": rng.normal(size=N), "y": label, "y_true": clean,
                         "id": np.arange(1000, 1000 + N)})


def test_csv_with_clean_labels_splits_with_the_seed_and_keeps_ids(tmp_path: Path) -> None:
    df = _frame()
    df.to_csv(tmp_path / "mine.csv", index=False)
    dm = ArrayDataModule(train=str(tmp_path / "mine.csv"), features=["f1", "f2"], label="y", clean_label="y_true",
                         index="id", val_fraction=0.1, test_fraction=0.2, seed=3)
    dm.setup()
    train, val, test = dm.train_set, dm.val_set, dm.test_set
    assert (len(train), len(val), len(test)) == (35, 5, 10) and dm.name == "mine"
    assert dm.num_classes == 3 and dm.n_features == 2 and dm.has_clean_labels and dm.has_noise_mask
    ids = np.concatenate([train.index, val.index, test.index])
    assert sorted(ids) == list(range(1000, 1000 + N))  # every row once, under its own id
    row = df.set_index("id").loc[int(train.index[0])]
    np.testing.assert_allclose(train.column("x")[0], [row.f1, row.f2], rtol=1e-6)
    flipped = {1003, 1007, 1011}
    assert set(train.index[dm.noise_mask]) == flipped & set(train.index)
    again = ArrayDataModule(train=str(tmp_path / "mine.csv"), features=["f1", "f2"], label="y", clean_label="y_true",
                            index="id", val_fraction=0.1, seed=3)
    again.setup()
    np.testing.assert_array_equal(again.test_set.index, test.index)


def test_no_clean_label_column_means_no_noise_mask(tmp_path: Path) -> None:
    _frame().to_parquet(tmp_path / "mine.parquet")
    dm = ArrayDataModule(train=str(tmp_path / "mine.parquet"), features=["f1", "f2"], label="y")
    dm.setup()
    assert not dm.has_clean_labels and not dm.has_noise_mask and dm.has_label_noise
    assert (dm.train_set.column("clean_label") == dm.train_set.column("label")).all()
    with pytest.raises(ValueError, match="clean labels are unknown"):
        dm.noise_mask


def test_npz_vector_column_and_string_labels(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.array(["cat", "dog"] * 10)
    np.savez(tmp_path / "train.npz", x=x, label=y)
    np.savez(tmp_path / "test.npz", x=x[:4], label=np.array(["dog", "dog", "cat", "dog"]))
    dm = ArrayDataModule(train=str(tmp_path / "train.npz"), test=str(tmp_path / "test.npz"), features="x",
                         standardize=True)
    dm.setup()
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2 and len(dm.train_set) == 20 and dm.val_set is None
    np.testing.assert_array_equal(dm.test_set.column("label"), [1, 1, 0, 1])
    xs = dm.train_set.column("x")
    np.testing.assert_allclose(xs.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(xs.std(0), 1, atol=1e-5)


def test_datasets_folder_with_its_own_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    df = _frame()
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"emb": [[a, b] for a, b in zip(df.f1, df.f2)][:40],
                                             "label": df.y[:40].tolist(), "clean": df.y_true[:40].tolist()}),
        "test": datasets.Dataset.from_dict({"emb": [[a, b] for a, b in zip(df.f1, df.f2)][40:],
                                            "label": df.y[40:].tolist(), "clean": df.y_true[40:].tolist()}),
    })
    dd.save_to_disk(str(tmp_path / "hf"))
    dm = ArrayDataModule(train=str(tmp_path / "hf"), features="emb", clean_label="clean", test_fraction=0.0)
    dm.setup()
    assert (len(dm.train_set), len(dm.test_set)) == (40, 10) and dm.n_features == 2
    np.testing.assert_allclose(dm.train_set.column("x")[:, 0], df.f1[:40], rtol=1e-6)
    assert int(dm.noise_mask.sum()) == 3


def test_in_memory_arrays_and_errors_that_name_the_key() -> None:
    arrays = {"x": np.zeros((10, 3)), "label": np.arange(10) % 2}
    dm = ArrayDataModule(train=arrays, test_fraction=0.3)
    dm.setup()
    assert (len(dm.train_set), len(dm.test_set), dm.name) == (7, 3, "arrays")
    # clean labels for the training split only: the test file's labels are taken as clean
    known = ArrayDataModule(train={**arrays, "true": 1 - arrays["label"]}, test=arrays, clean_label="true")
    known.setup()
    assert known.noise_mask.all() and (known.test_set.column("clean_label") == arrays["label"]).all()
    with pytest.raises(ValueError, match=r"data.label='y' is not a column of data.train \(columns: x, label\)"):
        ArrayDataModule(train=arrays, label="y").setup()
    with pytest.raises(ValueError, match="no test split"):
        ArrayDataModule(train=arrays, test_fraction=0.0).setup()
    with pytest.raises(ValueError, match="data.train is not set"):
        ArrayDataModule().setup()
    with pytest.raises(ValueError, match="data.test_fraction=1.5"):
        ArrayDataModule(train=arrays, test_fraction=1.5)
