"""Model registry: configs name an encoder (`config.model.name`) plus its options.

Encoders are Flax NNX modules called as `encoder(images, train=bool)` that return pooled
features of size `encoder.num_features`; methods put heads on top.
"""
from vision_jax.registry import Registry

MODELS = Registry("model")

# Importing the modules registers their models.
from vision_jax.models import cnn, resnet  # noqa: E402,F401
from vision_jax.models.heads import LinearClassifier, ProjectionHead  # noqa: E402,F401
