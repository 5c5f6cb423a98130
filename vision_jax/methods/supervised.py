"""Supervised training: cross-entropy of a linear classifier on the encoder."""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vision_jax.methods import METHODS
from vision_jax.methods.base import Method
from vision_jax.models import LinearClassifier


class ClassifierModel(nnx.Module):
    def __init__(self, encoder: nnx.Module, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.classifier = LinearClassifier(encoder.num_features, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        return self.classifier(self.encoder(images, train=train))


@METHODS.register("supervised")
class Supervised(Method):
    def __init__(self, make_encoder, num_classes: int, label_smoothing: float = 0.0):
        super().__init__(make_encoder, num_classes)
        self.label_smoothing = label_smoothing

    def init_model(self, rngs: nnx.Rngs) -> ClassifierModel:
        return ClassifierModel(self.make_encoder(rngs), self.num_classes, rngs=rngs)

    def loss(self, model, batch, rng):
        del rng  # no stochastic layers
        logits = model(batch["image"], train=True)
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes), self.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, {"loss": loss, "accuracy": accuracy}

    def predict(self, model: ClassifierModel, images: jax.Array) -> jax.Array:
        """Class logits in inference mode (used by the classification evaluator)."""
        return model(images, train=False)
