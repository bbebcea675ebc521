"""Seconds per scorer (like Table 6 of the OGA paper) on random gradient matrices of two sizes, in one process.

Every scorer in conf/scorer/ is instantiated from its yaml (outlier detectors included when importable) and
timed on ``fit_score``: (a) the synthetic-experiment size 250 x 66 with the training set as reference (the OGA
synthetic experiment), median of 3 runs after a warm-up; (b) a CIFAR-10 last-layer size 50,000 x 5,130 (blocks weight 5,120 +
bias 10) with a 5,000-row validation set, one run. ``--n-override NAME=N`` runs a scorer on the first N rows of
the big matrix when it would take too long. The Exact Hessian rows time the Gauss-Newton form (H from the
gradients); the cost of the exact loss Hessian itself (attribution/hessian.py) is timed on a linear head with
the same 5,130 parameters and reported per 1,000 samples. Prints a markdown table with machine, date and command.

    python benchmarks/bench_scorers.py --n-override self_lissa=10000 --n-override ocsvm=10000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gradsift import CONFIG_DIR
from gradsift.attribution.gradient_set import Block, GradientSet
from gradsift.attribution.hessian import loss_hessian
from gradsift.scoring.base import Scorer, ScoringInputs

CONF = CONFIG_DIR / "scorer"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gradient_set(n: int, blocks: list[tuple[str, int]], classes: int, seed: int) -> GradientSet:
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for name, size in blocks:
        out.append(Block(name, start, start + size))
        start += size
    grads = rng.standard_normal((n, start), dtype=np.float32) * np.float32(0.1)
    return GradientSet(grads, np.arange(n), rng.integers(0, classes, n), blocks=out)


def inputs_for(train: GradientSet, reference: GradientSet, classes: int, n: int | None = None) -> ScoringInputs:
    if n is not None and n < train.n:
        train = GradientSet(train.grads[:n], train.index[:n], train.labels[:n], blocks=train.blocks)
    probs = np.random.default_rng(0).dirichlet(np.ones(classes), size=train.n)
    return ScoringInputs(train=train, reference=reference, train_probs=probs, seed=0)


def load_scorers(names: list[str] | None) -> dict[str, Scorer]:
    """Every conf/scorer/*.yaml that imports; the exact-Hessian scorer timed with H from the gradients."""
    scorers = {}
    # composed with the root config, so interpolations such as ${seed} and ${trak_proj_dim} resolve
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for path in sorted(CONF.glob("*.yaml")):
            if names and path.stem not in names:
                continue
            cfg = compose("config", overrides=[f"scorer={path.stem}"]).scorer
            if "hessian" in cfg and cfg.hessian == "exact":
                cfg.hessian = "gauss_newton"
            try:
                scorers[path.stem] = instantiate(cfg)
            except ImportError as err:
                print(f"skipping {path.name}: {err}", file=sys.stderr)
    return scorers


def seconds(scorer: Scorer, inputs: ScoringInputs, repeats: int, warmup: bool = False) -> float:
    if warmup:  # first-call costs (imports, BLAS start-up) are not the method's
        scorer.fit_score(inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.fit_score(inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _Head(torch.nn.Module):
    """A linear classifier head on fixed features: the shape of ResNet's CIFAR-10 last layer."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(features, classes)

    def per_sample_loss(self, batch: dict) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.fc(batch["x"]), batch["label"], reduction="none")


def exact_hessian_seconds(features: int, classes: int, n: int, batch: int) -> float:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)
    loader = [{"x": x[s:s + batch], "label": y[s:s + batch], "index": torch.arange(s, min(n, s + batch))}
              for s in range(0, n, batch)]
    t0 = time.perf_counter()
    loss_hessian(_Head(features, classes), loader, "all")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--big-n", type=int, default=50_000)
    p.add_argument("--val-n", type=int, default=5_000)
    p.add_argument("--n-override", action="append", default=[], metavar="NAME=N",
                   help="run scorer NAME (yaml stem) on the first N rows of the big matrix")
    p.add_argument("--scorers", nargs="*", help="yaml stems to run (default: all)")
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--hessian-n", type=int, default=1_000, help="samples for the exact-Hessian timing (0: skip)")
    args = p.parse_args(argv)
    overrides = {k: int(v) for k, v in (o.split("=", 1) for o in args.n_override)}

    small = gradient_set(250, [("fc.weight", 64), ("fc.bias", 2)], 2, seed=0)
    small_inputs = inputs_for(small, small, 2)  # training set as reference (OGA synthetic experiment)
    big_blocks = [("fc.weight", 5120), ("fc.bias", 10)]
    big = None if args.skip_big else gradient_set(args.big_n, big_blocks, 10, seed=1)
    big_val = None if args.skip_big else gradient_set(args.val_n, big_blocks, 10, seed=2)

    rows, skipped = [], []
    for name, scorer in load_scorers(args.scorers).items():
        try:
            t_small = seconds(scorer, small_inputs, repeats=3, warmup=True)
        except ValueError as err:  # needs inputs a random gradient matrix does not have (Kronecker factors, checkpoints)
            skipped.append((name, str(err).split(";")[0]))
            print(f"skipping {name}: {err}", file=sys.stderr, flush=True)
            continue
        t_big, n_big = None, None
        if big is not None:
            n_big = min(overrides.get(name, args.big_n), args.big_n)
            t_big = seconds(scorer, inputs_for(big, big_val, 10, n_big), repeats=1)
        rows.append((name, scorer.display_name, t_small, t_big, n_big))
        print(f"{name}: {t_small:.3g} s small, {t_big} s big (n={n_big})", file=sys.stderr, flush=True)
    hess = exact_hessian_seconds(512, 10, args.hessian_n, 250) if args.hessian_n else None

    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}, "
          f"load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; numpy {np.__version__}, torch {torch.__version__}")
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- (a) 250 x 66 float32 gradients, reference = training set, median of 3 after a warm-up; (b) {args.big_n:,} x 5,130 "
          f"float32 gradients (blocks 5,120 + 10), {args.val_n:,} validation rows, one run\n")
    print("| scorer (yaml) | method | (a) 250 x 66 (s) | (b) n x 5,130 (s) | n in (b) |")
    print("|---|---|---|---|---|")
    for name, display, t_small, t_big, n_big in rows:
        big_s = "-" if t_big is None else f"{t_big:.2f}"
        n_s = "-" if n_big is None else f"{n_big:,}" + ("" if n_big == args.big_n else " (reduced)")
        print(f"| {name} | {display} | {t_small:.3g} | {big_s} | {n_s} |")
    for name, why in skipped:
        print(f"| {name} | not timed here: {why} | - | - | - |")
    if hess is not None:
        print(f"\nExact loss Hessian (attribution/hessian.py, torch.func.hessian) of a 512 -> 10 linear head "
              f"(d = 5,130): {hess:.1f} s for {args.hessian_n:,} samples "
              f"(~{hess * 50_000 / args.hessian_n / 60:.0f} min extrapolated to 50,000).")


if __name__ == "__main__":
    main()
