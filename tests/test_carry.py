"""Packing a folder into pieces and assembling it over several calls: byte-identical, checked, idempotent, and the
device script's exit codes (3 while pieces are missing)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from gradsift.carry import assemble, pack
from tests.conftest import REPO


def _safetensors(n: int, seed: int = 0) -> bytes:
    """A bf16 safetensors file of ``n`` values drawn like trained weights (small normal)."""
    w = np.random.default_rng(seed).normal(0, 0.02, n).astype(np.float32)
    bf16 = (w.view(np.uint32) >> 16).astype(np.uint16)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [n], "data_offsets": [0, 2 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bf16.tobytes()


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "model_bf16"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(_safetensors(60_000))
    (src / "config.json").write_text('{"model_type": "mpnet"}')
    (src / "sub" / "tokenizer.json").write_text("{}" * 500)
    return src


def test_pack_and_assemble_over_calls(folder, tmp_path):
    manifest = pack(folder, tmp_path / "out", "m", piece_bytes=30_000)
    pieces = [p[0] for p in manifest["pieces"]]
    assert pieces == ["m.zip.000", "m.zip.001", "m.zip.002"]
    assert [size for _, size, _ in manifest["pieces"]][:2] == [30_000, 30_000]
    # the byte planes: the exponent bytes of the weights deflate (the mantissa bytes do not), so the 120 kB of
    # bf16 weights pack to about 71% (the real MPNet export: 70.4%)
    assert 0.65 < manifest["zip_size"] / (folder / "model.safetensors").stat().st_size < 0.75
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors", "sub/tokenizer.json"]

    store = tmp_path / "device"
    calls = [pieces[:1], [], pieces[1:]]  # a call may carry no piece (the machine stayed warm)
    for i, part in enumerate(calls):  # each call carries the manifest and some pieces
        carried = tmp_path / f"call{i}"
        carried.mkdir()
        for name in [*part, "m.manifest.json"]:
            shutil.copy(tmp_path / "out" / name, carried / name)
        model, missing = assemble(carried, store)
        assert missing == [p for later in calls[i + 1:] for p in later]
    for rel in manifest["files"]:
        assert (model / rel).read_bytes() == (folder / rel).read_bytes(), rel
    # idempotent: nothing carried, the model folder is kept as it is
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tmp_path / "out" / "m.manifest.json", empty)
    stamp = (model / "model.safetensors").stat().st_mtime_ns
    assert assemble(empty, store) == (model, [])
    assert (model / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_corrupt_piece_is_refused(folder, tmp_path):
    pack(folder, tmp_path / "out", "m", piece_bytes=30_000)
    with open(tmp_path / "out" / "m.zip.001", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\x00\xff")
    with pytest.raises(ValueError, match=r"carried piece .*m.zip.001 does not match the manifest"):
        assemble(tmp_path / "out", tmp_path / "device")


def test_device_script_exit_codes(folder, tmp_path):
    pack(folder, tmp_path / "out", "m", piece_bytes=30_000)
    (tmp_path / "out" / "m.zip.002").rename(tmp_path / "m.zip.002")
    script = [sys.executable, str(REPO / "scripts" / "gpu" / "assemble_model.py"), str(tmp_path / "out"),
              str(tmp_path / "device")]
    first = subprocess.run(script, capture_output=True, text=True, check=False)
    assert first.returncode == 3 and "still missing 1 piece(s): m.zip.002" in first.stdout
    (tmp_path / "m.zip.002").rename(tmp_path / "out" / "m.zip.002")
    second = subprocess.run(script, capture_output=True, text=True, check=False)
    assert second.returncode == 0 and f"assembled and checked: {tmp_path / 'device' / 'model'}" in second.stdout
    assert (tmp_path / "device" / "model" / "model.safetensors").read_bytes() == \
        (folder / "model.safetensors").read_bytes()
