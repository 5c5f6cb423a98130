"""DCGAN generator and discriminator (Radford et al. 2016), as the PyTorch DCGAN example builds them.

Generator: z [B, latent_dim] -> a 4x4 kernel transposed conv to 4x4 x (base_width * 2^(n-1)),
then n transposed convs (kernel 4, stride 2, each doubling the resolution and halving the width)
with BN + ReLU between, the last one to `channels` and tanh: images in [-1, 1].
Discriminator: the mirror image: n strided convs (kernel 4, stride 2) down to 4x4 with
LeakyReLU(0.2) and BN on every layer but the first, then a 4x4 conv to one logit.
n = log2(image_size / 4): 3 for 32x32, 4 for 64x64 (the paper's and the example's size).

Convs have no bias (BN follows, as in the example). Init as the paper and the example's
`weights_init`: conv weights N(0, 0.02), BN scale N(1, 0.02), BN bias 0.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import MODELS, conv
from vision_jax.models.axes import partitioned
from vision_jax.models.layers import CONV_KERNEL_AXES, BatchNorm, Dtype, flat_normal

# The paper's and the DCGAN example's `weights_init`: conv weights N(0, 0.02), BatchNorm scales N(1, 0.02).
conv_init = functools.partial(flat_normal, std=0.02)
bn_scale_init = functools.partial(flat_normal, mean=1.0, std=0.02)
DEFAULT_LATENT_DIM = 100  # the paper's z


def _num_upsamplings(image_size: int) -> int:
    n = round(math.log2(image_size / 4)) if image_size >= 8 else 0
    if n < 1 or 4 * 2**n != image_size:
        raise ConfigError(f"DCGAN image_size must be 4 * 2^n with n >= 1 (32 or 64 as in the paper), "
                          f"got {image_size}.")
    return n


class Generator(nnx.Module):
    def __init__(self, latent_dim: int = DEFAULT_LATENT_DIM, image_size: int = 64, base_width: int = 64,
                 channels: int = 3,
                 *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        n = _num_upsamplings(image_size)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        widths = [base_width * 2 ** (n - 1 - i) for i in range(n)] + [channels]  # 64px: 512 256 128 64 3
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels

        def up(cin: int, cout: int, stride: int, padding: int) -> nnx.Conv:
            # A transposed convolution is a convolution of the input dilated by the stride (what
            # lax.conv_transpose runs, with the same [4, 4, cin, cout] kernel): written as one so that it
            # runs models/conv.py's convolution, whose CPU kernel gradient is ~10x faster here.
            return nnx.Conv(cin, cout, (4, 4), padding=padding, input_dilation=stride, use_bias=False,
                            kernel_init=partitioned(conv_init, CONV_KERNEL_AXES),
                            conv_general_dilated=conv.conv_general_dilated, **kw)

        # PyTorch's ConvTranspose2d(kernel 4, stride s, padding p) pads the dilated input by 4 - 1 - p:
        # the projection of z (a 1x1 "image", p=0) by 3, the upsampling layers (s=2, p=1) by 2.
        self.convs = nnx.List([up(latent_dim, widths[0], 1, 3)] +
                              [up(a, b, 2, 2) for a, b in zip(widths[:-1], widths[1:])])
        self.norms = nnx.List([BatchNorm(w, scale_init=bn_scale_init, **kw) for w in widths[:-1]])

    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        """Images [B, image_size, image_size, channels] in [-1, 1], float32."""
        x = z.reshape(z.shape[0], 1, 1, z.shape[-1])
        for conv_layer, norm in zip(self.convs[:-1], self.norms):
            x = nnx.relu(norm(conv_layer(x), use_running_average=not train))
        return jnp.tanh(self.convs[-1](x).astype(jnp.float32))


class Discriminator(nnx.Module):
    def __init__(self, image_size: int = 64, base_width: int = 64, channels: int = 3, *,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        n = _num_upsamplings(image_size)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        widths = [channels] + [base_width * 2**i for i in range(n)]  # 64px: 3 64 128 256 512
        self.image_size, self.channels = image_size, channels

        def down(cin: int, cout: int, stride: int, padding) -> nnx.Conv:
            return nnx.Conv(cin, cout, (4, 4), strides=(stride, stride), padding=padding, use_bias=False,
                            kernel_init=partitioned(conv_init, CONV_KERNEL_AXES),
                            conv_general_dilated=conv.conv_general_dilated, **kw)

        # Padding 1 on each side with kernel 4, stride 2 halves the resolution exactly (PyTorch's).
        self.convs = nnx.List([down(a, b, 2, 1) for a, b in zip(widths[:-1], widths[1:])] +
                              [down(widths[-1], 1, 1, "VALID")])
        self.norms = nnx.List([BatchNorm(w, scale_init=bn_scale_init, **kw) for w in widths[2:]])

    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """One real/fake logit per image, [B], float32 (no sigmoid: losses take logits)."""
        x = nnx.leaky_relu(self.convs[0](images), 0.2)
        for conv_layer, norm in zip(self.convs[1:-1], self.norms):
            x = nnx.leaky_relu(norm(conv_layer(x), use_running_average=not train), 0.2)
        return self.convs[-1](x).astype(jnp.float32).reshape(images.shape[0])


@MODELS.register("dcgan_generator")
def dcgan_generator(latent_dim: int = DEFAULT_LATENT_DIM, image_size: int = 64, base_width: int = 64, channels: int = 3,
                    *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                    rngs: nnx.Rngs) -> Generator:
    return Generator(latent_dim, image_size, base_width, channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


@MODELS.register("dcgan_discriminator")
def dcgan_discriminator(latent_dim: int = DEFAULT_LATENT_DIM, image_size: int = 64, base_width: int = 64,
                        channels: int = 3,
                        *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                        rngs: nnx.Rngs) -> Discriminator:
    """`latent_dim` is accepted (and unused) so one options dict can build both networks."""
    del latent_dim
    return Discriminator(image_size, base_width, channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
