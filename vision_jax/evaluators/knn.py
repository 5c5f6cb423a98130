"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018, as in DINO):
cosine similarity, the k nearest training examples vote with weight exp(similarity / T)."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation


def nearest_neighbours(train_x, test_x, k: int) -> tuple[jax.Array, jax.Array]:
    """(cosine similarities, indices) of the k training features nearest to each test feature, nearest first."""
    def normalize(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)

    return jax.lax.top_k(normalize(test_x) @ normalize(train_x).T, k)


@partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_predict(train_x, train_y, test_x, k: int, temperature: float, num_classes: int):
    top_similarity, top_index = nearest_neighbours(train_x, test_x, k)
    votes = jax.nn.one_hot(train_y[top_index], num_classes) * jnp.exp(top_similarity / temperature)[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)


@EVALUATORS.register("knn")
class KNN:
    output = "features"

    def __init__(self, k: int = 20, temperature: float = 0.07, chunk: int = 1024):
        self.k, self.temperature, self.chunk = k, temperature, chunk

    def __call__(self, representation: Representation, data: EvalData) -> dict[str, float]:
        train_x, train_y = data.outputs(representation, self.output, "train")
        test_x, test_y = data.outputs(representation, self.output, "test")
        k = min(self.k, len(train_x))
        predictions = np.concatenate([
            knn_predict(train_x, train_y, test_x[i:i + self.chunk], k, self.temperature, data.num_classes)
            for i in range(0, len(test_x), self.chunk)])
        return {"top1": float(np.mean(predictions == test_y) * 100)}
