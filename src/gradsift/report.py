"""Console summary of one run (rich): a table for a single run, one line per job of a sweep."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

#: console width when stdout is not a terminal (a log file, a pipe): rich would cut tables to 80 columns
FILE_WIDTH = 200


def console() -> Console:
    """A rich console: the terminal's width on a terminal, :data:`FILE_WIDTH` columns when output goes to a file."""
    return Console() if sys.stdout.isatty() else Console(width=FILE_WIDTH)


def print_result(result: dict, out: Console | None = None) -> None:
    """The run's metrics, timings and cache use as a table."""
    out = out or console()
    t = Table(title=f"{result.get('method')} | {result.get('dataset')} | seed {result.get('seed')}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result.get("metrics", {}).items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in result.get("timings", {}).items():
        t.add_row(k, f"{v:.2f}s")
    t.add_row("cache", "hit" if result.get("cache_hit") else "miss")
    out.print(t)


#: metrics a sweep job's line shows, in this order, where the run has them
LINE_METRICS = ("detection_acc", "detection_auc", "test_acc", "test_perplexity", "n_trimmed")


def job_line(result: dict, output_dir: str) -> str:
    """One line for a job of a sweep: its name, its main metrics, time and cache use, and its folder."""
    name = f"{result.get('method')} | {result.get('dataset')} | seed {result.get('seed')}"
    if result.get("skipped"):
        return f"{name}: skipped (finished before with the same config; force=true runs it again): {output_dir}"
    metrics = result.get("metrics", {})
    shown = ", ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                      for k in LINE_METRICS if k in metrics)
    total = result.get("timings", {}).get("total_s")
    took = f"{total:.2f} s, " if total is not None else ""
    return f"{name}: {shown} ({took}cache {'hit' if result.get('cache_hit') else 'miss'}) -> {output_dir}"
