"""Accuracy of a representation's own classifier on the held-out split (supervised methods, online probes)."""
import numpy as np

from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation


@EVALUATORS.register("classification")
class Classification:
    """top1 and top5 accuracy (%) and, with `per_class`, each class's top-1 accuracy (`class_<k>`: the
    share of that class's held-out examples predicted right)."""

    output = "logits"

    def __init__(self, per_class: bool = False):
        self.per_class = per_class

    def __call__(self, representation: Representation, data: EvalData) -> dict[str, float]:
        logits, labels = data.outputs(representation, self.output, "test")
        results = {"top1": float(np.mean(np.argmax(logits, -1) == labels) * 100)}
        if logits.shape[-1] > 5:
            # The true class's rank: how many classes score strictly higher (ties count for the true class).
            rank = np.sum(logits > np.take_along_axis(logits, labels[:, None], axis=-1), axis=-1)
            results["top5"] = float(np.mean(rank < 5) * 100)
        if self.per_class:
            correct = np.argmax(logits, -1) == labels
            for k in np.unique(labels):
                results[f"class_{k}"] = float(np.mean(correct[labels == k]) * 100)
        return results
