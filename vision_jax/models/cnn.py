"""The small CNN: the quick default encoder, fast enough to pretrain on 2 CPU cores."""
import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import MODELS
from vision_jax.models.layers import BatchNorm, Dtype, conv


class SmallCNN(nnx.Module):
    """Four 3x3 conv-BN-ReLU stages, each after the first halving the resolution; global pool."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), *, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        channels = (3, *widths)
        self.convs = nnx.List([conv(cin, cout, 3, stride=1 if i == 0 else 2, **kw)
                               for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:]))])
        self.norms = nnx.List([BatchNorm(c, **kw) for c in widths])
        self.num_features = widths[-1]

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Pooled float32 features [B, num_features]."""
        for conv_layer, norm in zip(self.convs, self.norms):
            x = nnx.relu(norm(conv_layer(x), use_running_average=not train))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


@MODELS.register("cnn")
def small_cnn(widths: tuple[int, ...] = (32, 64, 128, 256), *, dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> SmallCNN:
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ConfigError(f"cnn widths must be a non-empty sequence of positive integers, got {widths!r}.")
    return SmallCNN(tuple(widths), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
