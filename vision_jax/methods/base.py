"""The interface every method implements; the trainer and evaluators rely on nothing else."""
from __future__ import annotations

import abc
from typing import Any, Callable

import jax
from flax import nnx

Metrics = dict[str, jax.Array]


class Method(abc.ABC):
    """A learning method.

    `make_encoder(rngs)` builds the configured backbone; the method adds its heads in
    `init_model`. `loss` runs in training mode (BatchNorm statistics update inside the module);
    `features` runs in inference mode and is what kNN and linear probes see.
    """

    def __init__(self, make_encoder: Callable[[nnx.Rngs], nnx.Module], num_classes: int):
        self.make_encoder = make_encoder
        self.num_classes = num_classes

    @abc.abstractmethod
    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The module with every trained part (must have an `encoder` attribute)."""

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch: dict[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        """Scalar loss and metrics for one global batch; metrics must include 'loss' (logged, and
        checked for non-finite values by the trainer)."""

    def features(self, model: nnx.Module, images: jax.Array) -> jax.Array:
        """Frozen representation for evaluation: the encoder's pooled features."""
        return model.encoder(images, train=False)
