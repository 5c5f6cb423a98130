"""What evaluators measure: representations of the held-out data, extracted over the mesh."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from vision_jax import console, parallel
from vision_jax.data import pipeline
from vision_jax.data.sources import Source


@dataclasses.dataclass
class Representation:
    """A named row of the results table: its outputs by name ('features' [batch, dim] for kNN and
    probes, 'logits' [batch, classes] for classifiers), each a jitted global image batch -> array."""

    name: str
    outputs: dict[str, Callable[[jax.Array], jax.Array]]


class EvalData:
    """The evaluation splits: `train` (what probes fit) and `test` (held out, what they score).

    Features are extracted once per (representation name, split) and cached, so an EvalData
    lives for one evaluation only: the next evaluation's weights differ under the same name.
    """

    def __init__(self, sources: dict[str, Source], preprocess: Callable, mesh, global_batch: int):
        self.sources = sources
        self.preprocess = preprocess
        self.mesh = mesh
        self.global_batch = global_batch
        self._cache: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_classes(self) -> int:
        return self.sources["train"].num_classes

    def outputs(self, representation: Representation, output: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(the representation's `output` for every example of `split`, their labels)."""
        key = (representation.name, output, split)
        if key not in self._cache:
            self._cache[key] = self._run(representation.outputs[output], self.sources[split],
                                         f"{representation.name} {output} of {split}")
        return self._cache[key]

    def _run(self, fn: Callable, source: Source, description: str) -> tuple[np.ndarray, np.ndarray]:
        sharding = parallel.batch_sharding(self.mesh)
        outputs, labels, masks = [], [], []
        batches = pipeline.eval_batches(source, self.preprocess, global_batch=self.global_batch,
                                        process_index=jax.process_index(), process_count=jax.process_count())
        for local in console.bar(batches, total=-(-source.num_examples // self.global_batch),
                                 description=description, enabled=jax.process_index() == 0, leave=False):
            batch = parallel.to_global_batch(local, sharding)
            gathered = multihost_utils.process_allgather(
                {"out": fn(batch["image"]), "label": batch["label"], "mask": batch["mask"]}, tiled=True)
            outputs.append(gathered["out"])
            labels.append(gathered["label"])
            masks.append(gathered["mask"])
        keep = np.concatenate(masks) > 0
        return np.concatenate(outputs)[keep].astype(np.float32), np.concatenate(labels)[keep]
