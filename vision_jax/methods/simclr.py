"""SimCLR (Chen et al. 2020): NT-Xent between two views over the whole global batch.

The loss is written on the global batch; under `jax.jit` over a device mesh XLA gathers the
projections, so every device's examples are negatives for every other (no per-device loss).
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, embedding_spread
from vision_jax.models import ProjectionHead


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """Normalized-temperature cross-entropy; returns (loss, top-1 accuracy at finding the pair)."""
    z = jnp.concatenate([z1, z2]).astype(jnp.float32)
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # an example is not its own pair
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, positives).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == positives)
    return loss, accuracy


class SimCLRModel(nnx.Module):
    def __init__(self, encoder: nnx.Module, projection: ProjectionHead):
        self.encoder = encoder
        self.projection = projection


@METHODS.register("simclr")
class SimCLR(Method):
    def __init__(self, setup: MethodSetup, temperature: float = 0.5, projection_dim: int = 128,
                 projection_hidden_dim: int = 2048, projection_layers: int = 2):
        super().__init__(setup)
        self.temperature = temperature
        self.projection_dims = (projection_hidden_dim, projection_dim, projection_layers)

    def build_model(self, rngs: nnx.Rngs) -> SimCLRModel:
        encoder = self.make_encoder(rngs)
        hidden, out, layers = self.projection_dims
        return SimCLRModel(encoder, ProjectionHead(encoder.num_features, hidden, out, layers, rngs=rngs))

    def loss(self, model, batch, step):
        views = batch["views"]  # [B, 2, H, W, C]
        n = views.shape[0]
        # One forward over both views, so BatchNorm sees 2B examples, as in the reference.
        features = model.encoder(jnp.concatenate([views[:, 0], views[:, 1]]), train=True)
        z = model.projection(features, train=True)
        loss, accuracy = nt_xent(z[:n], z[n:], self.temperature)
        return LossOutput(loss, {"pair_accuracy": accuracy, **embedding_spread(z)}, probe_features=features[:n])
