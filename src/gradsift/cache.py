"""Content-addressed cache of expensive steps (base model training + gradient gathering).

The key is a hash of the config sections that determine the artifact, so a sweep over scorer x trim budget
trains and gathers once per (data, model, trainer, gradients, compressor, seed). Entries are built in a
temporary directory and renamed into place (atomic), under a file lock so parallel jobs of a multirun wait
for the first one instead of repeating the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf


def config_hash(cfg: DictConfig | dict, keys: list[str] | None = None) -> str:
    """Stable short hash of the resolved config (or of the listed top-level ``keys`` of it)."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if keys is not None:
        data = {k: data.get(k) for k in keys}
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
            if self.enabled and (final / "COMPLETE").exists():
                return final, True
            own = Path(tempfile.mkdtemp(prefix=f"gradsift-{kind}-rank{rank}-"))
            build(own)
            return own, False
        if not self.enabled:
            final = Path(tempfile.mkdtemp(prefix=f"gradsift-{kind}-"))
            build(final)
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if (final / "COMPLETE").exists():
                return final, True
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                build(tmp)
                (tmp / "COMPLETE").write_text("ok\n")
                if final.exists():  # a stale, incomplete entry from a killed run
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final, False
