"""Gallery of the highest-scored training images (OGA Figure 2)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gradsift.viz.gallery import gallery_from_datamodule, save_gallery, top_k


def test_top_k_orders_highest_first_and_keeps_ties_stable():
    np.testing.assert_array_equal(top_k(np.array([0.1, 3.0, 2.0, 3.0, -1.0]), 3), [1, 3, 2])


def test_save_gallery_writes_png_of_top_scores(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    scores = rng.normal(size=12)
    labels, clean = np.arange(12) % 10, (np.arange(12) + (np.arange(12) % 2)) % 10
    chosen = save_gallery(images, scores, labels, clean, tmp_path / "g.png", class_names=[str(c) for c in range(10)],
                          k=5, ncols=5)
    np.testing.assert_array_equal(chosen, np.argsort(-scores)[:5])
    with Image.open(tmp_path / "g.png") as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 0
    with pytest.raises(ValueError, match="differ in length"):
        save_gallery(images, scores[:3], labels, clean, tmp_path / "x.png")


def test_gallery_from_datamodule_maps_scores_by_index(tmp_path):
    class _DM:
        class_names = [str(c) for c in range(10)]

        def images(self, split):
            x = np.zeros((4, 32, 32, 3), dtype=np.uint8)
            return x, np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]), np.array([10, 20, 30, 40])

    chosen = gallery_from_datamodule(_DM(), np.array([0.5, 9.0, 1.0]), np.array([40, 30, 10]), tmp_path / "g.png", k=2)
    np.testing.assert_array_equal(chosen, [30, 10])
    with pytest.raises(IndexError, match="not in the training split"):
        gallery_from_datamodule(_DM(), np.array([1.0]), np.array([99]), tmp_path / "g.png")
