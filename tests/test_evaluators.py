"""Evaluators against answers computed by hand (or by a peer library), on features built so that
a wrong k, a missing weighting, statistics taken from the wrong split or a dropped mask change
the answer; plus the extraction of features over the mesh."""
import jax
import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vision_jax import parallel
from vision_jax.data.sources import in_memory_source
from vision_jax.data.views import AUGMENTATIONS
from vision_jax.evaluators.classification import Classification
from vision_jax.evaluators.features import EvalData, Representation
from vision_jax.evaluators.knn import KNN
from vision_jax.evaluators.linear_probe import LinearProbe, fit_linear
from vision_jax.evaluators.report import evaluate_all, format_table

REPRESENTATION = Representation("r", {"features": None})


class FixedFeatures:
    """EvalData stand-in that serves precomputed features and logits."""

    def __init__(self, train, test, num_classes=3, test_logits=None):
        self.splits = {"train": train, "test": test}
        self.num_classes = num_classes
        self.test_logits = test_logits

    def outputs(self, representation, output, split):
        if output == "features":
            return self.splits[split]
        assert output == "logits" and split == "test", "classification is scored on the held-out split"
        return self.test_logits


def at_angles(degrees) -> np.ndarray:
    """Unit 2-D features at the given angles; the cosine similarity to +x is cos(angle)."""
    radians = np.deg2rad(np.asarray(degrees, np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def cosines(similarities) -> list[float]:
    """Angles (degrees) whose cosines are `similarities`."""
    return list(np.rad2deg(np.arccos(similarities)))


def test_separable_clusters_score_perfectly_and_shuffled_labels_score_near_chance():
    rng = np.random.default_rng(0)

    def clusters(n, dim=8, spread=0.3):
        labels = rng.integers(0, 3, n)
        return (np.eye(3, dim)[labels] * 3 + rng.normal(scale=spread, size=(n, dim))).astype(np.float32), labels

    train, test = clusters(300), clusters(300)
    assert KNN(k=10)(REPRESENTATION, FixedFeatures(train, test))["top1"] == 100.0
    assert LinearProbe(epochs=20)(REPRESENTATION, FixedFeatures(train, test))["top1"] == 100.0
    shuffled = FixedFeatures((train[0], rng.permutation(train[1])), test)
    assert KNN(k=10)(REPRESENTATION, shuffled)["top1"] < 50
    assert LinearProbe(epochs=20)(REPRESENTATION, shuffled)["top1"] < 50


# --- kNN ---------------------------------------------------------------------------------------

def test_knn_neighbours_are_nearest_by_cosine_similarity_not_dot_product_or_distance():
    # Test point (3, 0). Nearest by cosine: (1, 0), class 1 (cos 1). By dot product: (10, 10),
    # class 2 (dot 30 vs 3 and 7.5). By euclidean distance: (2.5, 1.5), class 0 (1.58 vs 2 and 12.2).
    train = (np.array([[1, 0], [10, 10], [2.5, 1.5]], np.float32), np.array([1, 2, 0]))
    data = FixedFeatures(train, (np.array([[3, 0]], np.float32), np.array([1])))
    assert KNN(k=1)(REPRESENTATION, data)["top1"] == 100.0


# One close neighbour of class 1 (similarity 1.0), two farther ones of class 2 (0.8), then a
# distant class 0 example (0.1) that k=3 must not reach. With weight exp(sim / T):
#   T = 0.07: class 1 gets e^(1/0.07) = e^14.29, class 2 gets 2 e^(0.8/0.07) = 2 e^11.43: class 1
#             (e^2.86 = 17 times more than 2 votes can make up);
#   T = 10:   weights e^0.1 = 1.105 vs 2 e^0.08 = 2.167: class 2, the majority.
# Equal weights (no weighting) give class 2 at any T. The features are not unit vectors, so that
# similarities must be cosines: unnormalized training features (class 1 at norm 0.5, class 2 at
# 3 and 2) would give class 2 at T = 0.07; an unnormalized test point (norm 50) class 1 at T = 10.
WEIGHTED = FixedFeatures((at_angles(cosines([1.0, 0.8, 0.8, 0.1])) * np.array([[0.5], [3], [2], [1]], np.float32),
                          np.array([1, 2, 2, 0])), (50 * at_angles([0]), np.array([1])))


def test_knn_votes_are_weighted_by_exp_similarity_over_temperature():
    assert KNN(k=3, temperature=0.07)(REPRESENTATION, WEIGHTED)["top1"] == 100.0  # predicted class 1
    at_high_temperature = FixedFeatures(WEIGHTED.splits["train"], (50 * at_angles([0]), np.array([2])))
    assert KNN(k=3, temperature=10.0)(REPRESENTATION, at_high_temperature)["top1"] == 100.0  # class 2


# Neighbours of a +x test point, nearest first: similarity 0.9 class 2, 0.8 class 1, 0.7 class 1,
# 0.6 class 2, 0.5 class 2, -0.9 class 0. Votes with T = 1 (weights e^0.9 = 2.460, e^0.8 = 2.226,
# e^0.7 = 2.014, e^0.6 = 1.822, e^0.5 = 1.649):
#   k=1: class 2 only                          -> 2
#   k=2: 2.460 (2) vs 2.226 (1)                -> 2
#   k=3: 2.460 (2) vs 2.226 + 2.014 = 4.240    -> 1
#   k=4: 2.460 + 1.822 = 4.282 vs 4.240        -> 2
#   k=5: 4.282 + 1.649 = 5.931 vs 4.240        -> 2
# Only k=3 says class 1, so k-1 or k+1 neighbours give a different answer.
RANKED = (at_angles(cosines([0.9, 0.8, 0.7, 0.6, 0.5, -0.9])), np.array([2, 1, 1, 2, 2, 0]))
EXPECTED_BY_K = {1: 2, 2: 2, 3: 1, 4: 2, 5: 2}


@pytest.mark.parametrize("k", sorted(EXPECTED_BY_K))
def test_knn_prediction_for_each_k_is_the_hand_computed_vote(k):
    for label in range(3):
        data = FixedFeatures(RANKED, (at_angles([0]), np.array([label])))
        expected = 100.0 if label == EXPECTED_BY_K[k] else 0.0
        assert KNN(k=k, temperature=1.0)(REPRESENTATION, data)["top1"] == expected, (k, label)


def test_knn_scores_every_test_point_across_chunks():
    # Five test points scored two at a time. With k=1 each takes the class of its nearest
    # training example: +x -> 0, +y -> 1, -x -> 2. The labels make 3 of 5 right: 60%.
    train = (at_angles([0, 90, 180]), np.array([0, 1, 2]))
    test_x = at_angles([10, 80, 170, 5, 95])
    test_y = np.array([0, 1, 2, 1, 0])  # the last two are wrong on purpose
    assert KNN(k=1, chunk=2)(REPRESENTATION, FixedFeatures(train, (test_x, test_y)))["top1"] == 60.0


# --- linear probe ------------------------------------------------------------------------------

def test_linear_probe_standardizes_test_features_with_the_training_statistics():
    # Training features: class 0 around 0, class 1 around 10 (mean ~5, std ~5). The test set holds
    # class 1 only, around 10: with the training statistics it standardizes to ~+1, deep in class
    # 1's side. With the test set's own statistics it would standardize to N(0, 1), around the
    # decision boundary, and about half would be called class 0.
    rng = np.random.default_rng(0)
    train_y = np.repeat([0, 1], 100)
    train_x = (10.0 * train_y + rng.normal(scale=1.0, size=200))[:, None].astype(np.float32)
    test_x = (10.0 + rng.normal(scale=0.1, size=(100, 1))).astype(np.float32)
    data = FixedFeatures((train_x, train_y), (test_x, np.ones(100, int)), num_classes=2)
    assert LinearProbe(epochs=10)(REPRESENTATION, data)["top1"] == 100.0


def test_one_full_batch_adam_step_moves_every_weight_by_lr_against_its_gradient_sign():
    # From zero weights the softmax is uniform, so the gradient of the mean cross-entropy is
    # dW = X^T (1/C - onehot(y)) / n and db = mean(1/C - onehot(y)) (the L2 term is 0 at W = 0).
    # Adam's first step is -lr * m_hat / (sqrt(v_hat) + eps) = -lr * sign(g) (up to float32
    # rounding of the bias corrections, ~1e-5), and the cosine schedule is at its peak lr at step
    # 0. One epoch of one full batch is one step; a second step would move each weight again.
    x = np.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.5], [2.0, 1.5]], np.float32)
    y = np.array([0, 1, 2, 1])
    residual = 1 / 3 - np.eye(3)[y]
    expected_w, expected_b = -0.05 * np.sign(x.T @ residual / 4), -0.05 * np.sign(residual.mean(0))
    params = fit_linear(x, y, num_classes=3, epochs=1, batch_size=4, lr=0.05, weight_decay=0.1)
    np.testing.assert_allclose(params["w"], expected_w, rtol=1e-4)
    np.testing.assert_allclose(params["b"], expected_b, rtol=1e-4)


