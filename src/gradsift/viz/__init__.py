"""Figures drawn from run outputs (galleries of flagged training samples, heatmaps, curves, paper-table plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | Path, dpi: int, close: bool = True, reproducible: bool = False) -> Path:
    """Lay out ``fig``, write it to ``path`` (parent folders created) and close it unless ``close=False``.

    ``reproducible`` drops the PNG's "Software" tag, so that committed plots rewrite byte for byte."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **({"metadata": {"Software": None}} if reproducible else {}))
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path
