"""Cache entries carry a manifest (size + sha256 per file): a corrupt entry is named, moved aside and rebuilt, never
loaded (issue #19 item 6)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from gradsift import cache, pipeline, training
from gradsift.cache import ArtifactCache, CorruptEntryError, read_file
from tests.test_pipeline import _cfg


def _builder(calls: list):
    def build(out: Path) -> None:
        calls.append(out)
        np.save(out / "values.npy", np.arange(1000.0))

    return build


def _cache_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gradsift.cache"]


def _load(path: Path) -> np.ndarray:
    return read_file(path / "values.npy", np.load)


def test_an_entry_records_size_and_sha256_of_its_files(tmp_path):
    path, hit, values = ArtifactCache(tmp_path).get_or_load("kind", "k", _builder([]), _load)
    manifest = json.loads((path / cache.MANIFEST).read_text())["files"]
    assert not hit and list(manifest) == ["values.npy"]
    assert manifest["values.npy"]["size"] == (path / "values.npy").stat().st_size
    assert manifest["values.npy"]["sha256"] == cache.file_sha256(path / "values.npy")
    np.testing.assert_array_equal(values, np.arange(1000.0))


@pytest.mark.parametrize("damage", ["truncate", "same_size", "delete"])
def test_a_damaged_entry_is_named_moved_aside_and_rebuilt(tmp_path, caplog, damage):
    calls: list = []
    store = ArtifactCache(tmp_path)
    path, _, _ = store.get_or_load("kind", "k", _builder(calls), _load)
    file = path / "values.npy"
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "same_size":  # a flipped byte: only the checksum sees it
        file.write_bytes(data[:-8] + bytes(8))
        cache._VERIFIED.clear()  # a new process: nothing hashed yet
    else:
        file.unlink()
    with caplog.at_level(logging.WARNING, logger="gradsift.cache"):
        again, hit, values = store.get_or_load("kind", "k", _builder(calls), _load)
    assert again == path and not hit and len(calls) == 2
    np.testing.assert_array_equal(values, np.arange(1000.0))
    aside = [p.name for p in (tmp_path / "kind").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].startswith("k.corrupt-")
    (line,) = _cache_lines(caplog)
    assert "cache entry kind/k is corrupt" in line and "values.npy" in line and aside[0] in line


def test_an_entry_without_manifest_that_does_not_load_is_rebuilt(tmp_path, caplog):
    """Entries written before manifests: the loader's error (here numpy's on a truncated file) names the file."""
    calls: list = []
    store = ArtifactCache(tmp_path)
    path, _, _ = store.get_or_load("kind", "k", _builder(calls), _load)
    (path / cache.MANIFEST).unlink()
    (path / "values.npy").write_bytes(b"\x93NUMPY garbage")
    with caplog.at_level(logging.WARNING, logger="gradsift.cache"):
        _, hit, values = store.get_or_load("kind", "k", _builder(calls), _load)
    assert not hit and len(calls) == 2 and len(values) == 1000
    assert "values.npy: does not load" in _cache_lines(caplog)[0]


def test_read_file_names_the_file(tmp_path):
    bad = tmp_path / "grads_train.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptEntryError, match=r"grads_train.npz: does not load \(BadZipFile"):
        read_file(bad, np.load)


def test_corrupt_pipeline_cache_heals_on_the_next_run(tmp_path, monkeypatch, caplog):
    """A truncated grads_train.npz and model.pt failed every rerun with BadZipFile / a torch zip error."""
    calls = []
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: calls.append(k.get("stage")) or real(*a, **k))
    first = pipeline.run(_cfg(tmp_path, "scorer=l2"), tmp_path / "a")
    root = tmp_path / "cache"
    (grads,) = root.glob("base/*/grads_train.npz")
    (model,) = root.glob("model/*/model.pt")
    for f in (grads, model):
        f.write_bytes(f.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="gradsift.cache"):
        second = pipeline.run(_cfg(tmp_path, "scorer=l2"), tmp_path / "b")
    assert second["status"] == "ok" and second["metrics"] == first["metrics"]
    assert not second["cache_hit"] and not second["model_cache_hit"]
    assert calls == ["base", "retrain", "base"]  # the model trained again, the retrain still cached
    lines = _cache_lines(caplog)
    assert any("cache entry base/" in m and "grads_train.npz has 100 bytes" in m for m in lines), lines
    assert any("cache entry model/" in m and "model.pt has 100 bytes" in m for m in lines), lines
    assert len(list(root.glob("base/*.corrupt-*"))) == 1 and len(list(root.glob("model/*.corrupt-*"))) == 1


def test_a_model_entry_whose_meta_names_another_seed_is_rebuilt(tmp_path, caplog):
    """meta.json records the seed and config hash of a cached model; an entry that contradicts its key is not used."""
    pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "a")
    (meta_file,) = (tmp_path / "cache").glob("model/*/meta.json")
    meta = json.loads(meta_file.read_text())
    assert meta["seed"] == 0 and len(meta["config_hash"]) == 16 and meta["config"]["data"]["n_train"] == 80
    meta["seed"] = 3
    meta_file.write_text(json.dumps(meta))
    (meta_file.parent / cache.MANIFEST).unlink()  # as if the entry came from elsewhere, checksums and all
    with caplog.at_level(logging.WARNING, logger="gradsift.cache"):
        res = pipeline.run(_cfg(tmp_path, "scorer=l2", "retrain=false"), tmp_path / "b")
    assert not res["model_cache_hit"]
    assert "records seed 3" in _cache_lines(caplog)[0]


def test_load_model_names_a_truncated_checkpoint(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CorruptEntryError, match=r"model.pt: does not load"):
        training.load_model(_cfg(tmp_path), tmp_path)