@pytest.mark.parametrize("epochs,min_steps,batch_size,lr,atol", [
    (300, 0, 240, 0.05, 3e-4),  # full batch: 300 steps
    (1, 300, 240, 0.05, 3e-4),  # min_steps raises 1 epoch to 300 steps
    (150, 0, 60, 0.02, 1e-3),  # mini-batches of 60: 600 noisier steps
])
def test_linear_probe_converges_to_the_regularized_softmax_regression_optimum(epochs, min_steps, batch_size, lr,
                                                                              atol):
    # Overlapping classes (no separating solution), so the L2 term fixes a unique optimum.
    # Ours minimizes mean CE + wd/2 |W|^2 (bias not decayed); scikit-learn's lbfgs minimizes
    # C * sum CE + 1/2 |W|^2 (intercept not penalized): the same optimum for C = 1 / (n * wd).
    # (Measured: 150 full-batch steps miss by 1e-3, no weight decay by 0.46.)
    rng = np.random.default_rng(1)
    n, wd = 240, 0.05
    y = rng.integers(0, 3, n)
    x = (np.eye(3, 4)[y] + rng.normal(scale=0.8, size=(n, 4))).astype(np.float32)
    reference = LogisticRegression(C=1 / (n * wd), tol=1e-10, max_iter=10_000).fit(x, y)
    params = fit_linear(x, y, num_classes=3, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=wd,
                        min_steps=min_steps)
    # Softmax is unchanged by adding one vector to every class: compare with the class mean removed.
    centered = lambda a: np.asarray(a) - np.mean(a, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centered(params["w"]), centered(reference.coef_.T), atol=atol)
    np.testing.assert_allclose(centered(params["b"]), centered(reference.intercept_), atol=atol)


