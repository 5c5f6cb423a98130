"""vision_jax: vision pretraining in JAX.

Entry points: `python -m vision_jax.train` and `python -m vision_jax.evaluate`.
"""
from vision_jax import xla_flags as _xla_flags

_xla_flags.add_default_xla_flags()  # before any JAX computation starts the backend
