"""DINO (Caron et al. 2021): a student matches an EMA teacher's centered, sharpened distribution
over prototypes, across multi-crop views.

Follows facebookresearch/dino `main_dino.py`:
- student = encoder + DINO head on all crops (2 global + N local; each resolution is one forward
  through the encoder, as its `MultiCropWrapper`); teacher = EMA copies, on the 2 global crops;
- loss: for each teacher global view q and each student view v != q,
  `sum(-softmax((t_q - center) / T_t) * log_softmax(s_v / T_s))`, averaged over the batch and
  over the terms;
- center <- c_m * center + (1 - c_m) * mean of the teacher's outputs over the global batch,
  after the loss (c_m = 0.9);
- teacher temperature: linear from `warmup_teacher_temp` to `teacher_temp` over the first
  `warmup_teacher_temp_epochs` epochs, per epoch; student temperature 0.1;
- teacher momentum: a cosine from `base_momentum` (0.996; 0.9995 at small batch) to 1;
- the head's last layer is frozen during the first `freeze_last_layer_epochs` epochs;
- evaluation uses the teacher (`features`).
Weight decay on a cosine (0.04 -> 0.4) and per-parameter gradient clipping (3.0) are optimizer
settings of the recipe (`optimizer.weight_decay_end`, `optimizer.grad_clip_mode='per_parameter'`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import optim, schedules
from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, embedding_spread
from vision_jax.models import DINOHead


class DINOCenter(nnx.Variable):
    """The running mean of the teacher's outputs (not a parameter: changed by the step, not by gradients)."""


def dino_loss(student: list[jax.Array], teacher: list[jax.Array], center: jax.Array, student_temp: float,
              teacher_temp: jax.Array) -> jax.Array:
    """DINO's cross-entropy between teacher views and the other student views (lists of [B, K] logits)."""
    total, terms = 0.0, 0
    for q, t in enumerate(teacher):
        target = jax.nn.softmax((jax.lax.stop_gradient(t) - center) / teacher_temp, axis=-1)
        for v, s in enumerate(student):
            if v == q:
                continue
            total = total + jnp.mean(jnp.sum(-target * jax.nn.log_softmax(s / student_temp, axis=-1), axis=-1))
            terms += 1
    return total / terms


class DINOModel(nnx.Module):
    def __init__(self, encoder: nnx.Module, head: DINOHead, out_dim: int):
        self.encoder = encoder
        self.head = head
        self.center = DINOCenter(jnp.zeros((out_dim,), jnp.float32))


@METHODS.register("dino")
class DINO(Method):
    followers = {"teacher_encoder": "encoder", "teacher_head": "head"}

    def __init__(self, setup: MethodSetup, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 use_bn_in_head: bool = False, norm_last_layer: bool = True, base_momentum: float = 0.996,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 0, center_momentum: float = 0.9,
                 freeze_last_layer_epochs: float = 1.0):
        super().__init__(setup)
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ConfigError("DINO's temperatures (method.student_temp, teacher_temp, warmup_teacher_temp) "
                              "must be > 0.")
        length = setup.length
        self.head_options = dict(out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                                 use_bn=use_bn_in_head, norm_last_layer=norm_last_layer)
        self.base_momentum = schedules.check_momentum("method.base_momentum", base_momentum)
        self.center_momentum = schedules.check_momentum("method.center_momentum", center_momentum)
        self.student_temp = student_temp
        self.teacher_temp = schedules.per_epoch_linear_warmup(warmup_teacher_temp, teacher_temp,
                                                             warmup_teacher_temp_epochs, length.steps_per_epoch)
        self.frozen_last_layer_steps = length.epochs_to_steps(freeze_last_layer_epochs)

    def build_model(self, rngs: nnx.Rngs) -> DINOModel:
        encoder = self.make_encoder(rngs)
        return DINOModel(encoder, DINOHead(encoder.num_features, **self.head_options, rngs=rngs),
                         self.head_options["out_dim"])

    def param_groups(self) -> list[optim.ParamGroup]:
        groups = super().param_groups()
        if self.frozen_last_layer_steps:  # the weight-normalized prototypes: direction v and gain g
            groups.insert(0, optim.ParamGroup("last_layer", r"^head/(direction|gain)$",
                                              frozen_steps=self.frozen_last_layer_steps))
        return groups

    def loss(self, model, batch, step):
        global_views, local_views = batch["global_views"], batch["local_views"]  # [B, 2, G, G, C], [B, L, l, l, C]
        n = global_views.shape[0]
        crops = [jnp.concatenate([global_views[:, 0], global_views[:, 1]])]
        if local_views.shape[1]:
            crops.append(jnp.concatenate([local_views[:, i] for i in range(local_views.shape[1])]))
        # One encoder pass per resolution, then one head pass over all crops (MultiCropWrapper).
        features = [model.encoder(images, train=True) for images in crops]
        embeddings = model.head.embed(jnp.concatenate(features), train=True)
        student = model.head.prototype_logits(embeddings)
        teacher = model.teacher_head(model.teacher_encoder(crops[0], train=True), train=True)
        loss = dino_loss(jnp.split(student, student.shape[0] // n), jnp.split(teacher, 2),
                         model.center[...], self.student_temp, self.teacher_temp(step.step))
        batch_center = jnp.mean(jax.lax.stop_gradient(teacher), axis=0)
        model.center[...] = self.center_momentum * model.center[...] + (1 - self.center_momentum) * batch_center
        metrics = {"teacher_temp": self.teacher_temp(step.step), **embedding_spread(embeddings[:n])}
        return LossOutput(loss, metrics, probe_features=features[0][:n])

    def features(self, model, images):
        return model.teacher_encoder(images, train=False)

    def validate_batch(self, batch_shapes):
        for key in ("global_views", "local_views"):
            if key not in batch_shapes:
                raise ConfigError(f"DINO trains on multi-crop views ({key!r} missing from the batch, which has "
                                  f"{sorted(batch_shapes)}): set config.data.augment.name='dino'.")
        sizes = {batch_shapes["global_views"][2:4]}
        if batch_shapes["local_views"][1]:
            sizes.add(batch_shapes["local_views"][2:4])
        for size in sorted(sizes):
            try:
                nnx.eval_shape(lambda: self.make_encoder(nnx.Rngs(0))(jnp.zeros((1, *size, 3)), train=False))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"The {self.setup.model_name!r} encoder cannot take DINO's {size[0]}x{size[1]} "
                                  f"crops ({error}); choose crop sizes it accepts "
                                  f"(config.data.augment.global_size / local_size).") from None
