"""Batch-level pp ops that mix examples (mixup, cutmix): they run on a batch dict after batching
(images [B, H, W, 3], one-hot labels [B, K]); see `pp.parse_batch`."""
from __future__ import annotations

import tensorflow as tf

from vision_jax.data.ops import Op, _check, _read, _split, _uniform
from vision_jax.errors import ConfigError
from vision_jax.registry import Registry

BATCH_OPS = Registry("batch pp op")

def _beta(seed, alpha: float):
    a_seed, b_seed = _split(seed, 2)
    a = tf.random.stateless_gamma([], a_seed, alpha)
    b = tf.random.stateless_gamma([], b_seed, alpha)
    return tf.where(a + b > 0, a / tf.maximum(a + b, 1e-30), 1.0)  # both underflow: keep the image


def _batch_inputs(batch: dict, image_key: str, label_key: str, op_name: str):
    images = tf.convert_to_tensor(_read(batch, image_key, op_name))
    labels = tf.convert_to_tensor(_read(batch, label_key, op_name))
    if labels.shape.rank != 2 or not labels.dtype.is_floating:
        raise ConfigError(
            f"batch op {op_name!r} mixes labels, so it needs one-hot float labels [batch, classes] in "
            f"batch[{label_key!r}], got {labels.dtype.name} of shape {labels.shape}: add "
            f"onehot(num_classes) to the per-example pp string.")
    if images.shape.rank != 4 or not images.dtype.is_floating:
        raise ConfigError(f"batch op {op_name!r} needs float images [batch, height, width, channels] in "
                          f"batch[{image_key!r}], got {images.dtype.name} of shape {images.shape}.")
    return images, labels


@BATCH_OPS.register("mixup")
def mixup(alpha: float = 0.2, image_key: str = "image", label_key: str = "label") -> Op:
    """mixup (Zhang et al. 2018): lambda ~ Beta(alpha, alpha), one per batch; example i is mixed
    with example B-1-i (the reversed batch, as timm), images and labels with the same lambda."""
    _check(alpha > 0, f"batch op 'mixup': alpha must be > 0, got {alpha!r}.")

    def op(batch, seed):
        images, labels = _batch_inputs(batch, image_key, label_key, "mixup")
        lam = _beta(seed, alpha)
        return {**batch, image_key: lam * images + (1 - lam) * images[::-1],
                label_key: lam * labels + (1 - lam) * labels[::-1]}

    return op


@BATCH_OPS.register("cutmix")
def cutmix(alpha: float = 1.0, image_key: str = "image", label_key: str = "label") -> Op:
    """CutMix (Yun et al. 2019): a box of area ~(1 - lambda), lambda ~ Beta(alpha, alpha), centred
    uniformly and clipped to the image (timm's rand_bbox), is pasted from the reversed batch;
    labels mix by the pasted area."""
    _check(alpha > 0, f"batch op 'cutmix': alpha must be > 0, got {alpha!r}.")

    def op(batch, seed):
        images, labels = _batch_inputs(batch, image_key, label_key, "cutmix")
        beta_seed, y_seed, x_seed = _split(seed, 3)
        lam = _beta(beta_seed, alpha)
        shape = tf.shape(images)
        height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        cut = tf.sqrt(1.0 - lam)
        half_h, half_w = tf.floor(height * cut) // 2, tf.floor(width * cut) // 2
        cy, cx = tf.floor(_uniform(y_seed) * height), tf.floor(_uniform(x_seed) * width)
        top, bottom = tf.clip_by_value(cy - half_h, 0, height), tf.clip_by_value(cy + half_h, 0, height)
        left, right = tf.clip_by_value(cx - half_w, 0, width), tf.clip_by_value(cx + half_w, 0, width)
        rows = tf.range(height)[:, None, None]
        cols = tf.range(width)[None, :, None]
        inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
        pasted_fraction = (bottom - top) * (right - left) / (height * width)
        mixed_images = tf.where(inside[None], images[::-1], images)
        mixed_labels = (1 - pasted_fraction) * labels + pasted_fraction * labels[::-1]
        return {**batch, image_key: mixed_images, label_key: mixed_labels}

    return op
