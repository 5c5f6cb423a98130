"""The models' 2-D convolution: XLA's, or on CPU the same convolution with faster gradients.

Three things make XLA:CPU's convolutions slow (jax 0.10.2, measured with bench/conv_cpu.py and
bench/train_step.py; README, "Measured train step"):

- XLA hands each convolution to YNNPACK, which runs it on one thread: a 2-core machine leaves a
  core idle during every forward pass and input gradient. XLA's Eigen convolution uses every
  core, and `import vision_jax` selects it (vision_jax/xla_flags.py: an XLA_FLAGS option, which
  a user's own setting overrides).
- A convolution's kernel gradient dW[i, j] = sum x[.. + (i, j)] dy is a convolution whose window
  is as large as the image, which XLA runs well for overlapping windows (3x3, 4x4 stride 2) but
  badly for transposed convolutions (DCGAN's generator: 4-38x slower per layer) and for strided windows
  that do not overlap (1x1 stride 2 shortcuts, patch embeddings: 1.0-1.5x). The matmul kernel
  gradient is one matmul per chunk of a few images, dW = im2col(x)^T dy, with the chunk's im2col
  built transposed ([kh * kw * C_in, pixels], the operand order XLA hands to its matmul) and
  small enough to stay in cache: a whole-batch im2col is 9x the activation, and the copy alone
  costs more than the matmul on a 2-core machine. A pointwise (1x1 stride 1) layer needs no
  im2col: its kernel gradient is one matmul contracting x and dy over their rows, which XLA:CPU
  reads without a copy, where its own kernel gradient transposes x to batch-last first.
- The input gradient of a strided convolution is a convolution of dy dilated by the stride, and
  XLA:CPU multiplies the inserted zeros too. The phase input gradient splits the strided
  convolution into one stride-1 convolution per phase of the stride (_phase_conv) and transposes
  that: no zeros, the same sums.

`impl` ('auto' | 'xla' | 'cpu') is chosen with `set_conv_impl` and read when a function is traced
(so set it before jitting). 'xla' is XLA's convolution everywhere; 'cpu' takes the matmul kernel
gradient and (strided layers) the phase input gradient for every convolution it covers; 'auto'
takes each on a single CPU device for the layers where it is the faster one
(_matmul_kernel_grad_is_faster, _phase_input_grad_is_faster), and is XLA's convolution everywhere
else: GPU/TPU keep cuDNN's/XLA's, and with several devices the batch is split across them, which
the chunked kernel gradient would have to gather. The forward pass is XLA's convolution in every
case, so outputs are bitwise the same; the gradients agree to float32 rounding.
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
    """`jax.lax.conv_general_dilated`, with the CPU gradients where they apply.

    The matmul kernel gradient covers 2-D NHWC/HWIO convolutions without feature groups, strided
    or transposed (input dilation, as `nnx.Conv(input_dilation=s)` for a transposed convolution),
    with kernel dilation only when the input is not dilated: every conv of the models here. The
    phase input gradient covers the strided ones without dilation. Anything else runs XLA's
    convolution under every impl.
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
    if _impl == "auto":
        gradients = _Gradients(kernel_by_matmul=_matmul_kernel_grad_is_faster(rhs.shape[:2], geometry),
                               input_by_phases=_phase_input_grad_is_faster(lhs.shape, geometry))
    else:
        gradients = _Gradients(kernel_by_matmul=True, input_by_phases=_phases_apply(geometry))
    if gradients == _Gradients(False, False):
        return xla()
    return _conv(lhs, rhs, geometry, precision, gradients)


class _Geometry(NamedTuple):
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    lhs_dilation: tuple[int, int]
    rhs_dilation: tuple[int, int]


class _Gradients(NamedTuple):
    """How the backward pass computes each gradient; XLA's transposed convolution where False."""
    kernel_by_matmul: bool  # dW = im2col(x)^T dy, in chunks (_kernel_grad)
    input_by_phases: bool  # dx through the stride-1 phase convolutions (_phase_conv)


def _matmul_kernel_grad_is_faster(window: tuple[int, int], geometry: _Geometry) -> bool:
    """Where bench/conv_cpu.py measured the matmul kernel gradient ahead of XLA's (with Eigen's
    convolutions): transposed convolutions, and strided windows that do not overlap (kernel <=
    stride). XLA's is ahead on overlapping windows (3x3 and 4x4 at stride 1 or 2: 0.75-0.9x).
    Pointwise (1x1 stride 1) layers take the one-matmul gradient of _kernel_grad, which reads x
    as it lies, where XLA's transposes x to batch-last first (README, "Measured train step")."""
    if geometry.lhs_dilation != (1, 1) or _is_pointwise(window, geometry):
        return True
    return all(s > 1 and (k - 1) * d + 1 <= s for k, s, d in zip(window, geometry.strides, geometry.rhs_dilation))


def _is_pointwise(window: tuple[int, int], geometry: _Geometry) -> bool:
    """A 1x1 window at stride 1, neither padded nor dilated: a matmul over the pixels."""
    return window == (1, 1) and geometry == _Geometry((1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1))


