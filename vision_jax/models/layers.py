"""Layer constructors shared by the models, so every model initializes and names its parameters alike.

Each constructor creates its parameters with logical axis names (models/axes.py) and takes the
framework's `dtype` (what the layer computes in) and `param_dtype` (what its parameters are stored
in).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.models import conv as conv_impl
from vision_jax.models.axes import CONV_IN, CONV_OUT, NORM, partitioned

Dtype = Any
Initializer = Callable[..., jax.Array]
CONV_KERNEL_AXES = (None, None, CONV_IN, CONV_OUT)


def flat_normal(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32, *, mean: float = 0.0,
                std: float = 1.0) -> jax.Array:
    """mean + std * N(0, 1) of `shape`, drawn as a flat vector and reshaped.

    The same values as a draw of `shape` (with JAX's default threefry_partitionable, a draw's
    values depend only on the flat index), but XLA:CPU compiles a 4-D normal draw in 1-6 s per
    kernel shape and a flat one in about 0.4 s, which made building the small CNN take ~9 s of CPU
    instead of ~1 s (jax 0.10.2).
    """
    return (mean + std * jax.random.normal(key, (math.prod(shape),), jnp.float32)).reshape(shape).astype(dtype)


def conv_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """He (fan-out) normal init N(0, 2 / (kh * kw * cout)) for HWIO kernels, as torchvision's
    `kaiming_normal_(mode="fan_out", nonlinearity="relu")` and the SimCLR reference."""
    fan_out = math.prod(shape[:-2]) * shape[-1]
    return flat_normal(key, shape, dtype, std=math.sqrt(2.0 / fan_out))


def conv(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, *,
         padding: int | tuple[int, int] | None = None, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32, kernel_init: Initializer = conv_init,
         rngs: nnx.Rngs) -> nnx.Conv:
    """A bias-free convolution padded by kernel // 2 on each side, as torchvision's.

    `kernel` and `padding` are PyTorch's Conv2d arguments: one size for both axes or (height,
    width); `padding` (each side of each axis) defaults to kernel // 2. It runs
    `models/conv.py`'s convolution: XLA's, or on CPU one with a faster kernel gradient.
    """
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    if padding is None:
        padding = (kernel[0] // 2, kernel[1] // 2)
    padding = (padding, padding) if isinstance(padding, int) else padding
    return nnx.Conv(cin, cout, kernel, strides=(stride, stride), padding=tuple((p, p) for p in padding),
                    use_bias=False, kernel_init=partitioned(kernel_init, CONV_KERNEL_AXES),
                    dtype=dtype, param_dtype=param_dtype, conv_general_dilated=conv_impl.conv_general_dilated,
                    rngs=rngs)


def max_pool(x: jax.Array, window: int) -> jax.Array:
    """Max pooling of NHWC `x` over non-overlapping `window` x `window` tiles (stride = window, no
    padding: rows and columns past the last whole tile are dropped).

    The same values as `nnx.max_pool(x, (window, window), strides=(window, window))`, written as a
    max over a reshape: XLA:CPU runs the gradient of `reduce_window` as a select-and-scatter loop,
    and that of a reduction as elementwise work (fast_cifar's train step: 1.2-1.3x images/s, jax
    0.10.2, bench/train_step.py). The gradients agree too, except that on exactly tied maxima the
    reduction splits the gradient among them where select-and-scatter gives it to the first.
    """
    b, h, w, c = x.shape
    h, w = h - h % window, w - w % window
    tiles = x[:, :h, :w].reshape(b, h // window, window, w // window, window, c)
    return jnp.max(tiles, axis=(2, 4))


def linear(din: int, dout: int, names: tuple[str | None, str | None], *, use_bias: bool = True,
           dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
           kernel_init: Initializer = nnx.initializers.lecun_normal(),
           bias_init: Initializer = nnx.initializers.zeros_init(), rngs: nnx.Rngs) -> nnx.Linear:
    """A Linear layer whose kernel carries logical `names` and whose bias follows its output axis."""
    return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=partitioned(kernel_init, names),
                      bias_init=partitioned(bias_init, (names[1],)), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)


class BatchNorm(nnx.BatchNorm):
    """BatchNorm with PyTorch's constants whose statistics and normalization run in float32.

    Half-precision batch statistics lose too much (a variance is a difference of large squares),
    so the layer always normalizes in float32 and only casts its output to the compute `dtype`.
    momentum=0.9 here is PyTorch's momentum=0.1, and eps=1e-5 is PyTorch's, which the recipes
    (and pretrained torchvision/timm weights) assume.
    """

    def __init__(self, num_features: int, *, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32,
                 scale_init: Initializer = nnx.initializers.ones_init(), affine: bool = True,
                 epsilon: float = 1e-5, rngs: nnx.Rngs):
        """`affine=False`: no learned scale and bias (PyTorch's BatchNorm1d(affine=False)).
        `epsilon` other than PyTorch's default is for published weights trained with another."""
        super().__init__(num_features, momentum=0.9, epsilon=epsilon, dtype=jnp.float32,
                         use_scale=affine, use_bias=affine,
                         param_dtype=param_dtype, scale_init=partitioned(scale_init, (NORM,)),
                         bias_init=partitioned(nnx.initializers.zeros_init(), (NORM,)), rngs=rngs)
        self.output_dtype = dtype

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        return super().__call__(x, use_running_average, mask=mask).astype(self.output_dtype)
