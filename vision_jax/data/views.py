"""Augmentations, as stateless functions of (image, seed): the same seed gives the same view.

`AUGMENTATIONS` maps a config name to a factory returning `fn(image_uint8, seed) -> dict`, where
`seed` is an int64 [2] tensor. Outputs are float32 in [-1, 1]:
  - 'none': {'image'} (evaluation preprocessing);
  - 'crop_flip': {'image'} (pad-and-crop plus flip, the CIFAR supervised recipe);
  - 'simclr': {'views': [num_views, H, W, 3]} (Chen et al. 2020: random resized crop, flip,
    colour jitter with probability 0.8 in random order, grayscale 0.2, optional blur).
"""
from __future__ import annotations

import math

import tensorflow as tf

from vision_jax.registry import Registry

AUGMENTATIONS = Registry("augmentation")


def to_model_range(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range every model input uses."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _uniform(seed, low=0.0, high=1.0):
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high)


def random_resized_crop(image, seed, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale, max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    crop.set_shape([None, None, image.shape[-1]])  # the crop keeps every channel; say so statically
    return tf.image.resize(crop, (size, size), method="bicubic", antialias=True)


def color_jitter(image, seed, strength: float):
    """SimCLR's jitter: brightness, contrast, saturation (0.8 s) and hue (0.2 s), random order."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    b = c = s = 0.8 * strength
    h = 0.2 * strength
    ops = [
        lambda x: x * _uniform(seeds[0], 1 - b, 1 + b),
        lambda x: tf.image.adjust_contrast(x, _uniform(seeds[1], 1 - c, 1 + c)),
        lambda x: tf.image.adjust_saturation(x, _uniform(seeds[2], 1 - s, 1 + s)),
        lambda x: tf.image.adjust_hue(x, _uniform(seeds[3], -h, h)),
    ]
    order = tf.random.experimental.stateless_shuffle(tf.range(4), seeds[4])
    for position in range(4):
        image = tf.switch_case(order[position], [lambda op=op: tf.clip_by_value(op(image), 0.0, 1.0) for op in ops])
    return image


def gaussian_blur(image, seed, sigma_range=(0.1, 2.0)):
    """Blur with a kernel of 10% of the image side, sigma uniform in `sigma_range` (SimCLR)."""
    size = image.shape[0]
    radius = max(1, int(math.ceil(0.05 * size)))
    sigma = _uniform(seed, *sigma_range)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    channels = image.shape[-1]
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")[0]


def _maybe(apply_fn, image, seed, probability: float):
    if probability <= 0:
        return image
    seeds = tf.random.experimental.stateless_split(seed, 2)
    return tf.cond(_uniform(seeds[0]) < probability, lambda: apply_fn(image, seeds[1]), lambda: image)


@AUGMENTATIONS.register("none")
def no_augmentation():
    def fn(image, seed):
        del seed
        return {"image": to_model_range(image)}

    return fn


@AUGMENTATIONS.register("crop_flip")
def crop_flip(padding: int = 4, flip: bool = True):
    def fn(image, seed):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        size = image.shape[0]
        padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(padded, (size, size, 3), crop_seed)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return {"image": to_model_range(image)}

    return fn


@AUGMENTATIONS.register("simclr")
def simclr_views(num_views: int = 2, crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
                 jitter_strength: float = 0.5, jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                 blur_prob: float = 0.0):
    """SimCLR's views. Defaults are the CIFAR ones (strength 0.5, no blur); ImageNet uses
    jitter_strength=1.0 and blur_prob=0.5."""

    def one_view(image, seed):
        seeds = tf.random.experimental.stateless_split(seed, 5)
        size = image.shape[0]
        view = random_resized_crop(tf.cast(image, tf.float32) / 255.0, seeds[0], size, crop_scale)
        view = tf.clip_by_value(view, 0.0, 1.0)
        if flip:
            view = tf.image.stateless_random_flip_left_right(view, seeds[1])
        view = _maybe(lambda x, s: color_jitter(x, s, jitter_strength), view, seeds[2], jitter_prob)
        view = _maybe(lambda x, s: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), view, seeds[3], grayscale_prob)
        view = _maybe(gaussian_blur, view, seeds[4], blur_prob)
        return view * 2.0 - 1.0

    def fn(image, seed):
        view_seeds = tf.random.experimental.stateless_split(seed, num_views)
        return {"views": tf.stack([one_view(image, view_seeds[i]) for i in range(num_views)])}

    return fn
