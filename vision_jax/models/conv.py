"""The models' 2-D convolution: XLA's, or on CPU the same convolution with a faster kernel gradient.

Two things make XLA:CPU's convolutions slow (jax 0.10.2, measured with bench/conv_cpu.py and
bench/train_step.py; README, "Measured train step"):

- XLA hands each convolution to YNNPACK, which runs it on one thread: a 2-core machine leaves a
  core idle during every forward pass and input gradient. XLA's Eigen convolution uses every
  core, and `import vision_jax` selects it (vision_jax/xla_flags.py: an XLA_FLAGS option, which
  a user's own setting overrides).
- A convolution's kernel gradient dW[i, j] = sum x[.. + (i, j)] dy is a convolution whose window
  is as large as the image, which XLA runs well for overlapping windows (3x3, 4x4 stride 2) but
  badly for transposed convolutions (DCGAN's generator: 4-38x slower per layer) and for strided windows
  that do not overlap (1x1 stride 2 shortcuts, patch embeddings: 1.0-1.5x). The 'cpu' kernel
  gradient is one matmul per chunk of a few images, dW = im2col(x)^T dy, with the chunk's im2col
  built transposed ([kh * kw * C_in, pixels], the operand order XLA hands to its matmul) and
  small enough to stay in cache: a whole-batch im2col is 9x the activation, and the copy alone
  costs more than the matmul on a 2-core machine.

`impl` ('auto' | 'xla' | 'cpu') is chosen with `set_conv_impl` and read when a function is traced
(so set it before jitting). 'xla' is XLA's convolution everywhere; 'cpu' takes the matmul kernel
gradient for every convolution it covers; 'auto' takes it on a single CPU device for the layers
where it is the faster one (transposed convolutions, and strided windows that do not overlap),
and is XLA's convolution everywhere else: GPU/TPU keep cuDNN's/XLA's, and with several devices
the batch is split across them, which the chunked kernel gradient would have to gather.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from vision_jax.errors import ConfigError

IMPLS = ("auto", "xla", "cpu")
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))
# Upper bound on one chunk's transposed im2col; the fastest chunks measured were 2-10 MiB
# (L2 is 2 MiB per core on the machine measured, its L3 shared).
_CHUNK_BYTES = 8 * 2**20

_impl = "auto"


def set_conv_impl(impl: str) -> None:
    """Chooses the convolution for functions traced from now on: 'auto', 'xla' or 'cpu'."""
    global _impl
    if impl not in IMPLS:
        raise ConfigError(f"conv_impl {impl!r} is unknown; choose one of {', '.join(IMPLS)} "
                          f"(e.g. --config.conv_impl=xla).")
    _impl = impl


def resolved_conv_impl() -> str:
    """'xla' or 'cpu': what a convolution traced now runs ('cpu' under 'auto': the matmul kernel
    gradient for the layers where it is the faster one, XLA's convolution for the others)."""
    if _impl != "auto":
        return _impl
    return "cpu" if jax.default_backend() == "cpu" and jax.device_count() == 1 else "xla"


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
                         preferred_element_type=None, out_sharding=None) -> jax.Array:
    """`jax.lax.conv_general_dilated`, with the 'cpu' kernel gradient where it applies.

    The 'cpu' path covers 2-D NHWC/HWIO convolutions without feature groups, strided or
    transposed (input dilation, as `nnx.Conv(input_dilation=s)` for a transposed convolution),
    with kernel dilation only when the input is not dilated: every conv of the models here.
    Anything else runs XLA's convolution under either impl.
    """
    xla = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation,
                            rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
                            precision, preferred_element_type, out_sharding=out_sharding)
    if resolved_conv_impl() == "xla" or lhs.ndim != 4 or preferred_element_type is not None:
        return xla()
    strides, lhs_dilation, rhs_dilation = (tuple(v or (1, 1)) for v in (window_strides, lhs_dilation, rhs_dilation))
    transposed = lhs_dilation != (1, 1)
    if (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC or feature_group_count != 1
            or batch_group_count != 1 or (transposed and (strides != (1, 1) or rhs_dilation != (1, 1)))):
        return xla()
    if isinstance(padding, str):
        dilated_window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], dilated_window, strides, padding)
    geometry = _Geometry(strides, tuple(map(tuple, padding)), lhs_dilation, rhs_dilation)
    if _impl == "auto" and not _matmul_kernel_grad_is_faster(rhs.shape[:2], geometry):
        return xla()
    return _conv(lhs, rhs, geometry, precision)


class _Geometry(NamedTuple):
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    lhs_dilation: tuple[int, int]
    rhs_dilation: tuple[int, int]