def _phases_apply(geometry: _Geometry) -> bool:
    """Whether _phase_conv can compute the convolution: strided, neither input nor kernel dilated."""
    return (geometry.strides != (1, 1) and geometry.lhs_dilation == (1, 1)
            and geometry.rhs_dilation == (1, 1))


def _phase_input_grad_is_faster(x_shape, geometry: _Geometry) -> bool:
    """Where bench/conv_cpu.py measured the phase input gradient ahead of XLA's (with Eigen's
    convolutions): strided layers on inputs of at least 16x16 pixels and 16 channels, where XLA's
    costs 1.5-4.2x the layer's forward pass and the phases 1.1-2.0x (e.g. the small CNN's
    32x32x32->64 3x3/2: 29 ms against 9.5 at batch 128). The rule's one measured loss is the
    small CNN's 16x16x64->128 (7.7 ms against 8.7). On smaller inputs the two are level or XLA's
    is ahead (8x8x128->256: 6.4 ms against 8.4), and on 3-channel images (stems, which need no
    input gradient in training) the phases' convolutions are too thin to pay."""
    _, h, w, cin = x_shape
    return _phases_apply(geometry) and h >= 16 and w >= 16 and cin >= 16


def _phase_conv(x, kernel, geometry: _Geometry, precision):
    """The strided convolution as a sum of stride-1 convolutions, one per phase of the stride.

    With x padded, y[p] = sum_t x[s p + t] W[t]; writing each tap as t = s m + r (0 <= r < s),
    y[p] = sum_r sum_m x_r[p + m] W[s m + r] with x_r[v] = x[s v + r]: a VALID stride-1
    convolution of each phase of x with the taps of that phase. The forward pass is the same sum
    in another order; what differs is its transpose, the input gradient, which this form gets
    from stride-1 transposed convolutions and interleaving, where XLA:CPU's transpose of a strided
    convolution dilates dy by the stride and multiplies the zeros too (s^2 times the work).
    """
    (sh, sw), ((lo_h, _), (lo_w, _)) = geometry.strides, geometry.padding
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    ho, wo = _output_size(h, kh, sh, geometry.padding[0]), _output_size(w, kw, sw, geometry.padding[1])
    # Padded (or cropped: rows past the last window are never read) to s times the rows of phase 0.
    rows, cols = sh * (ho + (kh - 1) // sh), sw * (wo + (kw - 1) // sw)
    padded = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo_h, rows - h - lo_h, 0),
                                                  (lo_w, cols - w - lo_w, 0), (0, 0, 0)))
    total = None
    for rh in range(min(sh, kh)):
        for rw in range(min(sw, kw)):
            phase = lax.conv_general_dilated(padded[:, rh::sh, rw::sw], kernel[rh::sh, rw::sw], (1, 1), "VALID",
                                             dimension_numbers=_NHWC, precision=precision)[:, :ho, :wo]
            total = phase if total is None else total + phase
    return total


def _output_size(size: int, window: int, stride: int, padding: tuple[int, int]) -> int:
    return (size + sum(padding) - window) // stride + 1


def _xla_conv(x, kernel, geometry: _Geometry, precision):
    return lax.conv_general_dilated(x, kernel, geometry.strides, geometry.padding, geometry.lhs_dilation,
                                    geometry.rhs_dilation, _NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, geometry, precision, gradients):
    return _xla_conv(x, kernel, geometry, precision)


def _conv_fwd(x, kernel, geometry, precision, gradients):
    return _xla_conv(x, kernel, geometry, precision), (x, kernel)


def _conv_bwd(geometry, precision, gradients, residuals, dy):
    x, kernel = residuals
    conv_of_x = _phase_conv if gradients.input_by_phases else _xla_conv
    (dx,) = jax.linear_transpose(functools.partial(conv_of_x, kernel=kernel, geometry=geometry, precision=precision),
                                 jax.ShapeDtypeStruct(x.shape, x.dtype))(dy)
    if gradients.kernel_by_matmul:
        dkernel = _kernel_grad(x, dy, kernel.shape, geometry).astype(kernel.dtype)
    else:
        (dkernel,) = jax.linear_transpose(functools.partial(_xla_conv, x, geometry=geometry, precision=precision),
                                          jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))(dy)
    return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def _kernel_grad(x, dy, kernel_shape, geometry: _Geometry) -> jax.Array:
    """dW in float32, from sums over pixels of input patches times output gradients."""
    kh, kw, cin, cout = kernel_shape
    if _is_pointwise((kh, kw), geometry):
        # dW = sum over pixels p of x[p] dy[p]^T: one matmul contracting the rows of both where they
        # lie. XLA:CPU's matmul reads a row-contracted 2-D operand without copying it; the
        # transposed im2col below, and XLA's own kernel gradient, first copy x transposed (and
        # XLA fuses into that copy the recomputation of a ResNet's residual stream).
        return lax.dot_general(x.reshape(-1, cin), dy.reshape(-1, cout), (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32).reshape(kernel_shape)
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
