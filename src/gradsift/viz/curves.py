"""Per-epoch test curves over seeds (OGA Figure 3): one panel per task, one line per method, mean and a band.

Reads result.json files written with ``eval_every_epoch: true``: ``metrics.test_curve`` is the clean test accuracy
after each epoch of the model retrained on the kept samples, ``metrics.base_test_curve`` that of the untrimmed model
(drawn as the "No trim" baseline, once per task and seed).

    python -m gradsift.viz.curves multirun/figure3_glue_selection --out multirun_summaries/figure3_glue_selection

writes ``<out>.png`` (the figure) and ``<out>.csv`` (task, method, epoch, mean, std, min, max, n over seeds).

The same plot over another x than the epoch (dropout paper Figure 1: detection AUC vs compression size r, mean and
min/max over seeds; runs without the x field, e.g. the uncompressed Orig., become horizontal lines):

    python -m gradsift.viz.curves multirun/dropout_figure1_cola_stability --out multirun_summaries/dropout_figure1_cola \
        --x config.scorer.compressor.r --value metrics.detection_auc --band minmax
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from gradsift.summarize import load_runs
from gradsift.viz import save_figure

BASELINE = "No trim (noisy labels)"
TASK_NAMES = {"glue_qnli": "QNLI", "glue_sst2": "SST2", "glue_qqp": "QQP", "glue_mrpc": "MRPC", "glue_rte": "RTE",
              "glue_cola": "CoLA"}


def task_name(result: dict) -> str:
    """A run's panel: its dataset (GLUE names as the papers write them), with the named label set for datasets that
    have several (CIFAR-N ``data.noise``: ``cifar10n worst`` and ``cifar10n aggregate`` are separate tasks; a numeric
    ``noise``, e.g. the moons' geometry, is not a label set and is left out)."""
    task = TASK_NAMES.get(str(result.get("dataset")), str(result.get("dataset")))
    noise = ((result.get("config") or {}).get("data") or {}).get("noise")
    return f"{task} {noise}" if isinstance(noise, str) and noise else task


def load_curves(inputs: Iterable[Path | str], curve: str = "test_curve",
                baseline: str | None = "base_test_curve") -> pd.DataFrame:
    """Long frame (task, method, seed, epoch, value) from the finished runs under ``inputs``.

    The baseline curve (``metrics.<baseline>``) is added once per (task, seed) under the method name
    :data:`BASELINE`. Runs without the curve (e.g. ``eval_every_epoch`` off) or not finished are skipped."""
    rows: list[tuple] = []
    seen_base: set[tuple] = set()
    for run in load_runs(inputs):
        r = run.result
        metrics = r.get("metrics") or {}
        if run.failed or curve not in metrics:
            continue
        task = task_name(r)
        seed = int(r.get("seed", 0))
        rows += [(task, str(r.get("method")), seed, e + 1, float(v)) for e, v in enumerate(metrics[curve])]
        if baseline and baseline in metrics and (task, seed) not in seen_base:
            seen_base.add((task, seed))
            rows += [(task, BASELINE, seed, e + 1, float(v)) for e, v in enumerate(metrics[baseline])]
    frame = pd.DataFrame(rows, columns=["task", "method", "seed", "epoch", "value"])
    # one value per (task, method, seed, epoch): repeated runs of the same job average
    return frame.groupby(["task", "method", "seed", "epoch"], as_index=False)["value"].mean()


def load_points(inputs: Iterable[Path | str], x: str, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, levels): one row (task, method, seed, epoch=x, value) per finished run that has the dotted ``x``
    field, and (task, method, seed, value) for runs without it (drawn as horizontal lines)."""
    from gradsift.summarize import lookup

    points, levels = [], []
    for run in load_runs(inputs):
        r = run.result
        v = lookup(r, value)
        if run.failed or not isinstance(v, (int, float)):
            continue
        task = task_name(r)
        key = (task, str(r.get("method")), int(r.get("seed", 0)))
        xv = lookup(r, x)
        if isinstance(xv, (int, float)) and not isinstance(xv, bool):
            points.append((*key, float(xv), float(v)))
        else:
            levels.append((*key, float(v)))
    return (pd.DataFrame(points, columns=["task", "method", "seed", "epoch", "value"]),
            pd.DataFrame(levels, columns=["task", "method", "seed", "value"]))


def curve_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; 0 for one seed), min, max and number of seeds per (task, method, epoch)."""
    g = frame.groupby(["task", "method", "epoch"])["value"]
    out = g.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, min="min", max="max",
                n="count").reset_index()
    return out.sort_values(["task", "method", "epoch"], kind="stable").reset_index(drop=True)


