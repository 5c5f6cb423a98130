"""Preprocessing ops: one registry of named, stateless TensorFlow ops that `pp.parse` composes.

An op factory takes the op's parameters (the arguments written in a pp string) and returns
`op(data: dict, seed: int64[2]) -> dict`, which reads and writes keys of `data`. Random ops draw
only from `seed` (tf.random.stateless_*), so the same seed always gives the same output, eagerly
or inside tf.data.

Image convention: `decode` turns encoded bytes or a uint8 image into float32 RGB in [0, 1];
every later image op takes and returns float32 images in [0, 1]; `value_range` / `normalize`
produce the model's range at the end. Image ops accept `key=` (which entry to read, default
'image') and `outkey=` (where to write, default `key`), as big_vision's ops do.

RandAugment lives in `randaugment.py` and the batch ops (mixup, cutmix) in `batch_ops.py`.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from vision_jax.errors import ConfigError
from vision_jax.registry import Registry

OPS = Registry("pp op")

# ImageNet channel statistics in [0, 1] units (the torchvision / timm constants).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Op = Callable[[dict, tf.Tensor], dict]


# ----------------------------------------------------------------------------------------------
# Plumbing: image ops with key/outkey, argument checks, randomness
# ----------------------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _read(data: dict, key: str, op_name: str) -> tf.Tensor:
    if key not in data:
        raise ConfigError(f"pp op {op_name!r} reads data[{key!r}], but the data has keys {sorted(data)}; "
                          f"pass key=... or rename(...) the entry first.")
    return data[key]


def image_op(name: str, *, needs_float: bool = True):
    """Registers `factory(**params) -> fn(image, seed) -> image` as op `name` with key/outkey.

    With `needs_float`, the op refuses anything but a float32 image, so that a pp string missing
    its `decode` fails with a message rather than computing on uint8 pixel values.
    """

    def decorator(factory):
        @functools.wraps(factory)
        def build(*args, key: str = "image", outkey: str | None = None, **kwargs) -> Op:
            transform = factory(*args, **kwargs)

            def op(data: dict, seed: tf.Tensor) -> dict:
                image = tf.convert_to_tensor(_read(data, key, name))
                if needs_float and image.dtype != tf.float32:
                    raise ConfigError(
                        f"pp op {name!r} needs a float32 image in [0, 1], but data[{key!r}] is "
                        f"{image.dtype.name}: put 'decode' first in the pp string (e.g. 'decode|{name}').")
                return {**data, (outkey or key): transform(image, seed)}

            return op

        signature = inspect.signature(factory)
        extra = [inspect.Parameter("key", inspect.Parameter.KEYWORD_ONLY, default="image"),
                 inspect.Parameter("outkey", inspect.Parameter.KEYWORD_ONLY, default=None)]
        build.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])
        OPS.register(name)(build)
        return build

    return decorator


def _uniform(seed, low=0.0, high=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _split(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _with_probability(p: float, transform, image, seed, cheap: bool = False):
    """`transform(image, seed)` with probability p, else `image` (no graph branch for p = 0 or 1).

    A `cheap` transform (a flip, a channel mix) is computed always and selected with tf.where:
    a tf.cond costs ~0.1 s of tracing inside tf.data, more than such an op costs to run.
    """
    if p <= 0:
        return image
    coin_seed, op_seed = _split(seed, 2)
    if p >= 1:
        return transform(image, op_seed)
    if cheap:
        return tf.where(_uniform(coin_seed) < p, transform(image, op_seed), image)
    return tf.cond(_uniform(coin_seed) < p, lambda: transform(image, op_seed), lambda: image)


def _check_probability(p, op_name: str) -> None:
    _check(isinstance(p, (int, float)) and 0 <= p <= 1, f"pp op {op_name!r}: p must be in [0, 1], got {p!r}.")


def _size_pair(size, op_name: str) -> tuple[int, int]:
    """int -> (size, size); (h, w) -> (h, w); anything else is a ConfigError."""
    pair = (size, size) if isinstance(size, int) else size
    _check(isinstance(pair, (tuple, list)) and len(pair) == 2
           and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair),
           f"pp op {op_name!r}: size must be a positive int or (height, width), got {size!r}.")
    return tuple(pair)


def _range_pair(value, op_name: str, what: str, low=-math.inf, high=math.inf) -> tuple[float, float]:
    _check(isinstance(value, (tuple, list)) and len(value) == 2
           and all(isinstance(v, (int, float)) for v in value) and low <= value[0] <= value[1] <= high,
           f"pp op {op_name!r}: {what} must be (min, max) with {low} <= min <= max <= {high}, got {value!r}.")
    return float(value[0]), float(value[1])


def _resize(image, size_hw, method: str):
    resized = tf.image.resize(image, size_hw, method=method, antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)  # bicubic overshoots; keep the [0, 1] contract


def _grayscale(image):
    """ITU-R 601-2 luma (the weights of PIL, torchvision and tf.image), repeated to 3 channels."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _blend(image, degenerate, factor):
    """PIL's ImageEnhance / torchvision's _blend: degenerate + factor * (image - degenerate)."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _to_uint8(image):
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def _from_uint8(image):
    return tf.cast(image, tf.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# Decoding and geometry
# ----------------------------------------------------------------------------------------------


def decode_to_uint8(data):
    """Encoded bytes -> uint8 RGB [H, W, 3] (sources use it too)."""
    # JPEGs use libjpeg's accurate integer IDCT (what PIL gives); tf's default fast IDCT is off
    # by a few levels. channels=3 repeats grey and drops alpha.
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image.set_shape((None, None, 3))
    return image


def _to_rgb(image):
    if image.shape.rank == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    if channels == 4:
        return image[..., :3]
    if channels != 3:
        raise ConfigError(f"pp op 'decode' got an image with {channels} channels; expected 1, 3 or 4.")
    return image


@image_op("decode", needs_float=False)
def decode():
    """Encoded image bytes (JPEG, PNG, ...) or a uint8 image -> float32 RGB in [0, 1].

    Grey is repeated to RGB, alpha is dropped. Dividing by 255 (not multiplying by 1/255) keeps
    `decode|value_range(-1, 1)` bit-equal to the classic `x / 127.5 - 1`.
    """

    def transform(image, seed):
        del seed
        if image.dtype == tf.string:
            image = decode_to_uint8(image)
        elif image.dtype == tf.uint8:
            image = _to_rgb(image)
        else:
            raise ConfigError(f"pp op 'decode' takes encoded bytes or a uint8 image, got {image.dtype.name} "
                              f"(is the image decoded twice?).")
        return tf.cast(image, tf.float32) / 255.0

    return transform


@image_op("resize")
def resize(size, method: str = "bilinear"):
    """Resizes to exactly `size` (int: square, or (height, width)), antialiased."""
    size_hw = _size_pair(size, "resize")
    return lambda image, seed: _resize(image, size_hw, method)


@image_op("resize_small")
def resize_small(size: int, method: str = "bilinear"):
    """Resizes so that the shorter side is `size`, keeping the aspect ratio (big_vision)."""
    _size_pair(size, "resize_small")

    def transform(image, seed):
        del seed
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = size / tf.reduce_min(hw)
        new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
        return _resize(image, new_hw, method)

    return transform


@image_op("central_crop")
def central_crop(size):
    """The central `size` (int: square, or (height, width)) window."""
    height, width = _size_pair(size, "central_crop")

    def transform(image, seed):
        del seed
        shape = tf.shape(image)
        top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
        return tf.image.crop_to_bounding_box(image, top, left, height, width)

    return transform


@image_op("random_crop")
def random_crop(size, padding: int = 0, padding_mode: str = "REFLECT"):
    """A random `size` window after padding each side by `padding` (torchvision RandomCrop; the
    CIFAR recipe of He et al. 2016 is random_crop(32, padding=4))."""
    height, width = _size_pair(size, "random_crop")
    _check(padding >= 0, f"pp op 'random_crop': padding must be >= 0, got {padding!r}.")

    def transform(image, seed):
        if padding:
            image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode=padding_mode)
        return tf.image.stateless_random_crop(image, (height, width, image.shape[-1] or 3), seed)

    return transform


CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback


def sample_crop_box(shape, seed, scale, ratio) -> tuple[tf.Tensor, tf.Tensor]:
    """(begin, size) of a box sampled as torchvision's RandomResizedCrop.get_params: up to 10
    draws of area ~ U(scale) x image area and log aspect ~ U(log ratio); the first box that fits
    wins (drawn all at once: static shapes); if none fits, the central crop with the aspect ratio
    clamped to `ratio`. The on-device op (device_augment.sample_crop_box) samples the same way."""
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    area_u, ratio_u, offset_u = tf.split(
        tf.random.stateless_uniform([2 * CROP_ATTEMPTS + 2], seed), [CROP_ATTEMPTS, CROP_ATTEMPTS, 2])
    area = height * width * (scale[0] + (scale[1] - scale[0]) * area_u)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_low + (log_high - log_low) * ratio_u)
    # tf.round rounds half to even, as Python's round() in torchvision does.
    box_w, box_h = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    any_fits = tf.reduce_any(fits)

    image_ratio = width / height
    fallback_w = tf.where(image_ratio > ratio[1], tf.round(height * ratio[1]), width)
    fallback_h = tf.where(image_ratio < ratio[0], tf.round(width / ratio[0]), height)
    box_h = tf.where(any_fits, box_h[first], fallback_h)
    box_w = tf.where(any_fits, box_w[first], fallback_w)
    # torch.randint(0, height - box_h + 1): uniform over the valid offsets.
    top = tf.where(any_fits, tf.floor(offset_u[0] * (height - box_h + 1)), tf.floor((height - box_h) / 2))
    left = tf.where(any_fits, tf.floor(offset_u[1] * (width - box_w + 1)), tf.floor((width - box_w) / 2))
    begin = tf.cast(tf.stack([top, left, 0.0]), tf.int32)
    size = tf.concat([tf.cast(tf.stack([box_h, box_w]), tf.int32), [-1]], axis=0)
    return begin, size


@image_op("random_resized_crop")
def random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method: str = "bicubic"):
    """Inception-style crop (Szegedy et al. 2015) as torchvision's RandomResizedCrop: a box of
    `scale` of the area and width/height `ratio` (see sample_crop_box), resized to `size`
    (bicubic, antialiased)."""
    size_hw = _size_pair(size, "random_resized_crop")
    scale = _range_pair(scale, "random_resized_crop", "scale", 0.0, 1.0)
    ratio = _range_pair(ratio, "random_resized_crop", "ratio", 0.0)
    _check(scale[1] > 0 and ratio[0] > 0, f"pp op 'random_resized_crop': scale and ratio must be positive, "
                                          f"got scale={scale}, ratio={ratio}.")

    def transform(image, seed):
        begin, crop_size = sample_crop_box(tf.shape(image), seed, scale, ratio)
        crop = tf.slice(image, begin, crop_size)
        crop.set_shape([None, None, image.shape[-1]])  # the crop keeps every channel; say so statically
        return _resize(crop, size_hw, method)

    return transform


@image_op("flip_lr")
def flip_lr(p: float = 0.5):
    """Mirrors left-right with probability p."""
    _check_probability(p, "flip_lr")

    def transform(image, seed):
        coin_seed, _ = _split(seed, 2)  # the same coin _with_probability would draw
        width = tf.shape(image)[1]
        columns = tf.range(width)
        # One gather with the column order the coin picks: computing both images and selecting
        # one with tf.where cost 2 ms per 224 px image on CPU.
        columns = tf.where(_uniform(coin_seed) < p, width - 1 - columns, columns)
        return tf.gather(image, columns, axis=1)

    return transform


# ----------------------------------------------------------------------------------------------
# Colour and filters (SimCLR, BYOL, DINO)
# ----------------------------------------------------------------------------------------------


@image_op("color_jitter")
def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                 p: float = 0.8):
    """torchvision ColorJitter, applied with probability p (defaults: BYOL/DINO's jitter).

    Brightness, contrast and saturation factors are uniform in [max(0, 1 - v), 1 + v] and blend
    with black, the mean grey level, and the grey image; the hue shift is uniform in [-hue, hue]
    (fraction of the colour wheel). The four run in a random order, each clipped to [0, 1].
    A strength of 0 leaves that adjustment out. SimCLR's strength s is (0.8s, 0.8s, 0.8s, 0.2s).
    """
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        _check(value >= 0, f"pp op 'color_jitter': {name} must be >= 0, got {value!r}.")
    _check(0 <= hue <= 0.5, f"pp op 'color_jitter': hue must be in [0, 0.5], got {hue!r}.")
    _check_probability(p, "color_jitter")

    def factor(seed, strength):
        return _uniform(seed, max(0.0, 1.0 - strength), 1.0 + strength)

    def jitter(image, seed):
        seeds = _split(seed, 5)
        adjustments = [
            (brightness, lambda x: _blend(x, tf.zeros_like(x), factor(seeds[0], brightness))),
            (contrast, lambda x: _blend(x, tf.reduce_mean(tf.image.rgb_to_grayscale(x)), factor(seeds[1], contrast))),
            (saturation, lambda x: _blend(x, _grayscale(x), factor(seeds[2], saturation))),
            (hue, lambda x: tf.clip_by_value(tf.image.adjust_hue(x, _uniform(seeds[3], -hue, hue)), 0.0, 1.0)),
        ]
        order = tf.random.experimental.stateless_shuffle(tf.range(4), seeds[4])
        # Four positions unrolled, each a switch over the four adjustments. A tf.while_loop over
        # the positions traces 4x fewer ops but ran the whole jitter ~1.5x slower per image inside
        # tf.data (16 px digits, 2 cores). Tracing stays small: recipes with more than two views
        # trace one copy of the view (views._views).
        x = image
        for position in range(4):
            branches = [(lambda fn=fn, x=x: fn(x)) if strength > 0 else (lambda x=x: x)
                        for strength, fn in adjustments]
            x = tf.ensure_shape(tf.switch_case(order[position], branches), image.shape)
        return x

    return lambda image, seed: _with_probability(p, jitter, image, seed)


@image_op("random_grayscale")
def random_grayscale(p: float = 0.2):
    """Replaces the image by its luma, in all three channels, with probability p (SimCLR)."""
    _check_probability(p, "random_grayscale")
    return lambda image, seed: _with_probability(p, lambda x, s: _grayscale(x), image, seed, cheap=True)


def _gaussian_kernel_radius(image, kernel_size):
    if kernel_size is not None:
        return tf.constant(kernel_size // 2)
    # SimCLR: kernel side 10% of the image height, made odd (23 px at 224); at least 3 px here so
    # that small images are blurred at all.
    return tf.maximum(tf.shape(image)[0] // 20, 1)


def _gaussian_blur(image, sigma, kernel_size=None):
    height = image.shape[0]
    static_radius = kernel_size // 2 if kernel_size is not None else (max(height // 20, 1) if height else None)
    radius = _gaussian_kernel_radius(image, kernel_size) if static_radius is None else static_radius
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    # Separable: a vertical then a horizontal pass, with reflected borders (as torchvision).
    if static_radius is not None:
        # Shifted slices, weighted and summed: ~5x faster on CPU than tf's depthwise convolution
        # with a 1-D kernel (4.8 vs 25.7 ms at 224 px, one thread), which made blur the bulk of
        # the DINO/BYOL host pipeline.
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        taps = range(2 * radius + 1)
        padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
        rows = tf.add_n([kernel[j] * padded[j:j + h] for j in taps])
        return tf.add_n([kernel[j] * rows[:, j:j + w] for j in taps])
    channels = image.shape[-1] or 3
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")[0]


@image_op("gaussian_blur")
def gaussian_blur(p: float = 0.5, sigma=(0.1, 2.0), kernel_size: int | None = None):
    """Gaussian blur with sigma uniform in `sigma`, with probability p (SimCLR, Chen et al. 2020,
    App. A; BYOL). kernel_size None: 10% of the image height, odd, at least 3."""
    _check_probability(p, "gaussian_blur")
    sigma = _range_pair(sigma, "gaussian_blur", "sigma", 0.0)
    _check(sigma[0] > 0, f"pp op 'gaussian_blur': sigma must be positive, got {sigma}.")
    _check(kernel_size is None or (isinstance(kernel_size, int) and kernel_size > 0 and kernel_size % 2 == 1),
           f"pp op 'gaussian_blur': kernel_size must be None or a positive odd int, got {kernel_size!r}.")
    blur = lambda image, seed: _gaussian_blur(image, _uniform(seed, *sigma), kernel_size)
    return lambda image, seed: _with_probability(p, blur, image, seed)


def _solarize(image, threshold):
    return tf.where(image >= threshold, 1.0 - image, image)


@image_op("solarize")
def solarize(p: float = 0.2, threshold: float = 0.5):
    """x -> 1 - x where x >= threshold ([0, 1] units), with probability p (BYOL's second view)."""
    _check_probability(p, "solarize")
    return lambda image, seed: _with_probability(p, lambda x, s: _solarize(x, threshold), image, seed, cheap=True)


# ----------------------------------------------------------------------------------------------
# Model range
# ----------------------------------------------------------------------------------------------


@image_op("value_range")
def value_range(vmin: float = -1, vmax: float = 1):
    """[0, 1] -> [vmin, vmax], linearly."""
    _check(vmin < vmax, f"pp op 'value_range': need vmin < vmax, got ({vmin}, {vmax}).")
    return lambda image, seed: vmin + image * (vmax - vmin)


@image_op("normalize")
def normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(x - mean) / std per channel, in [0, 1] units (defaults: ImageNet statistics)."""
    _check(all(s > 0 for s in std), f"pp op 'normalize': std must be positive, got {std!r}.")
    # Tensors are made per call, not here: a parsed pp string may be reused across tf.data graphs.
    return lambda image, seed: (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def model_range_to_uint8(images, normalized: bool) -> np.ndarray:
    """Model-range images back to uint8 pixels (NumPy, for pictures): the inverse of the recipes'
    last op, `value_range(-1, 1)`, or `normalize` with the ImageNet statistics when `normalized`."""
    images = np.asarray(images, np.float32)
    unit = images * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN) if normalized else (images + 1.0) / 2.0
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Labels and keys
# ----------------------------------------------------------------------------------------------


@OPS.register("onehot")
def onehot(num_classes: int, key: str = "label", smoothing: float = 0.0, outkey: str | None = None) -> Op:
    """Integer label -> float32 one-hot [num_classes], with label smoothing (Szegedy et al. 2016):
    (1 - smoothing) * onehot + smoothing / num_classes."""
    _check(isinstance(num_classes, int) and num_classes > 0,
           f"pp op 'onehot': num_classes must be a positive int, got {num_classes!r}.")
    _check(0 <= smoothing < 1, f"pp op 'onehot': smoothing must be in [0, 1), got {smoothing!r}.")

    def op(data, seed):
        labels = tf.one_hot(_read(data, key, "onehot"), num_classes, dtype=tf.float32)
        return {**data, (outkey or key): (1.0 - smoothing) * labels + smoothing / num_classes}

    return op


@OPS.register("keep")
def keep(*keys: str) -> Op:
    """Keeps only `keys` of the data."""

    def op(data, seed):
        return {k: _read(data, k, "keep") for k in keys}

    return op


@OPS.register("rename")
def rename(**new_from_old: str) -> Op:
    """rename(new="old"): moves data['old'] to data['new'] (e.g. rename(labels="label"))."""

    def op(data, seed):
        out = dict(data)
        moved = {new: _read(data, old, "rename") for new, old in new_from_old.items()}
        for old in new_from_old.values():
            out.pop(old)
        return {**out, **moved}

    return op


# ----------------------------------------------------------------------------------------------
# Random erasing (Zhong et al. 2020)
# ----------------------------------------------------------------------------------------------


@image_op("random_erasing")
def random_erasing(p: float = 0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float = 0):
    """Sets a random rectangle to `value`, with probability p (Zhong et al. 2020; torchvision's
    RandomErasing box sampling, 10 tries; p = 0.25 as in timm/DeiT).

    Use it after `normalize`, as timm does, so that value=0 is the mean colour: it is the one op
    that does not require [0, 1] input.
    """
    _check_probability(p, "random_erasing")
    scale = _range_pair(scale, "random_erasing", "scale", 0.0, 1.0)
    ratio = _range_pair(ratio, "random_erasing", "ratio", 0.0)
    _check(ratio[0] > 0, f"pp op 'random_erasing': ratio must be positive, got {ratio}.")
    tries = 10

    def erase(image, seed):
        area_seed, ratio_seed, top_seed, left_seed = _split(seed, 4)
        shape = tf.shape(image)
        height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        area = height * width * _uniform(area_seed, *scale, shape=[tries])
        aspect = tf.exp(_uniform(ratio_seed, math.log(ratio[0]), math.log(ratio[1]), shape=[tries]))
        box_h, box_w = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
        fits = (box_h < height) & (box_w < width) & (box_h > 0) & (box_w > 0)
        first = tf.argmax(tf.cast(fits, tf.int32))  # the first try that fits (torchvision's loop)
        box_h, box_w = box_h[first], box_w[first]
        top = tf.floor(_uniform(top_seed) * (height - box_h + 1))
        left = tf.floor(_uniform(left_seed) * (width - box_w + 1))
        rows = tf.range(height)[:, None, None]
        cols = tf.range(width)[None, :, None]
        inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
        erased = tf.where(inside, tf.cast(value, image.dtype), image)
        return tf.where(tf.reduce_any(fits), erased, image)

    return lambda image, seed: _with_probability(p, erase, image, seed)


# Registers its op in OPS; imported last because it builds on the helpers above.
from vision_jax.data import randaugment  # noqa: E402,F401
