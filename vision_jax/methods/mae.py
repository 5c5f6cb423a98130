"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): hide most patches of
an image, encode the visible ones, and reconstruct the pixels of the hidden ones.

Follows facebookresearch/mae `models_mae.py`:
- per-example random masking by an argsort of uniform noise, keeping int(N * (1 - mask_ratio))
  of the N patches (`models/vit.py:random_masking`); the masks come from the step's key, so a
  resumed run draws the same ones;
- the ViT encoder on the visible patch tokens (position embedding added before the choice) plus
  its cls token (`VisionTransformer.forward_tokens(keep_indices=...)`);
- a light decoder (`models/vit.py:MAEDecoder`): the encoded tokens and a shared mask token in
  patch order, fixed 2-D sin-cos position embedding, pre-norm blocks, a linear map to each
  patch's p*p*3 pixels;
- the loss: the mean over the masked patches of each patch's mean squared error against its
  pixels (`reconstruction_loss`); with `norm_pix_loss` the targets are each patch's pixels
  normalized by their own mean and variance (unbiased, as torch's `var`, plus 1e-6).

The pixels are the model's input (the pipeline's [-1, 1] or ImageNet-standardized images), as
in the reference, which reconstructs the normalized tensors. Evaluation features are the
encoder's pooled output on all patches, unmasked (the base `features`); the online probe, if
enabled, sees the pooled tokens of the masked training pass (solo-learn's).

The parameter group `tokens` takes the cls token, the mask token and a learned position
embedding out of weight decay, as MAE's fine-tuning recipe does (`no_weight_decay`); its
pretraining script decays the (1, 1, D) tokens, excluding only 1-D parameters and biases (every
group here does that already).
"""
from __future__ import annotations

from typing import Any

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import optim
from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, StepInfo
from vision_jax.models.vit import MAEDecoder, VisionTransformer, patchify, random_masking, unpatchify

NORM_PIX_EPS = 1e-6  # the reference's (var + 1e-6) ** 0.5


def normalized_patches(patches: jax.Array) -> jax.Array:
    """Each patch's pixels minus their mean, over the square root of their unbiased variance + 1e-6."""
    mean = patches.mean(axis=-1, keepdims=True)
    var = patches.var(axis=-1, keepdims=True, ddof=1)
    return (patches - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def reconstruction_loss(predictions: jax.Array, patches: jax.Array, mask: jax.Array,
                        norm_pix_loss: bool = False) -> jax.Array:
    """MAE's `forward_loss`: sum over masked patches of the per-patch MSE, over the masked count.

    predictions, patches: [B, N, p*p*C] (patches from `patchify`); mask: [B, N], 1 = masked."""
    target = normalized_patches(patches) if norm_pix_loss else patches
    per_patch = jnp.mean(jnp.square(predictions.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


class MAEModel(nnx.Module):
    def __init__(self, encoder: VisionTransformer, decoder: MAEDecoder):
        self.encoder = encoder
        self.decoder = decoder


@METHODS.register("mae")
class MAE(Method):
    def __init__(self, setup: MethodSetup, mask_ratio: float = 0.75, norm_pix_loss: bool = False,
                 decoder_width: int = 512, decoder_depth: int = 8, decoder_heads: int = 16):
        super().__init__(setup)
        if setup.model_name != "vit":
            raise ConfigError(f"method 'mae' masks patches of a ViT encoder, but the model is {setup.model_name!r}; "
                              f"set --config.model.name=vit (e.g. with model.patch_size=4 on 32 px images).")
        if not 0.0 <= mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio={mask_ratio} must be in [0, 1) (MAE uses 0.75).")
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.decoder_shape = dict(decoder_width=decoder_width, decoder_depth=decoder_depth, decoder_heads=decoder_heads)

    def build_model(self, rngs: nnx.Rngs) -> MAEModel:
        encoder = self.make_encoder(rngs)
        num_patches = encoder.grid_size[0] * encoder.grid_size[1]
        if int(num_patches * (1 - self.mask_ratio)) < 1:
            raise ConfigError(f"method.mask_ratio={self.mask_ratio} keeps none of the encoder's {num_patches} "
                              f"patches; lower it or use a smaller model.patch_size.")
        decoder = MAEDecoder(encoder.num_features, encoder.grid_size, encoder.patch_size, encoder.num_prefix_tokens,
                             **self.decoder_shape, dtype=encoder.dtype, param_dtype=encoder.patch_embed.kernel.dtype,
                             rngs=rngs)
        self.image_size = (encoder.grid_size[0] * encoder.patch_size, encoder.grid_size[1] * encoder.patch_size)
        return MAEModel(encoder, decoder)

    def validate_batch(self, batch_shapes: dict[str, tuple[int, ...]]) -> None:
        if "image" not in batch_shapes:
            raise ConfigError(f"method 'mae' trains on one image per example (batch key 'image'), but the batches hold "
                              f"{sorted(batch_shapes)}; use --config.data.augment.name=mae.")
        if tuple(batch_shapes["image"][1:3]) != self.image_size:
            raise ConfigError(f"method 'mae': the training images are {batch_shapes['image'][1:3]} but the decoder "
                              f"predicts a {self.image_size} grid of patches; set --config.data.augment.size="
                              f"{self.image_size[0]} or --config.model.image_size to the images' size.")

    def param_groups(self) -> list[optim.ParamGroup]:
        tokens = optim.ParamGroup("tokens", r"(^|/)(cls_token|mask_token|pos_embedding)$", wd_scale=0.0)
        return [tokens] + super().param_groups()

    def reconstruct(self, model: MAEModel, images: jax.Array, rng: jax.Array, train: bool):
        """(pixel predictions [B, N, p*p*3] for every patch, mask [B, N], encoded visible tokens)."""
        encoder = model.encoder
        num_patches = encoder.grid_size[0] * encoder.grid_size[1]
        keep, mask, restore = random_masking(rng, images.shape[0], num_patches, self.mask_ratio)
        tokens = encoder.forward_tokens(images, train, keep_indices=keep)
        return model.decoder(tokens, restore, train), mask, tokens

    def loss(self, model: MAEModel, batch: dict[str, Any], step: StepInfo) -> LossOutput:
        images = batch["image"]
        predictions, mask, tokens = self.reconstruct(model, images, step.rng, train=True)
        loss = reconstruction_loss(predictions, patchify(images, model.encoder.patch_size), mask, self.norm_pix_loss)
        return LossOutput(loss, {}, probe_features=model.encoder.pool_tokens(tokens))

    def pictures(self, model: MAEModel, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        """One row per image: the original, the visible patches (masked ones at 0, the data's mean),
        the prediction of every patch, and the visible patches with the predicted masked ones (the
        reference's demo). With norm_pix_loss a prediction is shown at its original patch's mean
        and standard deviation, which the normalized target does not carry."""
        patch_size = model.encoder.patch_size
        predictions, mask, _ = self.reconstruct(model, images, rng, train=False)
        patches = patchify(images.astype(jnp.float32), patch_size)
        if self.norm_pix_loss:
            scale = jnp.sqrt(patches.var(axis=-1, keepdims=True, ddof=1) + NORM_PIX_EPS)
            predictions = predictions * scale + patches.mean(axis=-1, keepdims=True)
        hidden = mask[..., None]
        columns = [patches, patches * (1 - hidden), predictions, patches * (1 - hidden) + predictions * hidden]
        grid = model.encoder.grid_size
        cells = jnp.stack([unpatchify(column, patch_size, grid) for column in columns])  # [4, B, H, W, 3]
        return {"reconstruction": einops.rearrange(cells, "column b h w c -> (b h) (column w) c")}
