"""The networks whose features FID and KID compare, named by a string (the FID evaluator's `features`):

- 'inception:PATH': pytorch-fid's Inception-v3 (its FID variant, pool3, 2048-d) with the weights
  in PATH (`vision_jax.models.inception.load_fid_inception`); FIDs in these features are
  comparable with published ones.
- 'checkpoint:WORKDIR': the 'features' output of the latest checkpoint of a vision_jax run in
  WORKDIR (read-only; e.g. a supervised CIFAR-10 classifier): runs everywhere, but its numbers
  are "FID (vision_jax <name> features)", comparable only with FIDs in the same features.

Both take images in [-1, 1] (what generators make and the GAN recipes' evaluation preprocessing
gives) as a global batch [B, H, W, C]; a checkpoint's network gets them resized to its training
size and standardized if it was trained so. Paths are checked when the evaluator is built; the
network loads on first use.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp

from vision_jax.errors import ConfigError, MissingDataError

KINDS = ("inception", "checkpoint")
INCEPTION_SOURCE = ("pytorch-fid's pt_inception-2015-12-05-6726825d.pth (github.com/mseitzer/pytorch-fid releases), "
                    "converted with python -m vision_jax.convert_fid_inception")


@dataclasses.dataclass
class FeatureNetwork:
    kind: str
    path: str

    @property
    def label(self) -> str:
        """How result columns name the features."""
        if self.kind == "inception":
            return "Inception-v3 pool3"
        return f"vision_jax {os.path.basename(os.path.normpath(self.path))} features"

    @functools.cached_property
    def loaded(self) -> tuple[Callable[[jax.Array], jax.Array], str]:
        """(images [B, H, W, C] in [-1, 1] -> features [B, D], a description of them for the results'
        protocol); the network loads on first use."""
        if self.kind == "inception":
            from vision_jax.models.inception import load_fid_inception  # the port of pytorch-fid's network

            # Already jitted with the weights as arguments; another jit would bake them in as constants.
            return (load_fid_inception(self.path),
                    f"Inception-v3 pool3 features (pytorch-fid's FID network, weights {self.path})")
        return _checkpoint_features(self.path)


def feature_network(spec: str) -> FeatureNetwork:
    """The network `spec` names; a missing file or workdir is an error now, before any compute."""
    kind, _, path = spec.partition(":")
    if kind not in KINDS or not path:
        raise ConfigError(f"FID features {spec!r}: use 'checkpoint:WORKDIR' (a vision_jax run's encoder, e.g. a "
                          f"supervised classifier) or 'inception:PATH' (weights from {INCEPTION_SOURCE}).")
    if kind == "inception" and not os.path.isfile(path):
        raise MissingDataError(f"FID weights file {path} does not exist: download {INCEPTION_SOURCE} and name the "
                               f"converted file in features='inception:PATH'.")
    if kind == "checkpoint" and not os.path.isfile(os.path.join(path, "config.json")):
        raise MissingDataError(f"FID features 'checkpoint:{path}': {path} holds no vision_jax run (no config.json); "
                               f"train one first, e.g. python -m vision_jax.train "
                               f"--config=configs/supervised_digits.py --workdir={path}")
    return FeatureNetwork(kind, path)


def _checkpoint_features(workdir: str) -> tuple[Callable[[jax.Array], jax.Array], str]:
    """(the 'features' output of the latest checkpoint in `workdir`, a description of it)."""
    from vision_jax import checkpoint, trainer  # the trainer imports the evaluators: import it on use
    from vision_jax import config as config_lib
    from vision_jax.data.ops import IMAGENET_MEAN, IMAGENET_STD

    config = config_lib.load_config(os.path.join(workdir, "config.json"))
    run = trainer.Run(config, workdir)
    if "features" not in run.method.output_names:
        raise ConfigError(f"The run in {workdir} trained {config.method.name!r}, which gives no 'features' "
                          f"(it gives {', '.join(run.method.output_names)}); name a run of an encoder, e.g. a "
                          f"supervised classifier.")
    checkpointer = checkpoint.Checkpointer(workdir, every_steps=0, keep=1, read_only=True)
    step = checkpointer.latest_step()
    if step is None:
        raise MissingDataError(f"FID features: no checkpoint in {checkpointer.directory}; train the run first.")
    state = run.restore_or_init(checkpointer)
    checkpointer.close()
    (representation,) = run.representations(config.method.name, state, with_online_probe=False)
    features = representation.outputs["features"]
    size, eval_augment = config.data.image_size, config.data.eval_augment
    if eval_augment.name != "none":
        raise ConfigError(f"FID features from {workdir}: its evaluation preprocessing is {eval_augment.name!r}; "
                          f"only runs evaluated with 'none' (resize and value range) can be fed generated images.")
    standardize = bool(eval_augment.get("normalize", False))

    @jax.jit
    def as_trained(images):
        if size and images.shape[1:3] != (size, size):
            images = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear")
        if standardize:  # ImageNet mean and std, as data/ops.py's `normalize`
            images = ((images + 1.0) / 2.0 - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        return images

    description = (f"the pooled 'features' output of {config.method.name}/{config.model.name} at step {step} in "
                   f"{workdir} (vision_jax features, not Inception's)")
    return (lambda images: features(as_trained(images))), description
