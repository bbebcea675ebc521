"""Carry a model folder to a machine that takes a few tens of MiB per call: pack it into pieces, assemble it there.

:func:`pack` (here) writes one zip of the folder, split into pieces of at most ``piece_bytes``, and a manifest with
the sha256 of every piece, of the zip and of every file. Each ``.safetensors`` file goes in as three entries: its
header, the odd bytes of its tensor data (deflated) and the even bytes (stored). For bf16/fp16 tensors the odd
(little-endian high) bytes hold sign and exponent, which deflate to about 40%, while the mantissa bytes do not
compress; a bf16 encoder so shrinks to about 70% with no loss. :func:`assemble` (on the device, one call after
another) copies the pieces it is handed into a store folder that outlives the call while the machine stays warm,
checks each against the manifest, says which are still missing and, once all are there, rebuilds the folder and
checks every file's sha256. Standard library only: the device script loads this file by path, before any wheel is
installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

PIECE_BYTES = 50 * 2**20
CHUNK = 8 * 2**20
MARKER = ".gradsift-carry.json"
_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same folder packs to the same bytes


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _entry(zf: zipfile.ZipFile, name: str, data: bytes, compress: int) -> None:
    zf.writestr(zipfile.ZipInfo(name, _DATE), data, compress_type=compress, compresslevel=6)


def pack(folder: str | Path, out_dir: str | Path, name: str, piece_bytes: int = PIECE_BYTES) -> dict:
    """Pack ``folder`` into ``out_dir/<name>.zip.NNN`` pieces of at most ``piece_bytes`` + ``<name>.manifest.json``.

    Args:
        folder: the folder to carry (files in sub-folders too).
        out_dir: where the pieces and the manifest are written (earlier pieces of ``name`` are removed).
        name: stem of the piece and manifest files.
        piece_bytes: the largest piece.

    Returns:
        The manifest: ``name``, ``zip_sha256``, ``zip_size``, ``pieces`` ([file, bytes, sha256] in order) and
        ``files`` ({relative path: [bytes, sha256]} of the original folder).
    """
    src, out = Path(folder), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{name}.zip.*"):
        old.unlink()
    files = {}
    zip_path = out / f"{name}.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(src).as_posix()
            data = path.read_bytes()
            files[rel] = [len(data), hashlib.sha256(data).hexdigest()]
            head = 8 + struct.unpack("<Q", data[:8])[0] if rel.endswith(".safetensors") else len(data)
            if (len(data) - head) % 2 or head == len(data):
                _entry(zf, rel, data, zipfile.ZIP_DEFLATED)
                continue
            body = memoryview(data)[head:]
            _entry(zf, f"{rel}.head", data[:head], zipfile.ZIP_DEFLATED)
            _entry(zf, f"{rel}.hi", bytes(body[1::2]), zipfile.ZIP_DEFLATED)
            _entry(zf, f"{rel}.lo", bytes(body[0::2]), zipfile.ZIP_STORED)
    pieces = []
    with open(zip_path, "rb") as f:
        while block := f.read(piece_bytes):
            piece = out / f"{name}.zip.{len(pieces):03d}"
            piece.write_bytes(block)
            pieces.append([piece.name, len(block), hashlib.sha256(block).hexdigest()])
    manifest = {"name": name, "zip_sha256": sha256_file(zip_path), "zip_size": zip_path.stat().st_size,
                "pieces": pieces, "files": files}
    zip_path.unlink()
    (out / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _manifest(carried: Path, store: Path) -> dict:
    found = sorted(carried.glob("*.manifest.json")) or sorted(store.glob("*.manifest.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one *.manifest.json in {carried} (or {store}), found "
                                f"{[f.name for f in found]}: carry the manifest in every call")
    return json.loads(found[0].read_text())


def _model_complete(model: Path, manifest: dict) -> bool:
    marker = model / MARKER
    if not marker.is_file() or json.loads(marker.read_text()).get("zip_sha256") != manifest["zip_sha256"]:
        return False
    return all((model / rel).is_file() and (model / rel).stat().st_size == size
               for rel, (size, _) in manifest["files"].items())


def _rebuild(zip_path: Path, manifest: dict, model: Path) -> None:
    tmp = model.parent / f".{model.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        for rel, (size, digest) in manifest["files"].items():
            if rel in names:
                data = zf.read(rel)
            else:  # header + interleaved byte planes of a safetensors file
                lo, hi = zf.read(f"{rel}.lo"), zf.read(f"{rel}.hi")
                body = bytearray(len(lo) + len(hi))
                body[0::2], body[1::2] = lo, hi
                data = zf.read(f"{rel}.head") + body
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(f"{rel} rebuilt from {zip_path} does not match the manifest's size/sha256")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    (tmp / MARKER).write_text(json.dumps({"zip_sha256": manifest["zip_sha256"]}) + "\n")
    if model.exists():
        shutil.rmtree(model)
    tmp.rename(model)


def assemble(carried: str | Path, store: str | Path) -> tuple[Path, list[str]]:
    """Take the pieces in ``carried`` into ``store/pieces``; once all are there, rebuild ``store/model``.

    Args:
        carried: the folder this call carried (the manifest and some pieces).
        store: a folder outside the repository copy, kept while the machine stays warm.

    Returns:
        ``(store/model, missing piece names)``: the folder is complete and checked when nothing is missing.

    Raises:
        ValueError: a carried piece, the joined zip or a rebuilt file does not match the manifest.
    """
    carried, store = Path(carried), Path(store)
    manifest = _manifest(carried, store)
    pieces, model = store / "pieces", store / "model"
    pieces.mkdir(parents=True, exist_ok=True)
    (store / f"{manifest['name']}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if _model_complete(model, manifest):
        return model, []
    missing = []
    for file, size, digest in manifest["pieces"]:
        kept, new = pieces / file, carried / file
        if kept.is_file() and kept.stat().st_size == size:
            continue
        if not new.is_file():
            missing.append(file)
            continue
        if new.stat().st_size != size or sha256_file(new) != digest:
            raise ValueError(f"carried piece {new} does not match the manifest (bytes {size}, sha256 {digest}); "
                             f"export and pack again")
        shutil.copyfile(new, pieces / f".{file}.tmp")
        (pieces / f".{file}.tmp").rename(kept)
    if missing:
        return model, missing
    joined = store / f"{manifest['name']}.zip"
    h = hashlib.sha256()
    with open(joined, "wb") as dst:
        for file, _, _ in manifest["pieces"]:
            data = (pieces / file).read_bytes()
            h.update(data)
            dst.write(data)
    try:
        if h.hexdigest() != manifest["zip_sha256"]:
            raise ValueError(f"the joined pieces in {pieces} have sha256 {h.hexdigest()}, the manifest says "
                             f"{manifest['zip_sha256']}; remove {pieces} and carry the pieces again")
        _rebuild(joined, manifest, model)
    finally:
        joined.unlink()
    return model, []
