"""Several retrains of one sweep in one process, each in its own thread on its own CUDA stream.

On one GPU, trainings in separate processes time-slice it: two CUDA-graph ResNet-34 b128 trainings side by side run
at 1.02x one (``docs/BENCHMARKS.md``, "Training throughput"), while two models stepped on two CUDA streams of one
process ran at 1.37x, four at 1.50x. This module runs the retrains of a ``retrain_from`` sweep that way: each is
:func:`gradsift.artifacts.retrain` (the same recipe, data order and cache entry as one job alone), started in a thread
that makes its own stream current; the sweep that follows finds every retrain in the cache and only writes its
``result.json``. Weights are initialised one fit at a time (``gradsift.training``), each CUDA graph is captured on
its training's own stream in CUDA's thread-local capture mode, one capture at a time; the data order and
augmentation come from each datamodule's seeded generators. So a retrain here gives what it gives alone, for models
without random layers (dropout draws from the device's one global generator, shared by the threads).

    python -m gradsift.parallel --workers 3 --each +table2_authors=l1 --each +table2_authors=l2 \\
        --each +table2_authors=tracin -- experiment=table2_cifar10n_authors ... retrain_from=<detection sweep>

A retrain that fails here is logged and left to the sweep, which trains it on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gradsift import CONFIG_DIR, artifacts, handoff

log = logging.getLogger(__name__)


def retrain_parallel(cfgs: list[DictConfig], workers: int) -> list[dict]:
    """Retrain each ``retrain_from`` config on what its detection run flagged, ``workers`` at a time.

    Args:
        cfgs: run configs with ``retrain_from`` set (one per method of a sweep).
        workers: trainings at a time (threads; on CUDA each on its own stream).

    Returns:
        One dict per config, in order: ``method``, ``n_kept``, ``seconds``, ``cache_hit``, ``test`` (the metrics) or
        ``error``.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    for i, cfg in enumerate(cfgs):
        if not cfg.get("retrain_from"):
            raise ValueError(f"config {i} has no retrain_from: gradsift.parallel retrains the flags of detection runs")
    datamodules: dict[str, object] = {}  # one set-up datamodule per distinct data section
    jobs = []
    for cfg in cfgs:
        key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str)
        if key not in datamodules:
            datamodules[key] = instantiate(cfg.data)
            datamodules[key].setup()
        dm = datamodules[key]
        _, _, _, index, remove = handoff.kept_rows(cfg, dm)
        jobs.append((cfg, dm, index[~remove]))

    def one(job) -> dict:
        cfg, dm, keep = job
        name = cfg.get("method") or cfg.scorer._target_.rsplit(".", 1)[-1]
        stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        t0 = time.perf_counter()
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                test, seconds, hit, _ = artifacts.retrain(cfg, dm, keep, artifacts.model_key(cfg))
                if stream is not None:
                    stream.synchronize()
        except Exception as exc:  # left to the sweep, which retrains it alone
            log.exception("parallel retrain of %s failed", name)
            return {"method": name, "n_kept": len(keep), "seconds": time.perf_counter() - t0,
                    "error": f"{type(exc).__name__}: {exc}"}
        return {"method": name, "n_kept": len(keep), "seconds": seconds, "cache_hit": hit, "test": test}

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retrain") as pool:
        return list(pool.map(one, jobs))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--each`` one override per retrain, the common overrides after ``--``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--each", action="append", default=[], metavar="OVERRIDES",
                   help="the overrides of one retrain (space-separated), e.g. +table2_authors=l1; repeat per retrain")
    p.add_argument("--out", type=Path, help="write the outcomes as JSON here")
    p.add_argument("overrides", nargs="*", help="overrides shared by every retrain (retrain_from=... among them)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfgs = [compose("config", overrides=[*args.overrides, *each.split()]) for each in (args.each or [""])]
    t0 = time.perf_counter()
    outcomes = retrain_parallel(cfgs, args.workers)
    wall = time.perf_counter() - t0
    for o in outcomes:
        print(f"{o['method']}: {'failed: ' + o['error'] if 'error' in o else ('cached' if o['cache_hit'] else 'trained')}"
              f" in {o['seconds']:.1f} s, test {o.get('test', {}).get('acc', float('nan')):.4f}")
    print(f"{len(outcomes)} retrains, {args.workers} at a time: {wall:.1f} s wall")
    if args.out:
        args.out.write_text(json.dumps({"workers": args.workers, "wall_s": wall, "retrains": outcomes}, indent=2,
                                       default=str))
    return 1 if any("error" in o for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