def plot_curves(stats: pd.DataFrame, path: Path | str, title: str = "", ylabel: str = "test accuracy",
                band: str = "std", scale: float = 100.0, xlabel: str = "epoch",
                levels: pd.DataFrame | None = None) -> None:
    """One panel per task: a line per method (mean over seeds) and a shaded band (± std, or min..max);
    ``levels`` (task, method, value) adds a dashed horizontal line per (task, method) at the mean value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if band not in ("std", "minmax"):
        raise ValueError(f"band must be 'std' or 'minmax', got {band!r}")
    tasks = sorted(set(stats["task"]) | (set(levels["task"]) if levels is not None else set()))
    methods = sorted(stats["method"].unique(), key=lambda m: (m == BASELINE, m))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, method in enumerate(methods):
            s = stats[(stats.task == task) & (stats.method == method)]
            if s.empty:
                continue
            x, m = s["epoch"].to_numpy(), s["mean"].to_numpy() * scale
            lo, hi = ((m - s["std"].to_numpy() * scale, m + s["std"].to_numpy() * scale) if band == "std"
                      else (s["min"].to_numpy() * scale, s["max"].to_numpy() * scale))
            style = dict(color="black", ls="--") if method == BASELINE else dict(color=f"C{i % 10}")
            ax.plot(x, m, marker="o", ms=3, label=f"{method} (n={int(s['n'].max())})", **style)
            ax.fill_between(x, lo, hi, alpha=0.15, color=style["color"], lw=0)
        if levels is not None:
            for j, (method, lv) in enumerate(levels[levels.task == task].groupby("method")["value"]):
                ax.axhline(lv.mean() * scale, color="0.3", ls=":" if j else "--", lw=1,
                           label=f"{method} (n={len(lv)})")
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100, reproducible=True)


def write_curves(inputs: Sequence[Path | str], out: Path | str, title: str = "", curve: str = "test_curve",
                 baseline: str | None = "base_test_curve", band: str = "std") -> pd.DataFrame:
    """``<out>.csv`` (per-epoch stats) and ``<out>.png`` from the runs under ``inputs``; returns the stats."""
    frame = load_curves(inputs, curve, baseline)
    if frame.empty:
        raise ValueError(f"no finished run under {list(map(str, inputs))} has metrics.{curve} "
                         "(run the sweep with eval_every_epoch=true)")
    stats = curve_stats(frame)
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".png", ".csv") else out
    stem.parent.mkdir(parents=True, exist_ok=True)
    stats.to_csv(f"{stem}.csv", index=False, float_format="%.6f")
    plot_curves(stats, f"{stem}.png", title=title, band=band)
    return stats


def write_points(inputs: Sequence[Path | str], out: Path | str, x: str, value: str, title: str = "",
                 band: str = "minmax") -> pd.DataFrame:
    """``<out>.csv`` and ``<out>.png`` of ``value`` against the field ``x`` (e.g. AUC vs compression size r)."""
    points, levels = load_points(inputs, x, value)
    if points.empty:
        raise ValueError(f"no finished run under {list(map(str, inputs))} has both {x} and {value}")
    stats = curve_stats(points).rename(columns={"epoch": x.rsplit(".", 1)[-1]})
    if not levels.empty:
        lv = levels.groupby(["task", "method"])["value"].agg(mean="mean", min="min", max="max", n="count")
        stats = pd.concat([stats, lv.reset_index()], ignore_index=True)
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".png", ".csv") else out
    stem.parent.mkdir(parents=True, exist_ok=True)
    stats.to_csv(f"{stem}.csv", index=False, float_format="%.6f")
    plot_curves(curve_stats(points), f"{stem}.png", title=title, ylabel=value.rsplit(".", 1)[-1], band=band,
                scale=1.0, xlabel=x.rsplit(".", 1)[-1], levels=levels if not levels.empty else None)
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun directories or result.json files")
    parser.add_argument("--out", required=True, type=Path, help="output stem (.png and .csv are written)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--band", default="std", choices=["std", "minmax"], help="band: ± std or min..max")
    parser.add_argument("--x", default=None, help="dotted result.json field for the x axis instead of the epoch "
                                                  "(e.g. config.scorer.compressor.r)")
    parser.add_argument("--value", default="metrics.detection_auc", help="dotted field plotted against --x")
    args = parser.parse_args(argv)
    if args.x:
        stats = write_points(args.inputs, args.out, args.x, args.value, title=args.title, band=args.band)
        print(stats.to_string(index=False))
        return
    stats = write_curves(args.inputs, args.out, title=args.title, band=args.band)
    last = stats[stats.epoch == stats.groupby("task").epoch.transform("max")]
    print(last.to_string(index=False))


if __name__ == "__main__":
    main()
