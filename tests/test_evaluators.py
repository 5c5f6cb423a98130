"""kNN and linear probe on features whose answer is known."""
import numpy as np

from vision_jax.evaluators.features import Representation
from vision_jax.evaluators.knn import KNN
from vision_jax.evaluators.linear_probe import LinearProbe
from vision_jax.evaluators.report import format_table


class FixedFeatures:
    """EvalData stand-in that serves precomputed features (the extraction path is tested end to end)."""

    num_classes = 3

    def __init__(self, train, test):
        self.splits = {"train": train, "test": test}

    def outputs(self, representation, output, split):
        assert output == "features"
        return self.splits[split]


def clusters(rng, n, dim=8, spread=0.3):
    centers = np.eye(3, dim) * 3
    labels = rng.integers(0, 3, n)
    return (centers[labels] + rng.normal(scale=spread, size=(n, dim))).astype(np.float32), labels


def test_separable_clusters_score_perfectly_and_shuffled_labels_score_near_chance():
    rng = np.random.default_rng(0)
    train, test = clusters(rng, 300), clusters(rng, 300)
    data = FixedFeatures(train, test)
    rep = Representation("clusters", {"features": None})
    assert KNN(k=10)(rep, data)["top1"] == 100.0
    assert LinearProbe(epochs=20)(rep, data)["top1"] == 100.0

    shuffled = FixedFeatures((train[0], rng.permutation(train[1])), test)
    assert KNN(k=10)(rep, shuffled)["top1"] < 50
    assert LinearProbe(epochs=20)(rep, shuffled)["top1"] < 50


def test_knn_uses_the_k_nearest_with_cosine_similarity():
    # Test point is along +x; two far-but-aligned +x examples of class 1, three close-in-l2 examples of
    # class 2 that point elsewhere. Cosine similarity must pick class 1.
    train_x = np.array([[10, 0], [20, 0.1], [0.1, 1], [0.1, 1.1], [0.2, 0.9]], np.float32)
    train_y = np.array([1, 1, 2, 2, 2])
    data = FixedFeatures((train_x, train_y), (np.array([[1, 0.05]], np.float32), np.array([1])))
    assert KNN(k=2)(Representation("r", {"features": None}), data)["top1"] == 100.0


def test_results_table_lists_every_representation_and_metric():
    table = format_table({"simclr": {"knn/top1": 90.0, "linear_probe/top1": 95.5},
                          "raw_pixels": {"knn/top1": 80.25}}, "caption")
    lines = table.splitlines()
    assert lines[0] == "caption"
    assert "| features | knn/top1 | linear_probe/top1 |" in lines
    assert "| simclr | 90.00 | 95.50 |" in lines and "| raw_pixels | 80.25 | - |" in lines
