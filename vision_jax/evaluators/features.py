"""What evaluators measure: representations of the held-out data, extracted over the mesh."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from vision_jax import parallel
from vision_jax.data import pipeline
from vision_jax.data.sources import Source


@dataclasses.dataclass
class Representation:
    """A named way of turning images into features (and, for classifiers, logits)."""

    name: str
    features: Callable[[jax.Array], jax.Array]  # jitted: global image batch -> [batch, dim]
    logits: Callable[[jax.Array], jax.Array] | None = None


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

    def features(self, representation: Representation, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self._extract(representation.name, "features", representation.features, split)

    def logits(self, representation: Representation, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self._extract(representation.name, "logits", representation.logits, split)

    def _extract(self, name: str, kind: str, fn: Callable, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = (name, kind, split)
        if key not in self._cache:
            self._cache[key] = self._run(fn, self.sources[split])
        return self._cache[key]

    def _run(self, fn: Callable, source: Source) -> tuple[np.ndarray, np.ndarray]:
        sharding = parallel.batch_sharding(self.mesh)
        outputs, labels, masks = [], [], []
        for local in pipeline.eval_batches(source, self.preprocess, global_batch=self.global_batch,
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count()):
            batch = parallel.to_global_batch(local, sharding)
            gathered = multihost_utils.process_allgather(
                {"out": fn(batch["image"]), "label": batch["label"], "mask": batch["mask"]}, tiled=True)
            outputs.append(gathered["out"])
            labels.append(gathered["label"])
            masks.append(gathered["mask"])
        keep = np.concatenate(masks) > 0
        return np.concatenate(outputs)[keep].astype(np.float32), np.concatenate(labels)[keep]
