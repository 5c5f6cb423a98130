"""kNN retrieval examples: held-out images beside their nearest training neighbours in feature
space (cosine, as the kNN evaluator), to see what the features find similar."""
from __future__ import annotations

import jax
import numpy as np
import tensorflow as tf

from vision_jax.data.show_views import grid
from vision_jax.evaluators.features import EvalData, Representation
from vision_jax.evaluators.knn import nearest_neighbours

CELL_HEIGHT = 64  # pixels per image: small images (digits, CIFAR) scaled up, large ones down


def retrieval_picture(representation: Representation, data: EvalData, queries: int = 8,
                      neighbours: int = 8) -> np.ndarray:
    """One row per held-out image (the first `queries` of the test split): the image, then its
    `neighbours` nearest training images, nearest first. Reads the features the evaluation
    already extracted (EvalData caches them), so it costs one similarity matrix and a few image loads."""
    train_x, _ = data.outputs(representation, "features", "train")
    test_x, _ = data.outputs(representation, "features", "test")
    queries, neighbours = min(queries, len(test_x)), min(neighbours, len(train_x))
    _, nearest = jax.device_get(jax.jit(nearest_neighbours, static_argnums=2)(train_x, test_x[:queries], neighbours))

    def image(split: str, index: int) -> np.ndarray:
        return data.sources[split].load(tf.constant(index, tf.int64))["image"].numpy()

    rows = [[image("test", q)] + [image("train", int(n)) for n in nearest[q]] for q in range(queries)]
    return grid(rows, CELL_HEIGHT)
