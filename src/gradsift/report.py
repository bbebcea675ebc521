"""Console summary of one run (rich)."""

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
