"""Content-addressed cache of expensive steps (base model training + gradient gathering).

The key is a hash of the config sections that determine the artifact, so a sweep over scorer x trim budget
trains and gathers once per (data, model, trainer, gradients, compressor, seed). Entries are built in a
temporary directory and renamed into place (atomic), under a file lock so parallel jobs of a multirun wait
for the first one instead of repeating the work.

Each entry carries ``MANIFEST.json`` (size and sha256 of every file, written when it is published). A read checks
every file's size, and its sha256 once per process and file state (path, size, mtime): sha256 reads about
1.3 GB/s here, under a tenth of what loading the same ``.npz`` costs, so a 1 GB gradient file adds about 0.8 s to
its first read in a process and nothing to later ones. An entry that fails the check, or whose files do not load,
is moved aside (``<key>.corrupt-<time>``) with one log line naming it and the file, and built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: the file in each entry that lists its files' sizes and sha256, written when the entry is published
MANIFEST = "MANIFEST.json"
#: files of an entry that the manifest does not list (the marker and the manifest itself)
_UNLISTED = frozenset({"COMPLETE", MANIFEST})
#: (path, size, mtime_ns) of files whose sha256 matched their manifest in this process
_VERIFIED: set[tuple[str, int, int]] = set()

T = TypeVar("T")


class CorruptEntryError(RuntimeError):
    """A cache entry's file is missing, has the wrong size or checksum, or does not load.

    Args:
        path: the file (or the entry folder).
        reason: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path}: {reason}")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(entry: Path) -> dict:
    """Record the size and sha256 of every file under ``entry`` in ``entry/MANIFEST.json``.

    Args:
        entry: a built entry folder.

    Returns:
        The manifest, ``{relative path: {"size": bytes, "sha256": hex}}``.
    """
    files = {}
    for f in sorted(p for p in entry.rglob("*") if p.is_file()):
        rel = f.relative_to(entry).as_posix()
        if rel not in _UNLISTED:
            files[rel] = {"size": f.stat().st_size, "sha256": file_sha256(f)}
            _VERIFIED.add(_state(f))
    (entry / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
    return files


def verify_entry(entry: Path) -> str | None:
    """What is wrong with a published entry, or None: every file its manifest lists must be there with the recorded
    size and sha256 (hashed once per process and file state). An entry from before manifests passes (its loaders
    still name a file that does not load)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} does not read ({type(e).__name__}: {e})"
    for rel, want in manifest.items():
        f = entry / rel
        if not f.is_file():
            return f"{rel} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size:,} bytes, the manifest recorded {want['size']:,}"
        state = _state(f)
        if state not in _VERIFIED:
            if file_sha256(f) != want["sha256"]:
                return f"{rel} does not match its recorded sha256"
            _VERIFIED.add(state)
    return None


def read_file(path: str | os.PathLike, loader: Callable[[Path], T]) -> T:
    """``loader(path)``, with any error reading the file (missing, truncated, not the expected format) raised as a
    :class:`CorruptEntryError` that names the file.

    Args:
        path: the file to read.
        loader: reads it (``np.load``, ``torch.load``, ``GradientSet.load`` ...).

    Returns:
        What ``loader`` returns.
    """
    path = Path(path)
    try:
        return loader(path)
    except (CorruptEntryError, MemoryError):  # too little memory says nothing about the file
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, pickle, torch and json each raise their own kinds
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise CorruptEntryError(path, f"does not load ({type(e).__name__}: {reason})") from e


def _state(f: Path) -> tuple[str, int, int]:
    st = f.stat()
    return str(f.resolve()), st.st_size, st.st_mtime_ns


def _identity(entry: Path) -> tuple[int, int] | None:
    try:
        st = (entry / "COMPLETE").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


#: keys at any depth that say where things are read or kept, or how a run shows progress, not what it computes:
#: left out of the cache keys (:func:`config_hash` ``locations=False``) and of ``retrain_from``'s comparison
LOCATION_KEYS = frozenset({"cache_dir", "data_dir", "root_dir", "default_root_dir", "download", "num_workers",
                           "enable_progress_bar"})


def without_locations(value):
    """``value`` with every :data:`LOCATION_KEYS` entry of its dicts removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_locations(v) for k, v in value.items() if k not in LOCATION_KEYS}
    if isinstance(value, list):
        return [without_locations(v) for v in value]
    return value


