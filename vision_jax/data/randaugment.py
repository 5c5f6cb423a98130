"""RandAugment (Cubuk et al. 2020) as the pp op `randaugment`: the geometric and colour ops it
draws from, written with the helpers of `ops.py`. Imported by `ops.py`, which registers it."""
from __future__ import annotations

import functools
import math

import tensorflow as tf

from vision_jax.data.ops import (_blend, _check, _from_uint8, _grayscale, _solarize, _split, _to_uint8, _uniform,
                                 image_op)

_FILL = 0.5  # grey fill for pixels that geometric ops bring in from outside (timm, big_vision: 128)


def _affine(image, transform):
    """Maps output pixel (x, y) to input (a0 x + a1 y + a2, b0 x + b1 y + b2), bilinear."""
    transform = tf.cast(tf.concat([transform, [0.0, 0.0]], 0), tf.float32)[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=_FILL, interpolation="BILINEAR", fill_mode="CONSTANT")[0]


def _rotate(image, degrees):
    angle = degrees * math.pi / 180.0
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    cy, cx = (hw[0] - 1) / 2, (hw[1] - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    return _affine(image, tf.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]))


def _shear(image, amount, axis: int):
    zero, one = tf.zeros([]), tf.ones([])
    row = [one, amount, zero, zero, one, zero] if axis == 1 else [one, zero, zero, amount, one, zero]
    return _affine(image, tf.stack(row))


def _translate(image, fraction, axis: int):
    pixels = fraction * tf.cast(tf.shape(image)[axis], tf.float32)  # axis 1: width, 0: height
    zero, one = tf.zeros([]), tf.ones([])
    row = [one, zero, -pixels, zero, one, zero] if axis == 1 else [one, zero, zero, zero, one, -pixels]
    return _affine(image, tf.stack(row))


def _autocontrast(image):
    """Stretches each channel to the full [0, 1] range (PIL ImageOps.autocontrast)."""
    low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    spread = high - low
    return tf.where(spread > 0, (image - low) / tf.where(spread > 0, spread, 1.0), image)


def _equalize(image):
    """Per-channel histogram equalization on 256 levels (PIL ImageOps.equalize's lookup table),
    the three channels at once: channel c's level v counts in bin 256 c + v."""
    pixels = tf.cast(_to_uint8(image), tf.int32)
    bins = pixels + tf.range(3) * 256
    histogram = tf.reshape(tf.math.bincount(tf.reshape(bins, [-1]), minlength=768, maxlength=768), [3, 256])
    last_level = 255 - tf.argmax(tf.reverse(tf.cast(histogram > 0, tf.int32), [1]), axis=1, output_type=tf.int32)
    step = (tf.reduce_sum(histogram, 1) - tf.gather(histogram, last_level, batch_dims=1)) // 255
    lut = (tf.cumsum(histogram, axis=1) + (step // 2)[:, None]) // tf.maximum(step, 1)[:, None]
    lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], 1), 0, 255)
    equalized = tf.gather(tf.reshape(lut, [-1]), bins)
    return _from_uint8(tf.where(step > 0, equalized, pixels))  # step 0: a channel of one level stays


def _posterize(image, bits: int):
    mask = tf.constant(256 - 2 ** (8 - bits), tf.uint8)
    return _from_uint8(tf.bitwise.bitwise_and(_to_uint8(image), mask))


def _sharpness(image, factor):
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13), borders kept (ImageEnhance)."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior > 0, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return _blend(image, degenerate, factor)


def _randaugment_ops(level: float):
    """name -> fn(image, sign): the 14 ops of RandAugment (torchvision's list; timm/big_vision's
    ops minus invert/cutout/solarize_add). Magnitude `level` in [0, 1] (magnitude / 10, the
    paper's scale) makes each op stronger, as timm's '*Increasing' variants and torchvision do."""
    enhance = lambda sign: 1.0 + 0.9 * level * sign  # factor in [0.1, 1.9] at magnitude 10
    bits = 8 - round(4 * level)  # 8 bits (identity) .. 4 bits
    return {
        "identity": lambda x, sign: x,
        "autocontrast": lambda x, sign: _autocontrast(x),
        "equalize": lambda x, sign: _equalize(x),
        "rotate": lambda x, sign: _rotate(x, 30.0 * level * sign),
        "solarize": lambda x, sign: _solarize(x, 1.0 - level),
        "color": lambda x, sign: _blend(x, _grayscale(x), enhance(sign)),
        "posterize": lambda x, sign: _posterize(x, bits),
        "contrast": lambda x, sign: _blend(x, tf.reduce_mean(tf.image.rgb_to_grayscale(x)), enhance(sign)),
        "brightness": lambda x, sign: _blend(x, tf.zeros_like(x), enhance(sign)),
        "sharpness": lambda x, sign: _sharpness(x, enhance(sign)),
        "shear_x": lambda x, sign: _shear(x, 0.3 * level * sign, axis=1),
        "shear_y": lambda x, sign: _shear(x, 0.3 * level * sign, axis=0),
        "translate_x": lambda x, sign: _translate(x, 0.45 * level * sign, axis=1),
        "translate_y": lambda x, sign: _translate(x, 0.45 * level * sign, axis=0),
    }


RANDAUGMENT_OPS = tuple(_randaugment_ops(0.0))


@image_op("randaugment")
def randaugment(num_layers: int = 2, magnitude: float = 9):
    """RandAugment (Cubuk et al. 2020): `num_layers` ops, each drawn uniformly from
    RANDAUGMENT_OPS and applied at `magnitude` (0..10, the paper's scale; 9 as for ResNet-50 on
    ImageNet), with a random sign for the signed ones. Ranges at magnitude 10 (timm): rotate 30
    degrees, shear 0.3, translate 45% of the side, enhance factors 1 +- 0.9, posterize to 4 bits,
    solarize above 0; uncovered pixels are grey. Every drawn op is applied, as in the paper."""
    _check(isinstance(num_layers, int) and num_layers >= 0,
           f"pp op 'randaugment': num_layers must be an int >= 0, got {num_layers!r}.")
    _check(0 <= magnitude <= 10, f"pp op 'randaugment': magnitude must be in [0, 10], got {magnitude!r}.")
    branches = list(_randaugment_ops(magnitude / 10.0).values())

    def apply_layer(seed, layer, image):
        choice_seed, sign_seed = _split(tf.random.experimental.stateless_fold_in(seed, layer), 2)
        index = tf.random.stateless_uniform([], choice_seed, 0, len(branches), dtype=tf.int32)
        sign = tf.where(_uniform(sign_seed) < 0.5, -1.0, 1.0)
        image_out = tf.switch_case(index, [lambda fn=fn: fn(image, sign) for fn in branches])
        return layer + 1, tf.ensure_shape(tf.clip_by_value(image_out, 0.0, 1.0), image.shape)

    def transform(image, seed):
        # A loop over layers keeps one copy of the 14 ops in the graph, however many layers.
        return tf.while_loop(lambda layer, x: layer < num_layers, functools.partial(apply_layer, seed),
                             (tf.constant(0, tf.int64), image))[1]

    return transform
