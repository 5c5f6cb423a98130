"""Accuracy of a representation's own classifier on the held-out split (supervised methods, online probes)."""
import numpy as np

from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation


@EVALUATORS.register("classification")
class Classification:
    output = "logits"

    def __call__(self, representation: Representation, data: EvalData) -> dict[str, float]:
        logits, labels = data.outputs(representation, self.output, "test")
        return {"top1": float(np.mean(np.argmax(logits, -1) == labels) * 100)}
