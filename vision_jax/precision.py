"""Compute and parameter dtypes from `config.precision`."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vision_jax.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
    """'auto' is bfloat16 where the backend has fast bf16 matmuls (GPU, TPU) and float32 on CPU."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return _lookup(name, "config.precision.compute")


def param_dtype(name: str):
    return _lookup(name, "config.precision.params")


def _lookup(name: str, what: str):
    if name not in DTYPES:
        raise ConfigError(f"{what}={name!r} is not a dtype this codebase trains in; use one of "
                          f"{', '.join(DTYPES)}{' or auto' if 'compute' in what else ''}.")
    return DTYPES[name]
