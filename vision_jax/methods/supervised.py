"""Supervised training: cross-entropy of a linear classifier on the encoder.

Labels are class indices [B], or soft labels [B, classes] when batch-level mixup or cutmix made
them (config.data.batch_pp); label smoothing applies to either.

The evaluation and fine-tuning protocols are options of this method (configs/finetune_cifar10.py):
- `frozen_encoder=True`: linear evaluation by training (SimCLR, MoCo): the encoder runs in
  inference mode (BatchNorm on its running statistics, no drop path) under stop_gradient, and
  its parameters are a frozen optimizer group, so neither its weights (not even by weight decay)
  nor its statistics move; only the head learns.
- `head_norm=True`: MAE's linear probe, a BatchNorm without scale and bias before the head.
- `head_init`: the classifier's kernel starts as the layer's default ('default', LeCun normal),
  at 'zeros' (big_vision's head_zeroinit) or 'trunc_normal' (std 2e-5, MAE's fine-tuning head).
- `ema_decay` > 0: an EMA of the weights for evaluation (timm's ModelEmaV2, e.g. 0.9998): the
  followers `ema_encoder` and `ema_classifier` track the trained networks with that constant
  decay, their BatchNorm statistics too (ModelEmaV2 averages buffers as well); evaluation
  (features and logits) then reads the EMA networks.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import optim, schedules
from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, classification_loss
from vision_jax.models import LinearClassifier
from vision_jax.models.layers import BatchNorm

HEAD_INITS = {"default": nnx.initializers.lecun_normal(), "zeros": nnx.initializers.zeros_init(),
              "trunc_normal": nnx.initializers.truncated_normal(stddev=2e-5)}


class ClassifierModel(nnx.Module):
    def __init__(self, encoder: nnx.Module, num_classes: int, *, head_norm: bool = False,
                 head_init: str = "default", frozen_encoder: bool = False, rngs: nnx.Rngs):
        self.encoder = encoder
        self.frozen_encoder = frozen_encoder
        self.head_norm = nnx.data(BatchNorm(encoder.num_features, affine=False, rngs=rngs) if head_norm else None)
        self.classifier = LinearClassifier(encoder.num_features, num_classes, kernel_init=HEAD_INITS[head_init],
                                           rngs=rngs)

    def __call__(self, images: jax.Array, train: bool, ema: bool = False) -> jax.Array:
        return self.classify(self.features(images, train, ema), train, ema)

    def features(self, images: jax.Array, train: bool, ema: bool = False) -> jax.Array:
        encoder = self.ema_encoder if ema else self.encoder
        if self.frozen_encoder:
            return jax.lax.stop_gradient(encoder(images, train=False))
        return encoder(images, train=train)

    def classify(self, features: jax.Array, train: bool, ema: bool = False) -> jax.Array:
        if self.head_norm is not None:
            features = self.head_norm(features, use_running_average=not train)
        return (self.ema_classifier if ema else self.classifier)(features)


@METHODS.register("supervised")
class Supervised(Method):
    output_names = ("features", "logits")

    def __init__(self, setup: MethodSetup, label_smoothing: float = 0.0, frozen_encoder: bool = False,
                 head_norm: bool = False, head_init: str = "default", ema_decay: float = 0.0):
        super().__init__(setup)
        if self.online_probe:
            raise ConfigError("Supervised training has its own classifier; an online probe would only copy it: "
                              "set config.online_probe.enabled=False.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"method.label_smoothing must be in [0, 1), got {label_smoothing}.")
        if head_init not in HEAD_INITS:
            raise ConfigError(f"method.head_init={head_init!r} is unknown; use one of {', '.join(HEAD_INITS)}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"method.ema_decay must be in [0, 1) (0: no EMA; timm uses 0.9998), got {ema_decay}.")
        self.label_smoothing = label_smoothing
        self.frozen_encoder, self.head_norm, self.head_init = frozen_encoder, head_norm, head_init
        self.ema_decay = ema_decay
        if ema_decay:
            self.followers = {"ema_encoder": "encoder", "ema_classifier": "classifier"}

    def ema_momentum(self, step: jax.Array) -> jax.Array:
        return jnp.asarray(self.ema_decay, jnp.float32)  # constant, as timm's ModelEmaV2
    def build_model(self, rngs: nnx.Rngs) -> ClassifierModel:
        return ClassifierModel(self.make_encoder(rngs), self.num_classes, head_norm=self.head_norm,
                               head_init=self.head_init, frozen_encoder=self.frozen_encoder, rngs=rngs)

    def param_groups(self) -> list[optim.ParamGroup]:
        frozen = [optim.ParamGroup("frozen_encoder", r"^encoder/", frozen=True)] if self.frozen_encoder else []
        return super().param_groups() + frozen

    def loss(self, model, batch, step):
        logits = model(batch["image"], train=True)
        loss, accuracy = classification_loss(logits, batch["label"], self.label_smoothing)
        if self.ema_decay:  # the followers' weights follow in the update; their statistics here
            online = nnx.state(model.encoder, nnx.BatchStat)
            nnx.update(model.ema_encoder, schedules.ema_update(self.ema_momentum(step.step),
                                                                nnx.state(model.ema_encoder, nnx.BatchStat), online))
        return LossOutput(loss, {"accuracy": accuracy})

    def features(self, model: ClassifierModel, images: jax.Array) -> jax.Array:
        return model.features(images, train=False, ema=bool(self.ema_decay))

    def predict(self, model: ClassifierModel, images: jax.Array) -> jax.Array:
        return model(images, train=False, ema=bool(self.ema_decay))
