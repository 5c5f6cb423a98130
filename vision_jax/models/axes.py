"""Logical axis names: every parameter says what its dimensions mean, not where they live.

Models create parameters with `partitioned(init, names)` (one name per dimension, None for a
dimension no rule should split). `vision_jax.parallel` maps these names onto mesh axes with a
config rule set (replicate / fsdp / tensor_parallel), so sharding is decided in one place and the
model code never changes between data parallel, FSDP and tensor parallel runs.
"""
from __future__ import annotations

from typing import Callable

from flax import nnx

EMBED = "embed"  # a model's feature width: ViT hidden size, head input features
MLP = "mlp"  # the hidden width of an MLP (ViT MLP, projection heads)
HEADS = "heads"  # attention heads
HEAD_DIM = "head_dim"  # features per attention head
CONV_IN = "conv_in"  # input channels of a convolution
CONV_OUT = "conv_out"  # output channels of a convolution
CLASSES = "classes"  # classifier outputs
NORM = "norm"  # scale/bias of a normalization layer (features of the layer it normalizes)

ALL = (EMBED, MLP, HEADS, HEAD_DIM, CONV_IN, CONV_OUT, CLASSES, NORM)


def partitioned(init: Callable, names: tuple[str | None, ...]) -> Callable:
    """Wraps an initializer so the parameter it creates carries logical axis `names`."""
    unknown = [n for n in names if n is not None and n not in ALL]
    if unknown:
        raise ValueError(f"Unknown logical axis name(s) {unknown}; known: {ALL}.")
    return nnx.with_partitioning(init, tuple(names))
