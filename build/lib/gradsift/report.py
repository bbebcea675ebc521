"""Console summary of one run (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_result(result: dict, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"{result.get('method')} | {result.get('dataset')} | seed {result.get('seed')}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result.get("metrics", {}).items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in result.get("timings", {}).items():
        t.add_row(k, f"{v:.2f}s")
    t.add_row("cache", "hit" if result.get("cache_hit") else "miss")
    console.print(t)
