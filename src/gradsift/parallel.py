"""Several retrains of one sweep in one process, each in its own thread on its own CUDA stream.

On one GPU, trainings in separate processes time-slice it: two CUDA-graph ResNet-34 b128 trainings side by side run
at 1.02x one (``docs/BENCHMARKS.md``, "Training throughput"), while two models stepped on two CUDA streams of one
process ran at 1.37x, four at 1.50x. This module runs the retrains of a ``retrain_from`` sweep that way: each is
:func:`gradsift.artifacts.retrain` (the same recipe, data order and cache entry as one job alone), started in a thread
that makes its own stream current; the sweep that follows finds every retrain in the cache and only writes its
``result.json``. Weights are initialised one fit at a time (``gradsift.training``), each CUDA graph is captured on
its training's own stream in CUDA's thread-local capture mode, one capture at a time; the data order and
augmentation come from each datamodule's seeded generators. So a retrain here gives what it gives alone, for models
without random layers: dropout draws from the device's one global generator, shared by the threads, so with more
than one worker a model with active dropout is refused (:func:`random_layers`; ``--allow-random-layers`` runs it
anyway, its results then differing from a retrain alone and from run to run).

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
from omegaconf import DictConfig

from gradsift import CONFIG_DIR, artifacts, handoff
from gradsift.cache import config_hash

log = logging.getLogger(__name__)


#: modules whose forward in training mode draws from the global random generator
_RANDOM_LAYERS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
                  torch.nn.FeatureAlphaDropout)


def random_layers(module: torch.nn.Module) -> list[str]:
    """``"<name> (p=...)"`` for every dropout layer of ``module`` with ``p > 0``: layers whose training draws come
    from the global generator that threads share, so that trainings in threads do not give what each gives alone."""
    return [f"{name or type(m).__name__} (p={m.p:g})" for name, m in module.named_modules()
            if isinstance(m, _RANDOM_LAYERS) and m.p > 0]


def _check_no_random_layers(cfgs: list[DictConfig]) -> None:
    seen = set()
    for i, cfg in enumerate(cfgs):
        key = config_hash(cfg.model)
        if key in seen:
            continue
        seen.add(key)
        try:  # only the layer list is wanted: on the meta device no memory is taken and no weights are read
            with torch.device("meta"):
                model = instantiate(cfg.model)
        except Exception:  # a model that cannot be built there (e.g. one loading weights)
            model = instantiate(cfg.model)
        found = random_layers(model)
        del model
        if found:
            raise ValueError(
                f"config {i}: model ({cfg.model.get('_target_')}) has active dropout: {', '.join(found[:5])}"
                f"{' ...' if len(found) > 5 else ''}. Its draws come from one generator that the threads share, so "
                "retrains here would not give what each gives alone (nor the same twice). Use --workers 1, set the "
                "model's dropout to 0, or pass --allow-random-layers to accept that.")


def retrain_parallel(cfgs: list[DictConfig], workers: int, allow_random_layers: bool = False) -> list[dict]:
    """Retrain each ``retrain_from`` config on what its detection run flagged, ``workers`` at a time.

    Args:
        cfgs: run configs with ``retrain_from`` set (one per method of a sweep).
        workers: trainings at a time (threads; on CUDA each on its own stream).
        allow_random_layers: run models with active dropout in more than one thread anyway (refused otherwise:
            :func:`random_layers`).

    Returns:
        One dict per config, in order: ``method``, ``n_kept``, ``seconds``, ``cache_hit``, ``test`` (the metrics) or
        ``error``.

    Raises:
        ValueError: ``workers`` < 1, a config without ``retrain_from``, or (``workers`` > 1, not
            ``allow_random_layers``) a model with active dropout.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    for i, cfg in enumerate(cfgs):
        if not cfg.get("retrain_from"):
            raise ValueError(f"config {i} has no retrain_from: gradsift.parallel retrains the flags of detection runs")
    if workers > 1 and len(cfgs) > 1 and not allow_random_layers:
        _check_no_random_layers(cfgs)
    datamodules: dict[str, object] = {}  # one set-up datamodule per distinct data section
    jobs = []
    for cfg in cfgs:
        key = config_hash(cfg.data)
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
    p.add_argument("--allow-random-layers", action="store_true",
                   help="train models with active dropout in several threads anyway (their draws interleave, so the "
                        "results differ from a retrain alone)")
    p.add_argument("overrides", nargs="*", help="overrides shared by every retrain (retrain_from=... among them)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfgs = [compose("config", overrides=[*args.overrides, *each.split()]) for each in (args.each or [""])]
    t0 = time.perf_counter()
    try:
        outcomes = retrain_parallel(cfgs, args.workers, allow_random_layers=args.allow_random_layers)
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
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
