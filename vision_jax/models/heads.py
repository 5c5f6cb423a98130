"""Heads that methods put on an encoder's pooled features."""
import jax
from flax import nnx

from vision_jax.models.layers import batch_norm


class LinearClassifier(nnx.Module):
    def __init__(self, num_features: int, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(num_features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x)


class ProjectionHead(nnx.Module):
    """SimCLR's MLP projection: (Linear-BN-ReLU) x (layers-1), then Linear (no BN on the output)."""

    def __init__(self, num_features: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 *, rngs: nnx.Rngs):
        dims = [num_features] + [hidden_dim] * (num_layers - 1)
        self.hidden = nnx.List([nnx.Linear(a, b, use_bias=False, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.norms = nnx.List([batch_norm(b, rngs=rngs) for b in dims[1:]])
        self.out = nnx.Linear(dims[-1], out_dim, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for linear, norm in zip(self.hidden, self.norms):
            x = nnx.relu(norm(linear(x), use_running_average=not train))
        return self.out(x)
