"""The OGA paper's Figure 1 analog: data with flipped points, exact influence per sample, and gradient space."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from gradsift.viz import save_figure  # noqa: E402


def figure1(train_x: np.ndarray, train_y: np.ndarray, flipped: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            influence: np.ndarray, grads: np.ndarray, flagged: np.ndarray, title: str, out: str | Path) -> Path:
    """Four panels as Figure 1 A-D (or E-H): train set (X = flipped), test set, influence (Eq. 1) per sample,
    and a 2-D PCA view of the per-sample gradients with the detector's flagged samples circled."""
    fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
    cmap = np.array(["tab:blue", "tab:orange"])
    for a, x, y, name in [(ax[0], train_x, train_y, "training set (given labels)"), (ax[1], test_x, test_y, "test set")]:
        a.scatter(x[:, 0], x[:, 1], c=cmap[y % 2], s=14, alpha=0.8)
        a.set_title(name)
    ax[0].scatter(train_x[flipped, 0], train_x[flipped, 1], marker="x", c="k", s=60, label="flipped label")
    ax[0].legend(loc="best", fontsize=8)
    order = np.arange(len(influence))
    ax[2].scatter(order[~flipped], influence[~flipped], s=10, c="tab:gray", label="clean")
    ax[2].scatter(order[flipped], influence[flipped], s=40, marker="x", c="tab:red", label="flipped")
    ax[2].set_title("exact influence I(z) (higher = more detrimental)")
    ax[2].set_xlabel("training sample")
    ax[2].legend(fontsize=8)
    view = PCA(n_components=2, random_state=0).fit_transform(grads) if grads.shape[1] > 2 else grads
    ax[3].scatter(view[~flipped, 0], view[~flipped, 1], s=10, c="tab:gray", label="clean")
    ax[3].scatter(view[flipped, 0], view[flipped, 1], s=40, marker="x", c="tab:red", label="flipped")
    ax[3].scatter(view[flagged, 0], view[flagged, 1], s=120, facecolors="none", edgecolors="k", label="iForest flagged")
    ax[3].set_title("gradient space (PCA of per-sample gradients)")
    ax[3].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, out, dpi=110)