def _matmul_kernel_grad_is_faster(window: tuple[int, int], geometry: _Geometry) -> bool:
    """Where bench/conv_cpu.py measured the matmul kernel gradient ahead of XLA's (with Eigen's
    convolutions): transposed convolutions, and strided windows that do not overlap (kernel <=
    stride). XLA's is ahead on overlapping windows (3x3 and 4x4 at stride 1 or 2: 0.75-0.9x) and
    level on 1x1 stride 1."""
    if geometry.lhs_dilation != (1, 1):
        return True
    return all(s > 1 and (k - 1) * d + 1 <= s for k, s, d in zip(window, geometry.strides, geometry.rhs_dilation))


def _xla_conv(x, kernel, geometry: _Geometry, precision):
    return lax.conv_general_dilated(x, kernel, geometry.strides, geometry.padding, geometry.lhs_dilation,
                                    geometry.rhs_dilation, _NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, geometry, precision):
    return _xla_conv(x, kernel, geometry, precision)


def _conv_fwd(x, kernel, geometry, precision):
    return _xla_conv(x, kernel, geometry, precision), (x, kernel)


def _conv_bwd(geometry, precision, residuals, dy):
    x, kernel = residuals
    conv_of_x = functools.partial(_xla_conv, kernel=kernel, geometry=geometry, precision=precision)
    (dx,) = jax.linear_transpose(conv_of_x, jax.ShapeDtypeStruct(x.shape, x.dtype))(dy)
    return dx, _kernel_grad(x, dy, kernel.shape, geometry).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _kernel_grad(x, dy, kernel_shape, geometry: _Geometry) -> jax.Array:
    """dW in float32, from sums over pixels of input patches times output gradients."""
    kh, kw, cin, cout = kernel_shape
    if geometry.lhs_dilation == (1, 1):
        # dW[i, j] = sum over output pixels p of x[stride * p + dilation * (i, j) - pad_lo] dy[p]^T
        return _patch_products(x, dy, (kh, kw), geometry.strides, geometry.padding,
                               geometry.rhs_dilation).reshape(kernel_shape)
    # A transposed convolution (input dilated by s): only the pixels q of x itself contribute,
    # dW[i, j] = sum_q x[q] dy[s * q + pad_lo - (i, j)]^T: patches of dy taken with stride s,
    # the taps in reverse order, the roles of x and dy swapped.
    (lo_h, hi_h), (lo_w, hi_w) = geometry.padding
    swapped = ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w))
    sums = _patch_products(dy, x, (kh, kw), geometry.lhs_dilation, swapped, (1, 1))
    return sums.reshape(kh, kw, cout, cin)[::-1, ::-1].transpose(0, 1, 3, 2)


def _patch_products(a, b, window, strides, padding, dilation) -> jax.Array:
    """sum over pixels p of patch_a(p) b[p]^T, [kh * kw * C_a, C_b] in float32: a's patches at b's
    pixels, summed over chunks of images (a scan keeps one chunk's patches live, in cache)."""
    kh, kw = window
    n, ho, wo, cb = b.shape
    ca = a.shape[-1]
    chunk = _images_per_chunk(n, ho * wo * kh * kw * ca * a.dtype.itemsize)
    a_chunks = a.reshape(n // chunk, chunk, *a.shape[1:])
    b_chunks = b.reshape(n // chunk, chunk * ho * wo, cb)

    def add_chunk(total, chunk_pair):
        a_chunk, b_chunk = chunk_pair
        patches_t = _transposed_patches(a_chunk, window, strides, padding, dilation, (ho, wo))
        return total + jnp.dot(patches_t, b_chunk, preferred_element_type=jnp.float32), None

    total, _ = lax.scan(add_chunk, jnp.zeros((kh * kw * ca, cb), jnp.float32), (a_chunks, b_chunks))
    return total


def _images_per_chunk(n: int, bytes_per_image: int) -> int:
    """The largest divisor of the batch whose im2col fits in _CHUNK_BYTES (at least one image)."""
    fits = max(1, _CHUNK_BYTES // bytes_per_image)
    return max(d for d in range(1, min(n, fits) + 1) if n % d == 0)


def _transposed_patches(x, window, strides, padding, dilation, out_size) -> jax.Array:
    """[kh * kw * C, N * Ho * Wo]: row (i, j, c) holds input channel c under kernel tap (i, j) at
    every output pixel; the rows are in the order of an HWIO kernel's first three axes."""
    n, _, _, c = x.shape
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = window, strides, dilation, out_size
    # Channels first, so that each tap is a strided copy of whole image rows.
    xt = lax.pad(x.transpose(3, 0, 1, 2), jnp.zeros((), x.dtype),
                 ((0, 0, 0), (0, 0, 0), (*padding[0], 0), (*padding[1], 0)))
    taps = [lax.slice(xt, (0, 0, i * dh, j * dw), (c, n, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1),
                      (1, 1, sh, sw))
            for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(kh * kw * c, n * ho * wo)
