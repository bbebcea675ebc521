"""Gallery of the highest-scored training images with their given and clean labels (the OGA paper's Figure 2).

Scores follow the scorer contract: higher = more detrimental, so the gallery shows what trimming removes first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gradsift.viz import save_figure  # noqa: E402


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, highest first (ties keep the earlier position)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, kind="stable")[:k]


def save_gallery(images: np.ndarray, scores: np.ndarray, labels: np.ndarray, clean_labels: np.ndarray,
                 path: str | Path, class_names: Sequence[str] | None = None, index: np.ndarray | None = None,
                 k: int = 16, ncols: int = 8, title: str | None = None) -> np.ndarray:
    """Draw the ``k`` highest-scored images [N,H,W,3] uint8 with "given / clean" labels; returns their positions.

    Titles of mislabeled images (given != clean) are red. ``index`` (the datasets' sample ids) is printed when given.
    """
    images, scores = np.asarray(images), np.asarray(scores)
    if not len(images) == len(scores) == len(labels) == len(clean_labels):
        raise ValueError(f"gallery inputs differ in length: images {len(images)}, scores {len(scores)}, "
                         f"labels {len(labels)}, clean_labels {len(clean_labels)}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"gallery images must be [N, H, W, 3] uint8, got shape {images.shape}")
    chosen = top_k(scores, min(k, len(scores)))
    name = (lambda c: class_names[int(c)]) if class_names is not None else (lambda c: str(int(c)))
    nrows = max(1, -(-len(chosen) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 2.3 * nrows + (0.3 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, pos in zip(axes.flat, chosen):
        ax.imshow(images[pos], interpolation="nearest")
        wrong = labels[pos] != clean_labels[pos]
        head = f"#{int(index[pos])}\n" if index is not None else ""
        ax.set_title(f"{head}given: {name(labels[pos])}\nclean: {name(clean_labels[pos])}", fontsize=7,
                     color="tab:red" if wrong else "black")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=150)
    return chosen


def gallery_from_datamodule(datamodule, scores: np.ndarray, score_index: np.ndarray, path: str | Path,
                            k: int = 16, ncols: int = 8, title: str | None = None) -> np.ndarray:
    """Gallery of a datamodule's training split (``images()`` as in ``CIFARNDataModule``), scores keyed by index.

    ``score_index`` holds the sample index of each score (``GradientSet.index``); returns the chosen indices.
    """
    images, labels, clean, index = datamodule.images("train")
    pos = {int(i): p for p, i in enumerate(index)}
    missing = [int(i) for i in score_index if int(i) not in pos]
    if missing:
        raise IndexError(f"{len(missing)} scored indices are not in the training split, e.g. {missing[:5]}")
    rows = np.array([pos[int(i)] for i in score_index])
    chosen = save_gallery(images[rows], scores, labels[rows], clean[rows], path,
                          class_names=getattr(datamodule, "class_names", None), index=index[rows], k=k,
                          ncols=ncols, title=title)
    return index[rows][chosen]
