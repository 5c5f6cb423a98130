"""Supervised training: cross-entropy of a linear classifier on the encoder.

Labels are class indices [B], or soft labels [B, classes] when batch-level mixup or cutmix made
them (config.data.batch_pp); label smoothing applies to either.
"""
import jax
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, classification_loss
from vision_jax.models import LinearClassifier


class ClassifierModel(nnx.Module):
    def __init__(self, encoder: nnx.Module, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.classifier = LinearClassifier(encoder.num_features, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        return self.classifier(self.encoder(images, train=train))


@METHODS.register("supervised")
class Supervised(Method):
    output_names = ("features", "logits")

    def __init__(self, setup: MethodSetup, label_smoothing: float = 0.0):
        super().__init__(setup)
        if self.online_probe:
            raise ConfigError("Supervised training has its own classifier; an online probe would only copy it: "
                              "set config.online_probe.enabled=False.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"method.label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = label_smoothing

    def build_model(self, rngs: nnx.Rngs) -> ClassifierModel:
        return ClassifierModel(self.make_encoder(rngs), self.num_classes, rngs=rngs)

    def loss(self, model, batch, step):
        logits = model(batch["image"], train=True)
        loss, accuracy = classification_loss(logits, batch["label"], self.label_smoothing)
        return LossOutput(loss, {"accuracy": accuracy})

    def predict(self, model: ClassifierModel, images: jax.Array) -> jax.Array:
        return model(images, train=False)
