import numpy as np
import pytest

from gradsift.data.synthetic import BlobsDataModule, MoonsDataModule, OGAToyDataModule


@pytest.mark.parametrize("cls,n_train,n_test,per_class", [(MoonsDataModule, 250, 100, 10), (BlobsDataModule, 150, 100, 5)])
def test_paper_sizes_and_flips(cls, n_train, n_test, per_class):
    dm = cls(seed=3)
    dm.setup()
    assert len(dm.train_set) == n_train and len(dm.test_set) == n_test
    mask = dm.noise_mask
    clean = np.asarray(dm.train_set.columns["clean_label"])
    assert mask.sum() == 2 * per_class
    assert (np.bincount(clean[mask], minlength=2) == per_class).all()
    assert (np.asarray(dm.test_set.columns["label"]) == np.asarray(dm.test_set.columns["clean_label"])).all()
    dm2 = cls(seed=3)
    dm2.setup()
    assert (dm2.noise_mask == mask).all()


def test_items_carry_index_label_and_clean_label():
    dm = MoonsDataModule(seed=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert {"x", "label", "clean_label", "index"} <= set(batch)
    assert sorted(batch["index"].tolist()) == list(range(250))


def test_with_keep_restricts_training_split_and_keeps_indices():
    dm = MoonsDataModule(seed=0)
    keep = np.arange(0, 250, 2)
    sub = dm.with_keep(keep)
    assert len(sub.train_set) == 125 and (sub.train_set.index == keep).all()
    assert len(dm.train_set) == 250
    with pytest.raises(IndexError, match="not in the training split"):
        dm.with_keep([999])


def test_oga_toy_set_matches_the_authors_flips(shared_data):
    dm = OGAToyDataModule(data_dir=str(shared_data / "oga-toy"))
    dm.setup()
    assert len(dm.train_set) == 150 and len(dm.test_set) == 100
    assert dm.noise_mask.sum() == 10
    import pandas as pd

    flipped = pd.read_csv(shared_data / "oga-toy" / "idx_val.csv", header=None)
    train = pd.read_csv(shared_data / "oga-toy" / "train.csv", header=None)
    rows = {tuple(r) for r in flipped.itertuples(index=False)}
    expected = np.array([tuple(r) in rows for r in train.itertuples(index=False)])
    assert (dm.noise_mask == expected).all()


def test_missing_toy_folder_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.data_dir"):
        OGAToyDataModule(data_dir=str(tmp_path)).setup()


def test_subset_keeps_the_dataset_type_and_columns_come_back_as_numpy():
    from gradsift.data.base import DictDataset

    class Tagged(DictDataset):
        tag = "kept"

    ds = Tagged({"x": np.arange(10.0), "label": np.arange(10) % 2})
    sub = ds.subset([1, 3])
    assert isinstance(sub, Tagged) and list(sub.index) == [1, 3] and list(sub.column("label")) == [1, 1]
