"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection of the
other view.

Follows deepmind-research `byol/byol_experiment.py` and solo-learn `solo/methods/byol.py`:
online encoder -> projector -> predictor; target encoder -> projector, an EMA of the online ones
with tau on a cosine from `base_momentum` to 1 (0.996 on ImageNet, 0.99 on CIFAR). The loss is
symmetric: `2 - 2 cos(p1, sg(z2')) + 2 - 2 cos(p2, sg(z1'))`, averaged over the batch (so in
[0, 8]). Each view goes through the networks on its own (BatchNorm statistics per view), the
target in training mode, as in both references.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import schedules
from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, embedding_spread
from vision_jax.models import MLPHead
from vision_jax.models.heads import l2_normalize


def regression_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """2 - 2 cos(prediction, target) per example (BYOL eq. 2), the target held constant."""
    return 2.0 - 2.0 * jnp.sum(l2_normalize(prediction) * l2_normalize(jax.lax.stop_gradient(target)), axis=-1)


class BYOLModel(nnx.Module):
    def __init__(self, encoder: nnx.Module, projector: MLPHead, predictor: MLPHead):
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor


@METHODS.register("byol")
class BYOL(Method):
    followers = {"target_encoder": "encoder", "target_projector": "projector"}

    def __init__(self, setup: MethodSetup, base_momentum: float = 0.996, projection_dim: int = 256,
                 projection_hidden_dim: int = 4096, prediction_hidden_dim: int = 4096):
        super().__init__(setup)
        self.base_momentum = schedules.check_momentum("method.base_momentum", base_momentum)
        self.dims = (projection_hidden_dim, projection_dim, prediction_hidden_dim)

    def build_model(self, rngs: nnx.Rngs) -> BYOLModel:
        encoder = self.make_encoder(rngs)
        hidden, out, prediction_hidden = self.dims
        return BYOLModel(encoder, MLPHead(encoder.num_features, hidden, out, rngs=rngs),
                         MLPHead(out, prediction_hidden, out, rngs=rngs))

    def loss(self, model, batch, step):
        views = batch["views"]  # [B, 2, H, W, C]
        features, projections, predictions, targets = [], [], [], []
        for v in range(2):
            features.append(model.encoder(views[:, v], train=True))
            projections.append(model.projector(features[-1], train=True))
            predictions.append(model.predictor(projections[-1], train=True))
            targets.append(model.target_projector(model.target_encoder(views[:, v], train=True), train=True))
        loss = jnp.mean(regression_loss(predictions[0], targets[1]) + regression_loss(predictions[1], targets[0]))
        return LossOutput(loss, embedding_spread(projections[0]), probe_features=features[0])
