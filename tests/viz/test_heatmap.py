import numpy as np
import pytest
from PIL import Image

from gradsift.viz.heatmap import influence_heatmap


def test_heatmap_orders_by_class_and_writes_png(tmp_path):
    train_classes = np.array([1, 0, 1, 0, 2, 2])
    test_classes = np.array([2, 0, 1])
    scores = -np.equal.outer(test_classes, train_classes).astype(float)  # |score| 1 on same-class pairs
    fig = influence_heatmap(scores, test_classes, train_classes, path=tmp_path / "fig4.png", title="toy",
                            class_names=["a", "b", "c"])
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(shown, np.kron(np.eye(3), np.ones((1, 2))))  # block diagonal after sorting
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    assert Image.open(tmp_path / "fig4.png").size[0] > 100


def test_heatmap_of_class_scores_and_errors():
    fig = influence_heatmap(np.arange(6.0).reshape(3, 2), np.array([1, 0, 1]))
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), [[2, 3], [0, 1], [4, 5]])
    with pytest.raises(ValueError, match="test_classes"):
        influence_heatmap(np.zeros((2, 2)), np.array([0]))
    with pytest.raises(ValueError, match="train_classes"):
        influence_heatmap(np.zeros((1, 2)), np.array([0]), np.array([0, 1, 1]))
