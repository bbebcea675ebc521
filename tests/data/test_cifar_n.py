"""CIFAR-N datamodule: safe parsing of the on-disk formats, label alignment, subsets, augmentation, real noise rates."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gradsift.data.cifar_n import (CIFARNDataModule, balanced_choice, random_crop_flip, read_cifar_batch,
                                   read_human_labels, read_jpeg_archive)

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_real = pytest.mark.skipif(not (REAL / "cifar-n").is_dir(), reason=f"real CIFAR-N data not at {REAL}")

N_PER_BATCH, N_TEST = 40, 30


def _write_fake_cifar10(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny ``cifar-10-batches-py`` in the real format (protocol-2 pickles, bytes keys, [N, 3072] uint8 rows)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = N_TEST if name == "test_batch" else N_PER_BATCH
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.permutation(np.arange(n) % 10)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x,
                         b"filenames": [f"{i}.png".encode() for i in range(n)]}, f, protocol=2)
        xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.array(y))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{c}".encode() for c in range(10)], b"num_vis": 3072}, f, protocol=2)
    y_train = np.concatenate(ys[:5])
    return {"x_train": np.concatenate(xs[:5]), "y_train": y_train, "x_test": xs[5], "y_test": ys[5]}


def _fake_human_labels(clean: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"clean_label": clean.astype(np.int64)}
    for key, rate in [("aggre_label", 0.1), ("random_label1", 0.2), ("random_label2", 0.2),
                      ("random_label3", 0.2), ("worse_label", 0.4)]:
        noisy = clean.copy()
        flip = rng.choice(len(clean), int(rate * len(clean)), replace=False)
        noisy[flip] = (noisy[flip] + rng.integers(1, 10, len(flip))) % 10
        out[key] = noisy.astype(np.int64)
    return out


@pytest.fixture()
def fake(tmp_path: Path) -> tuple[Path, dict, dict]:
    arrays = _write_fake_cifar10(tmp_path)
    labels = _fake_human_labels(arrays["y_train"])
    (tmp_path / "cifar-n").mkdir()
    torch.save(labels, tmp_path / "cifar-n" / "CIFAR-10_human.pt")  # the official files are torch.save'd numpy dicts
    return tmp_path, arrays, labels


def _dm(root: Path, **kw) -> CIFARNDataModule:
    kw = {"data_dir": str(root), "download": False, "batch_size": 16, "eval_batch_size": 64, **kw}
    dm = CIFARNDataModule(**kw)
    dm.setup()
    return dm


def test_fake_folder_items_and_labels(fake):
    root, arrays, labels = fake
    dm = _dm(root, noise="worst", augment=False)
    assert dm.image_source == "torchvision" and dm.class_names[3] == "class3"
    assert len(dm.train_set) == 5 * N_PER_BATCH and len(dm.test_set) == N_TEST
    batch = next(iter(dm.attribution_dataloader("train")))
    assert set(batch) == {"x", "label", "clean_label", "index"}
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (64, 3, 32, 32)
    np.testing.assert_array_equal(batch["index"].numpy(), np.arange(64))
    np.testing.assert_array_equal(batch["label"].numpy(), labels["worse_label"][:64])
    np.testing.assert_array_equal(batch["clean_label"].numpy(), arrays["y_train"][:64])
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    raw = torch.from_numpy(arrays["x_train"][:64]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(batch["x"], (raw - mean) / std)
    np.testing.assert_array_equal(dm.noise_mask, labels["worse_label"] != arrays["y_train"])
    test = next(iter(dm.test_dataloader()))
    np.testing.assert_array_equal(test["label"].numpy(), arrays["y_test"])
    np.testing.assert_array_equal(test["clean_label"].numpy(), arrays["y_test"])


def test_only_noisy_label_choices_report_label_noise(fake):
    root, _, _ = fake
    assert _dm(root, noise="worst").has_label_noise
    assert not _dm(root, noise="clean").has_label_noise


def test_label_file_out_of_order_fails_loudly(fake):
    root, arrays, labels = fake
    shuffled = {k: v[::-1].copy() for k, v in labels.items()}
    torch.save(shuffled, root / "cifar-n" / "CIFAR-10_human.pt")
    with pytest.raises(ValueError, match="clean_label does not match the CIFAR train labels"):
        _dm(root)


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        read_cifar_batch(tmp_path / "data_batch_1")


def test_npz_labels_equal_pt_labels(fake, tmp_path_factory):
    root, _, labels = fake
    other = tmp_path_factory.mktemp("npz")
    np.savez(other / "cifar10n_labels.npz", **labels)
    a, b = read_human_labels(root, "cifar10"), read_human_labels(other, "cifar10")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(FileNotFoundError, match="CIFAR-N labels not found"):
        read_human_labels(tmp_path_factory.mktemp("empty"), "cifar10")


def test_subset_val_test_are_seeded_balanced_and_disjoint(fake):
    root, arrays, labels = fake
    dm = _dm(root, subset=50, val_size=20, test_size=10, seed=3)
    train_ix, val_ix = np.asarray(dm.train_set.index), np.asarray(dm.val_set.index)
    assert len(train_ix) == 50 and len(val_ix) == 20 and len(dm.test_set) == 10
    assert not set(train_ix) & set(val_ix)
    assert np.bincount(arrays["y_train"][train_ix], minlength=10).tolist() == [5] * 10
    assert np.bincount(arrays["y_train"][val_ix], minlength=10).tolist() == [2] * 10
    assert np.bincount(dm.test_set.columns["label"].numpy(), minlength=10).tolist() == [1] * 10
    # items keep their CIFAR position as index; the validation split carries clean labels
    np.testing.assert_array_equal(dm.train_set.columns["label"].numpy(), labels["aggre_label"][train_ix])
    np.testing.assert_array_equal(dm.val_set.columns["label"].numpy(), arrays["y_train"][val_ix])
    again = _dm(root, subset=50, val_size=20, test_size=10, seed=3)
    np.testing.assert_array_equal(train_ix, again.train_set.index)
    assert not np.array_equal(train_ix, _dm(root, subset=50, val_size=20, seed=4).train_set.index)


def test_balanced_choice_spreads_remainder():
    labels = np.repeat(np.arange(4), 10)
    picked = balanced_choice(labels, 10, np.random.default_rng(0))
    counts = np.bincount(labels[picked], minlength=4)
    assert counts.sum() == 10 and counts.max() - counts.min() <= 1


def test_train_loader_augments_attribution_loader_does_not(fake):
    root, _, _ = fake
    dm = _dm(root, augment=True)
    first = next(iter(dm.attribution_dataloader("train")))
    second = next(iter(dm.attribution_dataloader("train")))
    torch.testing.assert_close(first["x"], second["x"])
    train = next(iter(dm.train_dataloader()))
    plain = {int(i): x for i, x in zip(first["index"], first["x"])}
    same = [torch.equal(x, plain[int(i)]) for i, x in zip(train["index"], train["x"]) if int(i) in plain]
    assert same and not all(same)


def test_random_crop_flip_matches_padded_crop():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, gen, padding=2)
    gen = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 5, (2,), generator=gen), torch.randint(0, 5, (2,), generator=gen)
    flip = torch.rand(2, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        ref = padded[b, :, oy[b]:oy[b] + 8, ox[b]:ox[b] + 8]
        torch.testing.assert_close(out[b], ref.flip(-1) if flip[b] else ref)


def test_with_keep_restricts_by_index(fake):
    root, _, _ = fake
    dm = _dm(root)
    keep = np.array([5, 17, 199])
    clone = dm.with_keep(keep)
    np.testing.assert_array_equal(clone.train_set.index, keep)
    batch = next(iter(clone.attribution_dataloader("train")))
    np.testing.assert_array_equal(batch["index"].numpy(), keep)


def test_bad_config_values_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.noise"):
        CIFARNDataModule(dataset="cifar100n", noise="aggregate")
    with pytest.raises(ValueError, match="data.num_classes"):
        CIFARNDataModule(dataset="cifar10n", num_classes=100)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        _dm(tmp_path, source="torchvision")


# -- real data (skipped when ../shared/data is absent) ------------------------------------------------------------
@needs_real
@pytest.mark.parametrize("dataset,key,rate", [
    ("cifar10", "aggre_label", 0.0901), ("cifar10", "random_label1", 0.17234), ("cifar10", "worse_label", 0.40208),
    ("cifar100", "noisy_label", 0.4020), ("cifar100", "noisy_coarse_label", 0.26404)])
def test_real_noise_rates(dataset, key, rate):
    """Noise rates the OGA paper quotes (9.01%, 17.23%, 40.21%, 40.20%; coarse 26.40%), from the official files."""
    labels = read_human_labels(REAL, dataset)
    clean = labels["clean_coarse_label" if "coarse" in key else "clean_label"]
    assert len(clean) == 50_000
    assert np.mean(labels[key] != clean) == pytest.approx(rate, abs=5e-6)


@needs_real
def test_real_pt_and_npz_agree():
    for base in ("cifar10", "cifar100"):
        pt = read_human_labels(REAL / "cifar-n", base)  # finds the .pt first
        name = "cifar10n_labels.npz" if base == "cifar10" else "cifar100n_labels.npz"
        with np.load(REAL / "cifar-n" / name) as z:
            for k in z.files:
                np.testing.assert_array_equal(pt[k], z[k])


@needs_real
def test_real_5k_subset_alignment_and_rates():
    if not (REAL / "cifar10-partial").is_dir():
        pytest.skip("cifar10-partial not staged")
    dm = _dm(REAL, dataset="cifar10n_5k", noise="aggregate", augment=False)
    assert dm.image_source == "partial"
    assert len(dm.train_set) == 5085 and len(dm.test_set) == 1017
    with np.load(REAL / "cifar10-partial" / "cifar10_partial.npz") as z:
        np.testing.assert_array_equal(dm.train_set.index, z["train_index"])
        np.testing.assert_array_equal(dm.train_set.columns["clean_label"].numpy(), z["y_train"])
        np.testing.assert_array_equal(dm.train_set.columns["x"][:3].permute(0, 2, 3, 1).numpy(), z["x_train"][:3])
    assert dm.noise_mask.mean() == pytest.approx(0.0893, abs=1e-4)  # SOURCES.md: aggre 8.93% on this subset
    worst = _dm(REAL, dataset="cifar10n_5k", noise="worst")
    assert worst.noise_mask.mean() == pytest.approx(0.4020, abs=1e-4)


@needs_real
def test_real_5k_mismatched_labels_raise(tmp_path):
    """The alignment check: a label file whose clean_label is off by one position must be refused."""
    if not (REAL / "cifar10-partial").is_dir():
        pytest.skip("cifar10-partial not staged")
    (tmp_path / "cifar10-partial").symlink_to(REAL / "cifar10-partial")
    labels = read_human_labels(REAL, "cifar10")
    np.savez(tmp_path / "cifar10n_labels.npz", **{k: np.roll(v, 1) for k, v in labels.items()})
    with pytest.raises(ValueError, match="clean_label does not match"):
        _dm(tmp_path, dataset="cifar10n_5k")


@needs_real
def test_real_jpeg_archive_decodes_close_to_exact_pixels():
    jpeg = REAL / "cifar10-jpeg" / "cifar10_jpeg.npz"
    if not jpeg.is_file() or not (REAL / "cifar10-partial").is_dir():
        pytest.skip("cifar10-jpeg or cifar10-partial not staged")
    rows = np.arange(0, 1017, 50)
    dec = read_jpeg_archive(jpeg, rows=rows)
    assert dec["x_train"].shape == (len(rows), 32, 32, 3) and dec["x_train"].dtype == np.uint8
    with np.load(REAL / "cifar10-partial" / "cifar10_partial.npz") as z:
        exact, y = z["x_train"][rows], z["y_train"][rows]  # train_index 0..1016 = the first images of batch 1
    np.testing.assert_array_equal(dec["y_train"], y)
    err = np.abs(dec["x_train"].astype(float) - exact).mean(axis=(1, 2, 3))
    assert err.max() < 13.5  # SOURCES.md: q75 error <= 13.0 per image, >= 25.5 for any wrong image


def test_jpeg_archive_source_decodes_once_and_caches(tmp_path):
    """A tiny archive in the staged layout (concatenated JPEG bytes + offsets) read through the datamodule."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    parts = {}
    for split, n in (("train", 20), ("test", 10)):
        imgs = (np.repeat(np.arange(n) * 12, 32 * 32 * 3).reshape(n, 32, 32, 3)).astype(np.uint8)  # flat colours
        blobs = []
        for img in imgs:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=75)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        parts[f"{split}_jpeg"] = np.concatenate(blobs)
        parts[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        parts[f"y_{split}"] = rng.permutation(np.arange(n) % 10).astype(np.int64)
        parts[f"x_{split}_ref"] = imgs
    (tmp_path / "cifar10-jpeg").mkdir()
    np.savez(tmp_path / "cifar10-jpeg" / "cifar10_jpeg.npz", **{k: v for k, v in parts.items() if "_ref" not in k})
    (tmp_path / "cifar-n").mkdir()
    np.savez(tmp_path / "cifar-n" / "cifar10n_labels.npz", **_fake_human_labels(parts["y_train"]))
    cache = tmp_path / "cache"
    dm = _dm(tmp_path, cache_dir=str(cache), augment=False)
    assert dm.image_source == "jpeg"
    size = (tmp_path / "cifar10-jpeg" / "cifar10_jpeg.npz").stat().st_size
    assert sorted(p.name for p in cache.iterdir()) == [f"cifar10_jpeg_{s}_{size}.npy" for s in ("test", "train")]
    x = dm.train_set.columns["x"].permute(0, 2, 3, 1).numpy().astype(int)
    assert x.shape == (20, 32, 32, 3)
    assert np.abs(x - parts["x_train_ref"]).max() <= 3
    np.testing.assert_array_equal(dm.test_set.columns["label"].numpy(), parts["y_test"])
    np.testing.assert_array_equal(_dm(tmp_path, cache_dir=str(cache)).train_set.columns["x"].numpy(),
                                  dm.train_set.columns["x"].numpy())


@needs_real
@pytest.mark.slow
def test_real_jpeg_datamodule_full(tmp_path):
    """All 60,000 JPEG q75 images decoded through the datamodule; labels align with CIFAR-N (slow: ~1 min)."""
    if not (REAL / "cifar10-jpeg").is_dir():
        pytest.skip("cifar10-jpeg not staged")
    dm = CIFARNDataModule(data_dir=str(REAL), source="jpeg", download=False, cache_dir=str(tmp_path), noise="random1")
    dm.setup()
    assert len(dm.train_set) == 50_000 and len(dm.test_set) == 10_000
    assert dm.noise_mask.mean() == pytest.approx(0.17234, abs=5e-6)
    means = dm.train_set.columns["x"].float().mean(dim=(0, 2, 3)).numpy() / 255
    np.testing.assert_allclose(means, [0.4913, 0.4821, 0.4465], atol=2e-3)
