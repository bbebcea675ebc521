"""The run record: ``result.json`` started as ``running``, written on every change, finished ``ok`` or ``failed``.

Summaries read only these files (``gradsift.summarize``): the resolved config and its hash, metrics, timings, the
package versions and the code revision that produced them. Only rank 0 of a multi-process launch writes them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

import gradsift
from gradsift.cache import config_hash, launcher_rank

log = logging.getLogger(__name__)

#: root keys that say how to run, not what: left out of the recorded config and its hash (a run that took its flags
#: from another job, ``retrain_from``, is the same run as one that scored them itself; ``result["retrain_from"]``
#: says where they came from)
RUN_CONTROL_KEYS = ("force", "retrain_from")


def recorded_config(cfg: DictConfig) -> dict:
    """The resolved config as ``result.json`` records it, without :data:`RUN_CONTROL_KEYS`."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in RUN_CONTROL_KEYS:
        data.pop(key, None)
    return data


def run_hash(cfg: DictConfig) -> str:
    """The run's ``config_hash``: the hash of :func:`recorded_config` (``force=true`` does not change it)."""
    return config_hash(recorded_config(cfg))


def finished_result(cfg: DictConfig, output_dir: str | Path) -> dict | None:
    """The record of this run when it already finished in ``output_dir``, else None (and always None with
    ``force=true``).

    Finished means ``result.json`` with status ``ok`` and this config's :func:`run_hash`: a re-run sweep (the same
    ``hydra.sweep.dir``) skips its finished jobs and runs the failed, interrupted and changed ones. Every rank of a
    multi-process launch reads the same folder, so they all skip together.

    Args:
        cfg: the run config.
        output_dir: the run's folder.

    Returns:
        The earlier record, with ``skipped: true`` added (not written), or None.
    """
    if cfg.get("force"):
        return None
    try:
        earlier = json.loads((Path(output_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if earlier.get("status") != "ok" or earlier.get("config_hash") != run_hash(cfg):
        return None
    log.info("%s finished before with the same config (config hash %s, %s): skipped; force=true runs it again",
             output_dir, earlier["config_hash"], earlier.get("finished_at", "time unknown"))
    return {**earlier, "skipped": True}


def start_run(cfg: DictConfig, output_dir: str | Path, dataset: str | None = None, **fields) -> tuple[Path, dict]:
    """What every flow does first: this process's output folder, the torch thread count, the ``running`` record.

    Args:
        cfg: the run config.
        output_dir: the run's folder; the extra ranks of a multi-process launch get a private temporary one.
        dataset: the dataset name recorded (default: ``cfg.data.name`` or the datamodule's class name).
        **fields: more top-level fields of the record (e.g. ``flow``).

    Returns:
        ``(output folder, result record)``; :func:`recorded` writes the record whatever happens.
    """
    output_dir = _own_output_dir(output_dir)
    if cfg.get("torch_threads"):
        # tiny models: one intra-op thread avoids OpenMP spin contention (30x slower when several jobs share cores)
        torch.set_num_threads(int(cfg.torch_threads))
    result = {"experiment": cfg.experiment_name, **fields,
              "dataset": dataset or cfg.data.get("name", cfg.data._target_.rsplit(".", 1)[-1]),
              "seed": int(cfg.seed), "config_hash": run_hash(cfg), "config": recorded_config(cfg),
              "versions": versions(), "status": "running", "error": None}
    return output_dir, result


def _own_output_dir(output_dir: str | Path) -> Path:
    """``output_dir``, created; for the extra ranks of a multi-process launch (which re-run this script to take part
    in training) a private folder instead, so that only rank 0 writes the run's files."""
    rank = launcher_rank()
    if rank > 0:
        return Path(tempfile.mkdtemp(prefix=f"gradsift-run-rank{rank}-"))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def now() -> str:
    """The current UTC time to the minute, as records and summaries print it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@contextmanager
def recorded(result: dict, output_dir: Path) -> Iterator[dict]:
    """Run the body; whatever happens, write ``result`` to ``output_dir/result.json``.

    On an exception the record gets ``status: failed``, the error and its traceback, keeping every metric computed
    before it; the exception is then re-raised.

    Args:
        result: the record, updated by the body.
        output_dir: the run's folder.

    Yields:
        The record.
    """
    try:
        yield result
    except Exception as exc:
        result["status"], result["error"] = "failed", f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        raise
    finally:
        write_result(output_dir, result)


def write_result(output_dir: Path, result: dict) -> None:
    """Write ``result.json`` atomically (a killed job leaves the previous complete record)."""
    tmp = output_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=_json_default))
    tmp.replace(output_dir / "result.json")


def versions() -> dict:
    """Versions of gradsift and the libraries that determine the numbers, the code revision and the platform."""
    import sklearn

    return {"gradsift": gradsift.__version__, **code_revision(), "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pl.__version__, "sklearn": sklearn.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


@functools.cache
def code_revision() -> dict:
    """``{"commit": <sha>, "dirty": bool}`` of the gradsift checkout a run used, so two runs of one config can be told
    apart by code. ``GRADSIFT_COMMIT`` overrides it (a copy of the tree without ``.git``, e.g. on a remote GPU box:
    pass the sha of what was copied); ``{}`` for an installed package outside git."""
    if os.environ.get("GRADSIFT_COMMIT"):
        return {"commit": os.environ["GRADSIFT_COMMIT"], "dirty": None}
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # the package is the checkout's, not a copy installed in it
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
