"""The fast-CIFAR network of airbench (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
2024; after D. Page's ResNet-9 for DAWNBench): a stem convolution, then three groups of
conv3x3 - max-pool 2 - BN - GELU - conv3x3 - BN - GELU, and a global max pool.

airbench94 has widths (64, 256, 256) after a 24-channel stem; its 2x2 patch-whitening stem
(initialized from the data) is a plain 3x3 conv-BN-GELU here, so that the network needs nothing
but its config. Small widths (configs/supervised_cifar10.py:cnn_cpu) make it fit a 2-core budget.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import MODELS
from vision_jax.models.layers import BatchNorm, Dtype, conv, max_pool


class ConvGroup(nnx.Module):
    def __init__(self, cin: int, cout: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1, self.norm1 = conv(cin, cout, 3, **kw), BatchNorm(cout, **kw)
        self.conv2, self.norm2 = conv(cout, cout, 3, **kw), BatchNorm(cout, **kw)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = max_pool(self.conv1(x), 2)
        x = nnx.gelu(self.norm1(x, use_running_average=not train), approximate=False)
        return nnx.gelu(self.norm2(self.conv2(x), use_running_average=not train), approximate=False)


class FastCifarNet(nnx.Module):
    def __init__(self, stem_width: int = 24, widths: tuple[int, ...] = (64, 256, 256), *,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stem_conv, self.stem_bn = conv(3, stem_width, 3, **kw), BatchNorm(stem_width, **kw)
        channels = (stem_width, *widths)
        self.groups = nnx.List([ConvGroup(cin, cout, **kw) for cin, cout in zip(channels[:-1], channels[1:])])
        self.num_features = widths[-1]

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Pooled float32 features [B, num_features]."""
        x = nnx.gelu(self.stem_bn(self.stem_conv(x), use_running_average=not train), approximate=False)
        for group in self.groups:
            x = group(x, train)
        return jnp.max(x.astype(jnp.float32), axis=(1, 2))


@MODELS.register("fast_cifar")
def fast_cifar(stem_width: int = 24, widths: tuple[int, ...] = (64, 256, 256), *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> FastCifarNet:
    if not isinstance(stem_width, int) or stem_width < 1 or not widths or any(
            not isinstance(w, int) or w < 1 for w in widths):
        raise ConfigError(f"fast_cifar needs a positive integer stem_width and widths, got {stem_width!r}, {widths!r}.")
    return FastCifarNet(stem_width, tuple(widths), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
