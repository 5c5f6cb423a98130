"""Method registry: what is learned. A method builds one NNX module holding every trained part
and defines its loss; it knows nothing about loops, devices or files (see methods/base.py)."""
from vision_jax.registry import Registry

METHODS = Registry("method")

from vision_jax.methods import byol, dcgan, dino, mae, mocov3, simclr, supervised  # noqa: E402,F401
