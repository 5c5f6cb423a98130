"""The small CNN: the quick default encoder, fast enough to pretrain on 2 CPU cores."""
import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.models import MODELS
from vision_jax.models.layers import batch_norm, conv


class SmallCNN(nnx.Module):
    """Four 3x3 conv-BN-ReLU stages, each after the first halving the resolution; global pool."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), *, rngs: nnx.Rngs):
        channels = (3, *widths)
        self.convs = nnx.List([conv(cin, cout, 3, stride=1 if i == 0 else 2, rngs=rngs)
                               for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:]))])
        self.norms = nnx.List([batch_norm(c, rngs=rngs) for c in widths])
        self.num_features = widths[-1]

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for conv_layer, norm in zip(self.convs, self.norms):
            x = nnx.relu(norm(conv_layer(x), use_running_average=not train))
        return jnp.mean(x, axis=(1, 2))


@MODELS.register("cnn")
def small_cnn(widths: tuple[int, ...] = (32, 64, 128, 256), *, rngs: nnx.Rngs) -> SmallCNN:
    return SmallCNN(tuple(widths), rngs=rngs)
