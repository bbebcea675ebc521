"""The full-CIFAR presets run for a user who has the data: fake CIFAR-10 / CIFAR-100 torchvision folders of the real
size (50,000 + 10,000 images, real on-disk format) with CIFAR-N label files, through the whole pipeline
(fast_dev_run, CPU). The datamodule reads, checks and aligns all 50,000 labels before taking a small subset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from gradsift import pipeline
from tests.test_config import CONF

N_TRAIN, N_TEST = 50_000, 10_000


def _noisy(clean: np.ndarray, rate: float, classes: int, rng) -> np.ndarray:
    out = clean.copy()
    flip = rng.choice(len(clean), int(rate * len(clean)), replace=False)
    out[flip] = (out[flip] + rng.integers(1, classes, len(flip))) % classes
    return out


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar_full")
    rng = np.random.default_rng(0)
    (root / "cifar-n").mkdir()
    # CIFAR-10: five 10,000-image training batches + the test batch
    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    y10 = rng.permutation(np.arange(N_TRAIN) % 10)
    for i in range(5):
        rows = slice(i * 10_000, (i + 1) * 10_000)
        _dump(c10 / f"data_batch_{i + 1}", {b"labels": [int(v) for v in y10[rows]],
                                            b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8)})
    _dump(c10 / "test_batch", {b"labels": [int(v) for v in np.arange(N_TEST) % 10],
                               b"data": rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8)})
    torch.save({"clean_label": y10, "aggre_label": _noisy(y10, 0.09, 10, rng), "worse_label": _noisy(y10, 0.4, 10, rng),
                "random_label1": _noisy(y10, 0.17, 10, rng), "random_label2": _noisy(y10, 0.18, 10, rng),
                "random_label3": _noisy(y10, 0.18, 10, rng)}, root / "cifar-n" / "CIFAR-10_human.pt")
    # CIFAR-100: one training file, one test file, fine and coarse labels
    c100 = root / "cifar-100-python"
    c100.mkdir()
    y100 = rng.permutation(np.arange(N_TRAIN) % 100)
    coarse = np.arange(100) // 5
    _dump(c100 / "train", {b"fine_labels": [int(v) for v in y100], b"coarse_labels": [int(v) for v in coarse[y100]],
                           b"data": rng.integers(0, 256, (N_TRAIN, 3072), dtype=np.uint8)})
    yt = np.arange(N_TEST) % 100
    _dump(c100 / "test", {b"fine_labels": [int(v) for v in yt], b"coarse_labels": [int(v) for v in coarse[yt]],
                          b"data": rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8)})
    noisy = _noisy(y100, 0.4, 100, rng)
    torch.save({"clean_label": y100, "noisy_label": noisy, "clean_coarse_label": coarse[y100],
                "noisy_coarse_label": coarse[noisy]}, root / "cifar-n" / "CIFAR-100_human.pt")
    return root


@pytest.mark.parametrize("experiment,extra", [
    ("table2_cifar10n_fast", ["data.noise=worst", "scorer=l2", "data.subset=100", "data.val_size=20"]),
    ("table2_cifar100n_fast", ["scorer=iforest", "data.subset=300", "data.val_size=100", "compressor.r=64"]),
    ("table9_resnet18", ["scorer=iforest", "data.subset=100", "data.val_size=20"]),
])
def test_full_size_preset_runs_on_fake_folders(experiment, extra, full_size, tmp_path):
    overrides = [f"experiment={experiment}", "data.source=torchvision", "data.download=false", "data.test_size=20",
                 "data.device=null", "data.batch_size=20", "data.eval_batch_size=50", "+trainer.fast_dev_run=true",
                 "trainer.precision=32", "torch_threads=1", f"paths.data_dir={full_size}",
                 f"paths.cache_dir={tmp_path / 'cache'}", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    res = pipeline.run(cfg, tmp_path / "run", choices={"scorer": "preset"})
    assert res["status"] == "ok"
    assert (tmp_path / "run" / "gallery.png").stat().st_size > 0  # OGA Figure 2 for every image run
    n_train = len(np.load(tmp_path / "run" / "scores.npy"))
    assert n_train == cfg.data.subset  # the validation split is carved from the rest of the 50,000
    assert res["metrics"]["n_trimmed"] == round(0.05 * n_train)
    if "cifar100n" in experiment:  # the 51,300-dim last-layer gradient was projected to r dimensions
        assert res["config"]["compressor"]["_target_"].endswith("SparseRandomProjectionCompressor")
