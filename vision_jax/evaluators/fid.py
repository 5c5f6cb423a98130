"""FID and KID of a generator's samples against real images (evaluator 'fid').

    c.evaluators.fid = dict(features="checkpoint:/path/to/supervised_cifar10", num_samples=10_000)

Reads the 'samples' output of a generative method (images from integer seeds 0..num_samples-1,
so every evaluation of every row sees the same latents) and compares their features with those
of every image of the real split (`real_split`: 'test' = config.data.eval_test_split, or 'train'
= eval_train_split). The features are a network's (evaluators/feature_networks.py): Inception-v3
for FIDs comparable with published ones, or a vision_jax checkpoint's encoder, which runs
everywhere and is labelled as such in every column. Metrics per row: FID, and KID x 1000 as the
mean and std over `kid_subsets` subsets (evaluators/distances.py). With `real_floor`, the final
table also has the floor: the same scores between the two halves of the real split, a row of its
own (half as many samples on each side as the split, so its FID carries a little more bias).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from vision_jax import parallel
from vision_jax.errors import ConfigError
from vision_jax.evaluators import EVALUATORS, distances
from vision_jax.evaluators.feature_networks import feature_network
from vision_jax.evaluators.features import EvalData, Representation

SPLITS = ("test", "train")


@EVALUATORS.register("fid")
class FID:
    output = "samples"

    def __init__(self, features: str = "", num_samples: int = 10_000, real_split: str = "test",
                 kid_subsets: int = 100, kid_subset_size: int = 1000, real_floor: bool = True):
        if real_split not in SPLITS:
            raise ConfigError(f"evaluators.fid.real_split={real_split!r}: use 'test' (config.data.eval_test_split) "
                              f"or 'train' (config.data.eval_train_split).")
        if num_samples < 2 or kid_subsets < 1 or kid_subset_size < 2:
            raise ConfigError("evaluators.fid: num_samples and kid_subset_size must be >= 2, kid_subsets >= 1.")
        self.network = feature_network(features)
        self.num_samples, self.real_split, self.real_floor = num_samples, real_split, real_floor
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self._real: np.ndarray | None = None  # the real split's features: the same at every evaluation
        self._real_description = ""

    def __call__(self, representation: Representation, data: EvalData) -> dict[str, float]:
        return self._scores(self._generated_features(representation.outputs[self.output], data),
                            self._real_features(data))

    def reference_rows(self, data: EvalData) -> dict[str, dict[str, float]]:
        """The floor: the real split's first half against its second half."""
        if not self.real_floor:
            return {}
        real = self._real_features(data)
        half = len(real) // 2
        return {f"real data (two halves of {self._real_description})": self._scores(real[:half], real[half:2 * half])}

    def protocol(self) -> str:
        """What the columns measured (after an evaluation)."""
        _, description = self.network.loaded
        return (f"FID and KID (x 1000; mean and std over {self.kid_subsets} subsets of up to "
                f"{self.kid_subset_size}): {self.num_samples} generated images against the {len(self._real)} "
                f"real images of {self._real_description}, in {description}"
                + ("; the floor row compares the two halves of those real images" if self.real_floor else ""))

    # --- features ----------------------------------------------------------------------------

    def _real_features(self, data: EvalData) -> np.ndarray:
        if self._real is None:
            extract, _ = self.network.loaded
            source = data.sources[self.real_split]
            self._real, _ = data.outputs(Representation(f"real ({self.network.label})", {"features": extract}),
                                         "features", self.real_split)
            self._real_description = source.description
        return self._real

    def _generated_features(self, samples, data: EvalData) -> np.ndarray:
        """Features of the samples of seeds 0..num_samples-1, made in global batches over the mesh."""
        extract, _ = self.network.loaded
        sharding = parallel.batch_sharding(data.mesh)
        batch, count = data.global_batch, jax.process_count()
        features = []
        for start in range(0, self.num_samples, batch):
            seeds = np.arange(start, start + batch, dtype=np.int32).reshape(count, -1)[jax.process_index()]
            images = samples(jax.make_array_from_process_local_data(sharding, seeds))
            features.append(multihost_utils.process_allgather(extract(images), tiled=True))
        return np.concatenate(features)[: self.num_samples].astype(np.float32)

    def _scores(self, generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
        kid_mean, kid_std = distances.kid(generated, real, self.kid_subsets, self.kid_subset_size)
        label = self.network.label
        return {f"FID ({label})": distances.fid(generated, real),
                f"KID x1000 ({label})": 1000 * kid_mean, f"KID std x1000 ({label})": 1000 * kid_std}