# --- classification ----------------------------------------------------------------------------

def test_classification_is_the_top1_of_the_model_logits_on_the_test_split():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 1.0]], np.float32)
    labels = np.array([0, 1, 1, 0])  # argmaxes are 0, 1, 2, 0: 3 of 4 right
    data = FixedFeatures(None, None, test_logits=(logits, labels))
    assert Classification()(Representation("r", {"logits": lambda images: images}), data) == {"top1": 75.0}
    # A representation without a classifier gets no classification score (an empty cell).
    assert evaluate_all({"classification": Classification()}, [REPRESENTATION], data) == {"r": {}}


def test_top5_and_per_class_accuracy_equal_a_loop_written_count():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 8, 60)
    data = FixedFeatures(None, None, test_logits=(logits, labels))
    scores = Classification(per_class=True)(Representation("r", {"logits": lambda images: images}), data)
    in_top5 = 0
    hits, counts = [0] * 8, [0] * 8
    for row, label in zip(logits.tolist(), labels.tolist()):
        ranked = sorted(range(8), key=lambda k: -row[k])
        in_top5 += label in ranked[:5]
        counts[label] += 1
        hits[label] += ranked[0] == label
    assert scores["top5"] == pytest.approx(100 * in_top5 / 60)
    assert scores["top1"] == pytest.approx(100 * sum(hits) / 60)
    for k in range(8):
        assert scores[f"class_{k}"] == pytest.approx(100 * hits[k] / counts[k])
    assert 0 < scores["top1"] < scores["top5"] < 100


# --- feature extraction ------------------------------------------------------------------------

def test_features_are_extracted_in_order_with_the_padding_of_the_last_batch_dropped():
    # 21 images whose pixels all equal their index, in batches of 8 (3 padding slots); the
    # representation reads one pixel, so the features must be the indices, once each, in order.
    num = 21
    images = np.broadcast_to(np.arange(num, dtype=np.uint8)[:, None, None, None], (num, 4, 4, 3)).copy()
    labels = np.arange(num) % 3
    source = in_memory_source(images, labels, num_classes=3, description="indexed")
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
    data = EvalData({"train": source, "test": source}, AUGMENTATIONS.build("none"), mesh, global_batch=8)
    one_pixel = Representation("pixel", {"features": jax.jit(lambda x: x[:, 0, 0, :1])})
    features, extracted_labels = data.outputs(one_pixel, "features", "test")
    np.testing.assert_allclose(features[:, 0], np.arange(num) / 127.5 - 1, atol=1e-6)  # 'none': [-1, 1]
    np.testing.assert_array_equal(extracted_labels, labels)


def test_results_table_lists_every_representation_and_metric():
    table = format_table({"simclr": {"knn/top1": 90.0, "linear_probe/top1": 95.5},
                          "raw_pixels": {"knn/top1": 80.25}}, "caption")
    lines = table.splitlines()
    assert lines[0] == "caption"
    assert "| features | knn/top1 | linear_probe/top1 |" in lines
    assert "| simclr | 90.00 | 95.50 |" in lines and "| raw_pixels | 80.25 | - |" in lines
