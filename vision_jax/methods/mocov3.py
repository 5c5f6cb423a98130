"""MoCo v3 (Chen, Xie, He 2021): queries from the online encoder, projector and predictor; keys
from a momentum encoder and projector; symmetric InfoNCE.

Follows facebookresearch/moco-v3 `moco/builder.py`: `ctr(q1, k2) + ctr(q2, k1)` where
`ctr(q, k) = CrossEntropy(q k^T / T, positives on the diagonal) * 2T`, q and k l2-normalized.
The keys are the whole global batch's (the reference's `concat_all_gather`): the loss is
written on the global batch and jit over the mesh gathers them, so every device's keys are
negatives. The momentum m follows a cosine from `base_momentum` to 1 (`--moco-m-cos`). MLPs have
no biases; the projector ends in a BatchNorm without scale and bias (2 layers for ResNets, 3 for
ViTs), the predictor has 2 layers (and the final BatchNorm too for ViTs). Each view goes through
the networks on its own, the momentum networks in training mode. `freeze_patch_embedding` keeps
a ViT's random patch projection fixed (`--stop-grad-conv1`, the ViT recipe's stability fix).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vision_jax import optim, schedules
from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, embedding_spread
from vision_jax.models import ProjectionHead
from vision_jax.models.heads import l2_normalize


def contrastive_loss(queries: jax.Array, keys: jax.Array, temperature: float) -> jax.Array:
    """InfoNCE of each query against all keys, its own key positive, scaled by 2T (the reference's)."""
    logits = l2_normalize(queries) @ l2_normalize(jax.lax.stop_gradient(keys)).T / temperature
    labels = jnp.arange(queries.shape[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() * (2.0 * temperature)


class MoCoModel(nnx.Module):
    def __init__(self, encoder: nnx.Module, projector: ProjectionHead, predictor: ProjectionHead):
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor


@METHODS.register("mocov3")
class MoCoV3(Method):
    followers = {"momentum_encoder": "encoder", "momentum_projector": "projector"}

    def __init__(self, setup: MethodSetup, temperature: float = 0.2, base_momentum: float = 0.99,
                 projection_dim: int = 256, hidden_dim: int = 4096, freeze_patch_embedding: bool = False):
        super().__init__(setup)
        is_vit = setup.model_name == "vit"
        if freeze_patch_embedding and not is_vit:
            raise ConfigError(f"method.freeze_patch_embedding needs a ViT encoder (its random patch projection), "
                              f"but the model is {setup.model_name!r}; set it to False.")
        if temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {temperature}.")
        self.temperature = temperature
        self.base_momentum = schedules.check_momentum("method.base_momentum", base_momentum)
        self.projection_dim, self.hidden_dim = projection_dim, hidden_dim
        self.is_vit, self.freeze_patch_embedding = is_vit, freeze_patch_embedding

    def build_model(self, rngs: nnx.Rngs) -> MoCoModel:
        encoder = self.make_encoder(rngs)
        mlp = dict(hidden_dim=self.hidden_dim, out_dim=self.projection_dim, output_bias=False, rngs=rngs)
        projector = ProjectionHead(encoder.num_features, num_layers=3 if self.is_vit else 2, output_bn=True, **mlp)
        predictor = ProjectionHead(self.projection_dim, num_layers=2, output_bn=self.is_vit, **mlp)
        return MoCoModel(encoder, projector, predictor)

    def param_groups(self) -> list[optim.ParamGroup]:
        frozen = [optim.ParamGroup("patch_embedding", r"^encoder/patch_embed/", frozen=True)]
        return (frozen if self.freeze_patch_embedding else []) + super().param_groups()

    def loss(self, model, batch, step):
        views = batch["views"]  # [B, 2, H, W, C]
        features, projections, queries, keys = [], [], [], []
        for v in range(2):
            features.append(model.encoder(views[:, v], train=True))
            projections.append(model.projector(features[-1], train=True))
            queries.append(model.predictor(projections[-1], train=True))
            keys.append(model.momentum_projector(model.momentum_encoder(views[:, v], train=True), train=True))
        t = self.temperature
        loss = contrastive_loss(queries[0], keys[1], t) + contrastive_loss(queries[1], keys[0], t)
        return LossOutput(loss, embedding_spread(projections[0]), probe_features=features[0])
