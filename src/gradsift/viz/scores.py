"""Plot of a run's scores: sorted scores with the known-noisy samples marked and the trimmed ones shaded."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def score_plot(flagged: pd.DataFrame, title: str = "") -> plt.Figure:
    """``flagged`` as an Attribution holds it (index, label, clean_label, score, flagged)."""
    df = flagged.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    noisy = (df["label"] != df["clean_label"]).to_numpy()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(np.arange(len(df)), df["score"], lw=1, c="tab:gray", label="score (higher = more detrimental)")
    ax.scatter(np.flatnonzero(noisy), df["score"][noisy], s=14, c="tab:red", marker="x", label="known noisy label")
    k = int(df["flagged"].sum())
    if k:
        ax.axvspan(-0.5, k - 0.5, color="tab:orange", alpha=0.15, label=f"trimmed ({k})")
    ax.set_xlabel("training samples, by score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
