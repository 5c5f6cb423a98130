"""Model registry: configs name an encoder (`config.model.name`) plus its options.

Encoders are Flax NNX modules called as `encoder(images, train=bool)` that return pooled
features of size `encoder.num_features`; methods put heads on top.
"""
import flax

from vision_jax.registry import Registry

# Parameters carry logical axis names (models/axes.py) as metadata only: the trainer places them
# with jit out_shardings from the config's rules, so Flax must not try to shard them eagerly.
flax.config.update("flax_always_shard_variable", False)

MODELS = Registry("model")

# Importing the modules registers their models.
from vision_jax.models import cnn, fast_cifar, resnet  # noqa: E402,F401
from vision_jax.models.heads import DINOHead, LinearClassifier, MLPHead, ProjectionHead  # noqa: E402,F401
from vision_jax.models import dcgan  # noqa: E402,F401
from vision_jax.models import vit  # noqa: E402,F401
