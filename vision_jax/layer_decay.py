"""Layer-wise learning-rate decay (BEiT; MAE's `param_groups_lrd`) as parameter groups.

The encoder is cut into layers from the input up: for a ViT the embeddings (patch embedding, cls
token, position embedding), then each block; for a ResNet the stem, then each stage; for the
small CNN each conv-BN stage; for the fast-CIFAR net the stem, then each group. With L such
layers, layer i (from 0) learns at decay^(L - i) of the learning rate, and everything above the
encoder's last layer (a ViT's final norm, the heads) at the full rate. For a ViT this is MAE's
rule: num_layers = depth + 1, embeddings layer 0, block j layer j + 1, the rest num_layers,
scale = decay^(num_layers - layer_id). A parameter takes the first group that matches it, so a
config group over the encoder (e.g. a transfer run's frozen backbone) takes precedence.
"""
from __future__ import annotations

from typing import Callable

from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models.cnn import SmallCNN
from vision_jax.models.fast_cifar import FastCifarNet
from vision_jax.models.resnet import ResNet
from vision_jax.models.vit import VisionTransformer
from vision_jax.optim import ParamGroup


def encoder_layers(encoder: nnx.Module) -> list[str]:
    """One regex per layer of `encoder` (under the model's `encoder/`), from the input up."""
    if isinstance(encoder, VisionTransformer):
        return [r"^encoder/(patch_embed|cls_token|pos_embedding)(/|$)"] + [
            rf"^encoder/blocks/{i}/" for i in range(len(encoder.blocks))]
    if isinstance(encoder, ResNet):
        stages, first = [], 0
        for size in encoder.stage_sizes:
            stages.append(rf"^encoder/blocks/({'|'.join(str(b) for b in range(first, first + size))})/")
            first += size
        return [r"^encoder/stem_"] + stages
    if isinstance(encoder, FastCifarNet):
        return [r"^encoder/stem_"] + [rf"^encoder/groups/{i}/" for i in range(len(encoder.groups))]
    if isinstance(encoder, SmallCNN):
        return [rf"^encoder/(convs|norms)/{i}/" for i in range(len(encoder.convs))]
    raise ConfigError(f"config.optimizer.layer_decay knows the layers of ViT, ResNet, cnn and fast_cifar "
                      f"encoders, not of {type(encoder).__name__}; set --config.optimizer.layer_decay=1.0 (off).")


def layer_decay_groups(decay: float, make_encoder: Callable[[nnx.Rngs], nnx.Module]) -> list[ParamGroup]:
    """The parameter groups of layer-wise lr decay `decay` (1.0: none) for the encoder `make_encoder` builds."""
    if decay == 1.0:
        return []
    layers = encoder_layers(nnx.eval_shape(lambda: make_encoder(nnx.Rngs(0))))
    return [ParamGroup(f"layer_decay_{i}", pattern, lr_scale=decay ** (len(layers) - i))
            for i, pattern in enumerate(layers)]
