"""scripts/gpu_inputs.py: the GPU calls' inputs built from a data folder, the JPEG archive compressed losslessly."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradsift.data.cifar_n import read_jpeg_archive

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_inputs", REPO / "scripts" / "gpu_inputs.py")
gpu_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_inputs)


def _jpeg_archive(path: Path, n_train: int = 40, n_test: int = 8) -> None:
    """The layout of cifar10_jpeg.npz (../shared/data/SOURCES.md): concatenated JPEG bytes and offsets per split."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.r_[0, np.cumsum([len(b) for b in blobs])].astype(np.int64)
        arrays[f"y_{split}"] = rng.integers(0, 10, n).astype(np.int64)
        arrays[f"{split}_rank_in_class"] = np.arange(n, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_c10_is_compressed_reads_back_the_same_images_and_is_idempotent(tmp_path):
    data, out = tmp_path / "data", tmp_path / "gpu"
    _jpeg_archive(data / "cifar10-jpeg" / "cifar10_jpeg.npz")
    (data / "cifar-n").mkdir()
    np.savez(data / "cifar-n" / "cifar10n_labels.npz", clean_label=np.arange(40) % 10)
    lines = gpu_inputs.build_set("c10", data, out)
    assert "compressed, arrays equal" in lines[0] and "copied" in lines[1]
    src, dst = data / "cifar10-jpeg" / "cifar10_jpeg.npz", out / "c10" / "cifar10-jpeg" / "cifar10_jpeg.npz"
    assert dst.stat().st_size < 0.8 * src.stat().st_size  # the repeated JPEG headers deflate
    a, b = read_jpeg_archive(src, cache_dir=tmp_path / "ca"), read_jpeg_archive(dst, cache_dir=tmp_path / "cb")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert (out / "c10" / "cifar-n" / "cifar10n_labels.npz").read_bytes() == \
        (data / "cifar-n" / "cifar10n_labels.npz").read_bytes()
    assert gpu_inputs.is_compressed(dst) and not gpu_inputs.is_compressed(src)
    stamp = dst.stat().st_mtime_ns
    assert all("up to date" in line for line in gpu_inputs.build_set("c10", data, out))
    assert dst.stat().st_mtime_ns == stamp
    dst.write_bytes(src.read_bytes())  # an uncompressed copy (as the README's cp made) is rewritten
    assert "compressed, arrays equal" in gpu_inputs.build_set("c10", data, out)[0]


def test_a_missing_source_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10_partial.npz: missing"):
        gpu_inputs.build_set("c5k", tmp_path / "nothing", tmp_path / "gpu")
    assert not (tmp_path / "gpu").exists()


def test_a_compressed_copy_that_differs_is_not_kept(tmp_path, monkeypatch):
    src = tmp_path / "a.npz"
    np.savez(src, x=np.arange(5))
    monkeypatch.setattr(gpu_inputs, "same_arrays", lambda a, b: False)
    with pytest.raises(RuntimeError, match="does not read back equal"):
        gpu_inputs.compress_npz(src, tmp_path / "out" / "a.npz")
    assert list((tmp_path / "out").iterdir()) == []
