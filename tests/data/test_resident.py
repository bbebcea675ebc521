"""Device-resident training batches: the same batches as the DataLoader path, shuffle on/off, keep sets, config."""

from __future__ import annotations

from functools import partial

import pickle
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from gradsift.data.cifar_n import MEAN_STD, CIFARNDataModule
from gradsift.data.resident import ResidentBatches
from gradsift.models.image_classifier import ImageClassifier
from gradsift.models.optim import linear_warmup_decay
from gradsift.models.resnet import resnet9

N_PER_BATCH = 14  # 70 training images: batches of 16 leave a short last batch of 6


@pytest.fixture()
def fake(tmp_path: Path) -> Path:
    """A tiny ``cifar-10-batches-py`` folder plus CIFAR-N labels with 10% label noise."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        y = [int(v) for v in rng.permutation(np.arange(N_PER_BATCH) % 10)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": y, b"data": rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8)}, f,
                        protocol=2)
        labels += y if name != "test_batch" else []
    clean = np.array(labels, dtype=np.int64)
    noisy = clean.copy()
    noisy[::10] = (noisy[::10] + 1) % 10
    np.savez(tmp_path / "cifar10n_labels.npz", clean_label=clean, aggre_label=noisy)
    return tmp_path


def _dm(root: Path, **kw) -> CIFARNDataModule:
    dm = CIFARNDataModule(**{"data_dir": str(root), "download": False, "batch_size": 16, "seed": 3, **kw})
    dm.setup()
    return dm


def _epochs(loader, n: int = 2) -> list[dict]:
    return [batch for _ in range(n) for batch in loader]


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert list(x) == list(y)
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("augment", [True, False, {"pad_mode": "reflect", "crop": "per_batch", "padding": 3}])
def test_resident_batches_equal_the_dataloader_batches(fake, shuffle, augment):
    """data.device set -> ResidentBatches; unset -> DataLoader: the same batches, epoch after epoch."""
    loader_dm = _dm(fake, shuffle=shuffle, augment=augment)
    resident_dm = _dm(fake, shuffle=shuffle, augment=augment, device="cpu")
    dataloader, resident = loader_dm.train_dataloader(), resident_dm.train_dataloader()
    assert isinstance(resident, ResidentBatches) and not isinstance(dataloader, ResidentBatches)
    assert len(resident) == len(dataloader) == 5
    _assert_same_batches(_epochs(dataloader, 3), _epochs(resident, 3))


def test_shuffle_off_keeps_dataset_order_and_still_augments(fake):
    dm = _dm(fake, shuffle=False, device="cpu")
    plain = next(iter(dm.attribution_dataloader("train")))
    for epoch in range(2):
        batches = list(dm.train_dataloader())
        np.testing.assert_array_equal(torch.cat([b["index"] for b in batches]).numpy(), dm.train_set.index)
    first = next(iter(dm.train_dataloader()))
    assert not torch.equal(first["x"], plain["x"][:16])
    torch.testing.assert_close(first["label"], plain["label"][:16])


def test_shuffle_on_permutes_every_epoch(fake):
    dm = _dm(fake, device="cpu")
    loader = dm.train_dataloader()
    orders = [torch.cat([b["index"] for b in loader]).numpy() for _ in range(2)]
    assert sorted(orders[0]) == sorted(dm.train_set.index) and not np.array_equal(orders[0], orders[1])


def test_keep_set_batches_only_kept_samples_like_the_dataloader(fake):
    keep = np.array([3, 5, 8, 13, 21, 34, 55, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 2, 1])
    resident = _dm(fake, device="cpu").with_keep(keep)
    dataloader = _dm(fake).with_keep(keep)
    batches = _epochs(resident.train_dataloader())
    assert sorted(torch.cat([b["index"] for b in batches[:2]]).tolist()) == sorted(keep.tolist())
    _assert_same_batches(_epochs(dataloader.train_dataloader()), batches)


def test_training_on_resident_batches_gives_the_same_model(fake):
    """Lightning fits (fp32, CPU) over the DataLoader and over ResidentBatches end with identical parameters."""
    states = []
    for device in (None, "cpu"):
        pl.seed_everything(0, verbose=False)
        model = ImageClassifier(resnet9(num_classes=10), optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
                                scheduler=partial(linear_warmup_decay, warmup=0.25), channels_last=True)
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, deterministic=True)
        trainer.fit(model, datamodule=_dm(fake, device=device))
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_normalize_options(fake):
    assert _dm(fake).mean == MEAN_STD["cifar10"][0]
    dm = _dm(fake, normalize="dataset")
    x = dm.full_train_set.columns["x"].double() / 255
    np.testing.assert_allclose(dm.mean, x.mean((0, 2, 3)).numpy(), rtol=1e-12)
    batch = next(iter(dm.attribution_dataloader("train")))
    assert abs(float(batch["x"].mean())) < 0.05  # the split's own statistics centre it
    given = _dm(fake, normalize={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    raw = given.full_train_set.columns["x"].float()  # one attribution batch holds all 70 images
    torch.testing.assert_close(next(iter(given.attribution_dataloader("train")))["x"], (raw - 127.5) / 63.75)
    with pytest.raises(ValueError, match="data.normalize"):
        CIFARNDataModule(normalize="imagenet")
    with pytest.raises(ValueError, match="data.normalize"):
        CIFARNDataModule(normalize={"mean": [0.5], "std": [0.2]})


def test_augment_shuffle_normalize_compose_as_config(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from gradsift import CONFIG_DIR as conf
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["data=cifar10n", f"paths.root_dir={tmp_path}", "data.augment.pad_mode=reflect",
                                           "data.augment.crop=per_batch", "data.shuffle=false",
                                           "data.normalize=dataset"])
        off = compose("config", overrides=["data=cifar10n", f"paths.root_dir={tmp_path}", "data.augment=false"])
    dm = instantiate(cfg.data)
    assert (dm.augment.pad_mode, dm.augment.crop, dm.augment.padding, dm.shuffle) == ("reflect", "per_batch", 4, False)
    assert dm.normalize == "dataset"
    assert instantiate(off.data).augment is None


@pytest.mark.parametrize("device", [None, "cpu"])
def test_drop_last_drops_the_short_last_batch_on_both_paths(fake, device, caplog):
    """data.drop_last: every training batch full (70 rows at 16: 4 batches, 6 rows left out each epoch), on the
    DataLoader and the resident path alike, and a kept subset ending on one row warns unless it is dropped."""
    dm = _dm(fake, device=device, drop_last=True)
    batches = _epochs(dm.train_dataloader())
    assert len(dm.train_dataloader()) == 4 and [len(b["index"]) for b in batches] == [16] * 8
    kept = _dm(fake, device=device).with_keep(np.arange(49))  # 49 = 3 x 16 + 1
    with caplog.at_level("WARNING", logger="gradsift.data.base"):
        assert [len(b["index"]) for b in kept.train_dataloader()] == [16, 16, 16, 1]
    assert "end each epoch on a batch of 1" in caplog.text and "data.drop_last=true" in caplog.text
    caplog.clear()
    dropped = _dm(fake, device=device, drop_last=True).with_keep(np.arange(49))
    with caplog.at_level("WARNING", logger="gradsift.data.base"):
        assert [len(b["index"]) for b in dropped.train_dataloader()] == [16, 16, 16]
    assert "end each epoch" not in caplog.text


def test_drop_last_matches_between_resident_and_dataloader(fake):
    _assert_same_batches(_epochs(_dm(fake, drop_last=True).train_dataloader(), 3),
                         _epochs(_dm(fake, drop_last=True, device="cpu").train_dataloader(), 3))
