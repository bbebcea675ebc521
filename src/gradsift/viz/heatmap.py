"""Heatmap of per-test-prompt influence magnitudes (the OGA paper's Figure 4).

Rows are test prompts and columns training prompts (or classes, for per-class outlier scores), both ordered by
class, so a method that finds each test prompt's own class lights up a block diagonal. Colour = |score|, dark =
small magnitude, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gradsift.viz import save_figure  # noqa: E402


def _boundaries(sorted_classes: np.ndarray) -> tuple[list[float], list[float], list]:
    """Block edges (for separator lines), block centres (for tick labels) and the class of each block."""
    change = np.flatnonzero(np.diff(sorted_classes)) + 1
    starts = np.r_[0, change]
    stops = np.r_[change, len(sorted_classes)]
    return list(change - 0.5), list((starts + stops - 1) / 2), list(sorted_classes[starts])


def influence_heatmap(scores: np.ndarray, test_classes: np.ndarray, train_classes: np.ndarray | None = None,
                      path: str | Path | None = None, title: str | None = None,
                      class_names: Sequence[str] | None = None) -> plt.Figure:
    """Draw |scores| [n_test, n_cols] with rows (and columns, given ``train_classes``) grouped by class.

    ``train_classes=None`` means the columns are already the classes (per-class iForest scores). Saved as PNG
    when ``path`` is given; returns the figure.
    """
    scores = np.abs(np.asarray(scores, dtype=np.float64))
    test_classes = np.asarray(test_classes)
    if scores.shape[0] != len(test_classes):
        raise ValueError(f"scores has {scores.shape[0]} rows but test_classes has {len(test_classes)} entries")
    rows = np.argsort(test_classes, kind="stable")
    if train_classes is None:
        col_classes = np.arange(scores.shape[1])
    else:
        train_classes = np.asarray(train_classes)
        if scores.shape[1] != len(train_classes):
            raise ValueError(f"scores has {scores.shape[1]} columns but train_classes has {len(train_classes)}")
        col_classes = train_classes
    cols = np.argsort(col_classes, kind="stable")
    fig, ax = plt.subplots(figsize=(7, 5))
    im = ax.imshow(scores[rows][:, cols], aspect="auto", cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="|score|")
    name = (lambda c: class_names[int(c)]) if class_names is not None else str
    for axis, classes, line in ((ax.yaxis, test_classes[rows], ax.axhline), (ax.xaxis, col_classes[cols], ax.axvline)):
        edges, centres, which = _boundaries(classes)
        for e in edges:
            line(e, color="white", linewidth=0.4)
        axis.set_ticks(centres)
        axis.set_ticklabels([name(c) for c in which], fontsize=6)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("training prompts (by class)" if train_classes is not None else "class")
    ax.set_ylabel("test prompts (by class)")
    if title:
        ax.set_title(title)
    if path is None:
        fig.tight_layout()
    else:
        save_figure(fig, path, dpi=150, close=False)
    return fig
