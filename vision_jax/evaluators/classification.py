"""Accuracy of the model's own classifier on the held-out split (supervised methods)."""
import numpy as np

from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation


@EVALUATORS.register("classification")
class Classification:
    def __call__(self, representation: Representation, data: EvalData) -> dict[str, float]:
        if representation.logits is None:
            return {}  # feature-only representations (raw pixels, SSL encoders) have no classifier
        logits, labels = data.logits(representation, "test")
        return {"top1": float(np.mean(np.argmax(logits, -1) == labels) * 100)}