def config_hash(cfg: DictConfig | dict, keys: list[str] | None = None, locations: bool = True) -> str:
    """Stable short hash of the resolved config (or of the listed top-level ``keys`` of it); ``locations=False``
    leaves :data:`LOCATION_KEYS` out, so that a cache entry is found again from another folder or machine."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if keys is not None:
        data = {k: data.get(k) for k in keys}
    if not locations:
        data = without_locations(data)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def launcher_rank() -> int:
    """This process's rank as a multi-process launcher set it before the script started: 0 for the process that
    runs the script first (and for plain runs), > 0 for the copies Lightning's DDP/FSDP launcher re-executes
    (``LOCAL_RANK``/``NODE_RANK``) or that SLURM/torchrun start (``SLURM_PROCID`` / ``RANK``)."""
    env = os.environ
    for var in ("RANK", "SLURM_PROCID"):
        if var in env and int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1"))) > 1:
            return int(env[var])
    return int(env.get("NODE_RANK", "0")) * 1_000 + int(env.get("LOCAL_RANK", "0"))


class ArtifactCache:
    """Directory of cache entries ``<root>/<kind>/<key>/``.

    Multi-process training (DDP/FSDP): the launcher runs the whole script once per rank, and every rank must take
    part in each ``trainer.fit``. Entries built by training are therefore made with ``collective=True``: rank 0
    builds and publishes the entry under the lock as usual, while the other ranks, finding it missing, build a
    private copy next to it (joining rank 0's fit) and never publish. Entries built without collectives (gradients
    gathered by one process) are waited for under the lock by every rank."""

    def __init__(self, root: str | os.PathLike, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get_or_create(self, kind: str, key: str, build: Callable[[Path], None],
                      collective: bool = False) -> tuple[Path, bool]:
        """Return ``(entry_dir, hit)``; on a miss ``build(tmp_dir)`` fills a temp dir that is then renamed.

        ``collective``: ``build`` runs collectives with the other ranks (a DDP fit), see the class docstring."""
        final = self.path(kind, key)
        rank = launcher_rank()
        if collective and rank > 0:
            if self.enabled and (final / "COMPLETE").exists() and verify_entry(final) is None:
                return final, True
            return self._build_private(kind, build), False
        if not self.enabled:
            final = Path(tempfile.mkdtemp(prefix=f"gradsift-{kind}-"))
            build(final)
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if (final / "COMPLETE").exists():
                problem = verify_entry(final)
                if problem is None:
                    return final, True
                self._move_aside(final, problem)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                build(tmp)
                write_manifest(tmp)
                (tmp / "COMPLETE").write_text("ok\n")
                if final.exists():  # a stale, incomplete entry from a killed run
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final, False

    def get_or_load(self, kind: str, key: str, build: Callable[[Path], None], load: Callable[[Path], T],
                    collective: bool = False) -> tuple[Path, bool, T]:
        """:meth:`get_or_create`, then ``load(entry_dir)``; a cached entry that does not load is moved aside and built
        again (once).

        Args:
            kind: the entry's kind (``model``, ``base``, ``retrain``).
            key: its content key.
            build: fills a folder with the entry's files.
            load: reads the entry; raises :class:`CorruptEntryError` (see :func:`read_file`) when a file is bad.
            collective: ``build`` runs collectives with the other ranks, see the class docstring.

        Returns:
            ``(entry_dir, hit, load(entry_dir))``.
        """
        path, hit = self.get_or_create(kind, key, build, collective=collective)
        before = _identity(path)
        try:
            return path, hit, load(path)
        except CorruptEntryError as e:
            if not hit:
                raise
            problem = str(e)
        if collective and launcher_rank() > 0:  # only rank 0 moves entries; this rank joins its rebuild
            own = self._build_private(kind, build)
            return own, False, load(own)
        with FileLock(str(path) + ".lock"):
            if _identity(path) == before:  # not already replaced by another job
                self._move_aside(path, problem)
        path, hit = self.get_or_create(kind, key, build, collective=collective)
        return path, hit, load(path)

    def _build_private(self, kind: str, build: Callable[[Path], None]) -> Path:
        own = Path(tempfile.mkdtemp(prefix=f"gradsift-{kind}-rank{launcher_rank()}-"))
        build(own)
        return own

    def _move_aside(self, entry: Path, problem: str) -> Path:
        """Rename a bad entry to ``<key>.corrupt-<time>`` (kept for inspection) and say so in one line."""
        aside = entry.with_name(f"{entry.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(entry, aside)
        log.warning("cache entry %s/%s is corrupt (%s); moved it to %s and rebuilding it", entry.parent.name,
                    entry.name, problem.removeprefix(f"{entry}/"), aside.name)
        return aside
