"""Augmentation on the accelerators: jitted JAX ops applied to the (sharded) global batch.

For when tf.data on the host cannot feed the accelerators (a bf16 ResNet-50 on one H100 eats
about 3,000 images/s; solo-learn added NVIDIA DALI for this). The host then only decodes and
scales ('none' augmentation) and the train step calls a recipe from `DEVICE_AUGMENTATIONS`.

The ops follow torchvision's semantics, as the host ops in `ops.py` do, so a recipe means the
same thing on either side. An op is a `Step`: a function of one image [H, W, 3] in [0, 1] and a
few uniform numbers, applied with a probability. `augment(images, key, steps)` runs a chain of
steps on a batch, vmapped over the examples; example i draws its numbers from
`fold_in(key, first_index + i)`. Because that index is the example's position in the *global*
batch, the result does not depend on how the batch is split over devices or processes: a
function jitted over the global batch leaves `first_index` at 0, code that augments one slice
passes the slice's offset.

A chain draws all the numbers an example needs (coins, factors, boxes, orders) in one call
rather than splitting keys per decision: every PRNG call is inlined into the program, and on
CPU each cost 0.5-1 s of compilation, more than the augmentation takes to run.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from vision_jax.data.ops import IMAGENET_MEAN, IMAGENET_STD
from vision_jax.errors import ConfigError, DataError
from vision_jax.registry import Registry

DEVICE_AUGMENTATIONS = Registry("device augmentation")

# ITU-R BT.601 luma, the weights of tf.image.rgb_to_grayscale (torchvision uses them rounded).
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


# --- steps and chains ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    """One augmentation of one image: `transform(image [H, W, 3], uniforms [num_uniforms])`,
    applied with probability `p` (a number, or a traced scalar when vmapped over views)."""
    transform: Callable[[jax.Array, jax.Array], jax.Array]
    num_uniforms: int
    p: float | jax.Array = 1.0

    def __call__(self, image: jax.Array, uniforms: jax.Array) -> jax.Array:
        """`uniforms` [1 + num_uniforms]: the coin, then the transform's numbers."""
        static_p = isinstance(self.p, (int, float))
        if static_p and self.p <= 0:
            return image
        changed = self.transform(image, uniforms[1:])
        if static_p and self.p >= 1:
            return changed
        # Under vmap both run and `where` picks: static shapes, no divergent control flow.
        return jnp.where(uniforms[0] < self.p, changed, image)


def example_uniforms(key: jax.Array, batch_size: int, count: int, first_index=0) -> jax.Array:
    """[batch_size, count] uniforms in [0, 1); row i depends only on (key, first_index + i)."""
    draw = lambda i: jax.random.uniform(jax.random.fold_in(key, i), (count,))
    return jax.vmap(draw)(first_index + jnp.arange(batch_size))


def augment(images: jax.Array, key: jax.Array, steps: Sequence[Step], first_index=0) -> jax.Array:
    """Applies `steps` in order to each example of `images` [B, H, W, 3] in [0, 1]."""
    _check_images(images)
    steps = [step for step in steps if not (isinstance(step.p, (int, float)) and step.p <= 0)]
    if not steps:
        return images
    counts = [1 + step.num_uniforms for step in steps]

    def chain(images, key, first_index):
        def one(image, numbers):
            offset = 0
            for step, count in zip(steps, counts):
                image = step(image, numbers[offset:offset + count])
                offset += count
            return image

        return jax.vmap(one)(images, example_uniforms(key, images.shape[0], sum(counts), first_index))

    sharding = jax.typeof(images).sharding
    if sharding.mesh.explicit_axes:
        # With explicit mesh axes, shardings are part of the types and vmap, switch and select
        # insist they agree. Per-example ops need none of that: let XLA partition them (auto
        # axes) and hand the result back sharded as the input was.
        chain = jax.sharding.auto_axes(chain, out_sharding=sharding)
    return chain(images, key, first_index)


# --- input checks --------------------------------------------------------------------------------


def _check_images(images) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"Device augmentation needs images [batch, height, width, 3]; got shape {images.shape}.")


def _check_probability(name: str, p) -> None:
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1]; got {p}.")


def _check_range(name: str, bounds: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if len(bounds) != 2 or not low < bounds[0] <= bounds[1] <= high:
        raise ConfigError(f"{name} must be (min, max) with {low} < min <= max <= {high}; got {tuple(bounds)}.")
    return float(bounds[0]), float(bounds[1])


# --- random resized crop -------------------------------------------------------------------------

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params
CROP_BOX_UNIFORMS = 2 * CROP_ATTEMPTS + 2


def sample_crop_box(uniforms: jax.Array, height: int, width: int, scale=(0.08, 1.0),
                    ratio=(3 / 4, 4 / 3)) -> jax.Array:
    """(top, left, box_height, box_width) as int32, sampled as torchvision's RandomResizedCrop,
    from CROP_BOX_UNIFORMS uniforms in [0, 1).

    Up to 10 draws of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); the first box
    that fits wins (all draws happen at once, to keep shapes static); if none fits, the central
    crop with the aspect ratio clamped to `ratio`.
    """
    area_u, ratio_u = uniforms[:CROP_ATTEMPTS], uniforms[CROP_ATTEMPTS:2 * CROP_ATTEMPTS]
    top_u, left_u = uniforms[2 * CROP_ATTEMPTS], uniforms[2 * CROP_ATTEMPTS + 1]
    area = height * width * (scale[0] + (scale[1] - scale[0]) * area_u)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_low + (log_high - log_low) * ratio_u)
    # jnp.round rounds half to even, as Python's round() in torchvision does.
    box_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    box_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = jnp.argmax(fits)

    # Fallback: the whole image, narrowed to the nearest allowed aspect ratio.
    if width / height < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    any_fits = fits.any()
    box_h = jnp.where(any_fits, box_h[first], fallback_h)
    box_w = jnp.where(any_fits, box_w[first], fallback_w)
    # torch.randint(0, height - box_h + 1): uniform over the valid offsets.
    top = jnp.floor(top_u * (height - box_h + 1)).astype(jnp.int32)
    left = jnp.floor(left_u * (width - box_w + 1)).astype(jnp.int32)
    top = jnp.where(any_fits, top, (height - fallback_h) // 2)
    left = jnp.where(any_fits, left, (width - fallback_w) // 2)
    return jnp.stack([top, left, box_h, box_w])


def _keys_cubic(x):
    """Keys' cubic convolution kernel with a = -0.5 (what TF, PIL and torch use with antialias)."""
    x = jnp.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def _triangle(x):
    return jnp.maximum(0.0, 1.0 - jnp.abs(x))


RESIZE_KERNELS = {"bicubic": _keys_cubic, "bilinear": _triangle}


def _resample_matrix(in_size: int, out_size: int, start, length, kernel) -> jax.Array:
    """[out_size, in_size] weights that resize input pixels [start, start + length) to out_size.

    The same arithmetic as jax.image.scale_and_translate (half-pixel centres; when shrinking,
    the kernel widens by the shrink factor: antialiasing), except that pixels outside the box get
    no weight and the rest are renormalised. That makes it crop-then-resize, as tf.image.resize
    of a slice and torchvision do; scale_and_translate on the whole image would blend in the
    pixels just outside the box at its edges.
    """
    step = length / out_size  # input pixels per output pixel
    centres = start + (jnp.arange(out_size) + 0.5) * step - 0.5
    pixels = jnp.arange(in_size)
    weights = kernel((centres[:, None] - pixels[None, :]) / jnp.maximum(step, 1.0))
    weights = jnp.where((pixels >= start) & (pixels < start + length), weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def crop_and_resize(image: jax.Array, box: jax.Array, size: int, method: str = "bicubic") -> jax.Array:
    """One image [H, W, C], box (top, left, height, width) -> [size, size, C], antialiased."""
    if method not in RESIZE_KERNELS:
        raise ConfigError(f"Unknown resize method {method!r}; use one of {sorted(RESIZE_KERNELS)}.")
    kernel = RESIZE_KERNELS[method]
    box = box.astype(jnp.float32)
    rows = _resample_matrix(image.shape[0], size, box[0], box[2], kernel)
    cols = _resample_matrix(image.shape[1], size, box[1], box[3], kernel)
    return jnp.einsum("yh,hwc,xw->yxc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)


def random_resized_crop_step(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method: str = "bicubic") -> Step:
    """Inception-style crop (Szegedy et al. 2015) as torchvision.transforms.RandomResizedCrop:
    area fraction ~ U(scale), log aspect ~ U(log ratio), resized to `size` (antialiased bicubic,
    clipped back to [0, 1] because the cubic kernel overshoots).

    The host op resizes the same way but samples its box with tf.image's
    sample_distorted_bounding_box, which favours smaller boxes (mean area fraction 0.41 against
    0.49 here, at the default scale); tests/test_device_augment.py tracks the difference."""
    scale = _check_range("random_resized_crop scale", scale, 0.0, 1.0)
    ratio = _check_range("random_resized_crop ratio", ratio, 0.0, math.inf)
    if method not in RESIZE_KERNELS:
        raise ConfigError(f"Unknown resize method {method!r}; use one of {sorted(RESIZE_KERNELS)}.")

    def transform(image, uniforms):
        box = sample_crop_box(uniforms, image.shape[0], image.shape[1], scale, ratio)
        return jnp.clip(crop_and_resize(image, box, size, method), 0.0, 1.0)

    return Step(transform, CROP_BOX_UNIFORMS)


def pad_and_crop_step(padding: int = 4) -> Step:
    """Reflect-pad by `padding` and crop back to the original size at a uniform offset (the
    CIFAR recipe of He et al. 2016)."""
    if padding < 0:
        raise ConfigError(f"padding must be >= 0; got {padding}.")

    def transform(image, uniforms):
        padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
        top, left = jnp.floor(uniforms * (2 * padding + 1)).astype(jnp.int32)
        return jax.lax.dynamic_slice(padded, (top, left, 0), image.shape)

    return Step(transform, 2)


# --- flips, colour, filters ----------------------------------------------------------------------


def flip_lr_step(p: float = 0.5) -> Step:
    """Mirrors left-right with probability p."""
    _check_probability("flip_lr p", p)
    return Step(lambda image, _: image[:, ::-1], 0, p)


def grayscale(image: jax.Array) -> jax.Array:
    """[..., 3] -> [..., 1] luma."""
    return jnp.tensordot(image, jnp.asarray(LUMA_WEIGHTS, image.dtype), axes=1)[..., None]


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> HSV with hue in [0, 1) (as tf.image.rgb_to_hsv and torchvision)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
    hue = jnp.where(value == r, (g - b) / safe_chroma,
                    jnp.where(value == g, 2.0 + (b - r) / safe_chroma, 4.0 + (r - g) / safe_chroma))
    hue = jnp.where(chroma > 0, (hue / 6.0) % 1.0, 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """Inverse of rgb_to_hsv, in the branch-free form f(n) = V - V S clip(min(k, 4 - k), 0, 1),
    k = (n + 6 H) mod 6, n = 5, 3, 1 for R, G, B."""
    hue, saturation, value = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = (jnp.asarray([5.0, 3.0, 1.0], hsv.dtype) + 6.0 * hue) % 6.0
    return value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_brightness(image, factor):
    return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
    """Blend with the image's mean luma (torchvision; TF blends with per-channel means)."""
    return jnp.clip(factor * image + (1.0 - factor) * grayscale(image).mean(), 0.0, 1.0)


def adjust_saturation(image, factor):
    """Blend with the grey image (torchvision; TF scales the HSV saturation instead)."""
    return jnp.clip(factor * image + (1.0 - factor) * grayscale(image), 0.0, 1.0)


def adjust_hue(image, delta):
    """Rotates hue by `delta` turns."""
    hsv = rgb_to_hsv(image)
    return hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0))


def color_jitter_step(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                      p: float = 0.8) -> Step:
    """torchvision.transforms.ColorJitter, applied with probability p (SimCLR, Chen et al. 2020).

    Brightness, contrast and saturation factors ~ U[max(0, 1 - s), 1 + s], hue shift ~ U[-h, h]
    (turns), the four applied in a random order per example, each clipped to [0, 1]. A strength
    of 0 leaves that adjustment out. Defaults: BYOL's (Grill et al. 2020, Table 6).
    """
    _check_probability("color_jitter p", p)
    for name, strength in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if strength < 0:
            raise ConfigError(f"color_jitter {name} must be >= 0; got {strength}.")
    if not 0.0 <= hue <= 0.5:
        raise ConfigError(f"color_jitter hue must be in [0, 0.5] (turns of the colour wheel); got {hue}.")
    # (adjustment, factor range, strength); blend factors stay >= 0, the hue shift is signed.
    adjustments = [(adjust_brightness, max(0.0, 1 - brightness), 1 + brightness, brightness),
                   (adjust_contrast, max(0.0, 1 - contrast), 1 + contrast, contrast),
                   (adjust_saturation, max(0.0, 1 - saturation), 1 + saturation, saturation),
                   (adjust_hue, -hue, hue, hue)]
    active = [(fn, low, high) for fn, low, high, strength in adjustments if strength > 0]
    count = len(active)
    branches = [fn for fn, _, _ in active]
    lows = [low for _, low, _ in active]
    highs = [high for _, _, high in active]

    def transform(image, uniforms):
        factors = jnp.asarray(lows) + (jnp.asarray(highs) - jnp.asarray(lows)) * uniforms[:count]
        # The ranks of i.i.d. uniforms are a uniformly random permutation (torch.randperm).
        order = jnp.argsort(uniforms[count:])

        def apply_next(position, image):
            chosen = order[position]
            return jax.lax.switch(chosen, branches, image, factors[chosen])

        # A loop (not unrolled) keeps one copy of each adjustment in the compiled program.
        return jax.lax.fori_loop(0, count, apply_next, image)

    return Step(transform, 2 * count, p if count else 0.0)


def random_grayscale_step(p: float = 0.2) -> Step:
    """Replaces the image by its luma in all three channels, with probability p."""
    _check_probability("random_grayscale p", p)
    return Step(lambda image, _: jnp.broadcast_to(grayscale(image), image.shape), 0, p)


def blur_kernel_size(side: int) -> int:
    """10% of the image side, made odd (SimCLR's choice, Chen et al. 2020, appendix A: 23 px at
    224), and at least 3 so that small images are blurred at all; as the host op."""
    return 2 * max(side // 20, 1) + 1


def gaussian_blur_one(image: jax.Array, sigma, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur of one image [H, W, C] with reflect padding."""
    radius = kernel_size // 2
    if kernel_size < 1 or kernel_size % 2 == 0 or radius >= min(image.shape[:2]):
        raise ConfigError(f"gaussian_blur kernel_size must be odd, >= 1, and less than twice the image side "
                          f"{min(image.shape[:2])} (reflect padding); got {kernel_size}.")
    taps = jnp.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    height, width = image.shape[:2]
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    # A short static loop over the kernel taps (not the batch): shifted adds that XLA fuses.
    columns = sum(kernel[t] * padded[t:t + height] for t in range(kernel_size))
    return sum(kernel[t] * columns[:, t:t + width] for t in range(kernel_size))


def gaussian_blur_step(p: float = 0.5, sigma=(0.1, 2.0), kernel_size: int | None = None) -> Step:
    """Gaussian blur with sigma ~ U(sigma), with probability p (SimCLR; BYOL).
    `kernel_size` None: 10% of the image height, odd, at least 3."""
    _check_probability("gaussian_blur p", p)
    low, high = _check_range("gaussian_blur sigma", sigma, 0.0, math.inf)

    def transform(image, uniforms):
        size = blur_kernel_size(image.shape[0]) if kernel_size is None else kernel_size
        return gaussian_blur_one(image, low + (high - low) * uniforms[0], size)

    return Step(transform, 1, p)


def solarize_step(p: float = 0.2, threshold: float = 0.5) -> Step:
    """Inverts pixels >= threshold, with probability p (BYOL, Grill et al. 2020)."""
    _check_probability("solarize p", p)
    return Step(lambda image, _: jnp.where(image >= threshold, 1.0 - image, image), 0, p)


# --- the same ops on a batch ---------------------------------------------------------------------
# One step each; a recipe chains steps with `augment` instead, to draw its numbers in one call.


def random_resized_crop(images, key, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method: str = "bicubic",
                        *, first_index=0) -> jax.Array:
    return augment(images, key, [random_resized_crop_step(size, scale, ratio, method)], first_index)


def flip_lr(images, key, p: float = 0.5, *, first_index=0) -> jax.Array:
    return augment(images, key, [flip_lr_step(p)], first_index)


def color_jitter(images, key, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1, p: float = 0.8, *, first_index=0) -> jax.Array:
    return augment(images, key, [color_jitter_step(brightness, contrast, saturation, hue, p)], first_index)


def random_grayscale(images, key, p: float = 0.2, *, first_index=0) -> jax.Array:
    return augment(images, key, [random_grayscale_step(p)], first_index)


def gaussian_blur(images, key, p: float = 0.5, sigma=(0.1, 2.0), kernel_size: int | None = None,
                  *, first_index=0) -> jax.Array:
    return augment(images, key, [gaussian_blur_step(p, sigma, kernel_size)], first_index)


def solarize(images, key, p: float = 0.2, threshold: float = 0.5, *, first_index=0) -> jax.Array:
    return augment(images, key, [solarize_step(p, threshold)], first_index)


# --- recipes --------------------------------------------------------------------------------------

Recipe = Callable[..., dict]  # (batch, key, first_index=0) -> batch


def _batch_images(batch: dict, recipe: str) -> jax.Array:
    """batch['image'] as float32 in [-1, 1], the host 'none' augmentation's output."""
    if "image" not in batch:
        raise DataError(f"Device augmentation {recipe!r} needs batch['image'] (the host 'none' augmentation's "
                        f"output); the batch has {sorted(batch)}.")
    images = jnp.asarray(batch["image"], jnp.float32)
    _check_images(images)
    return images


def to_model_range(images: jax.Array, normalize: bool = False) -> jax.Array:
    """[0, 1] -> [-1, 1] (clipped, since a blur's rounding can land a hair above 1), or with
    `normalize` standardized by the ImageNet mean and std, as the host recipes' `normalize` option."""
    images = jnp.clip(images, 0.0, 1.0)
    if normalize:
        return (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return images * 2.0 - 1.0


def _check_views_options(size: int, crop_scale, jitter_prob: float, grayscale_prob: float) -> None:
    if size < 0:
        raise ConfigError(f"size must be >= 0 (0: the input size); got {size}.")
    _check_range("crop_scale", crop_scale, 0.0, 1.0)
    _check_probability("jitter_prob", jitter_prob)
    _check_probability("grayscale_prob", grayscale_prob)


@DEVICE_AUGMENTATIONS.register("simclr")
def simclr_views(num_views: int = 2, crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
                 jitter_strength: float = 0.5, jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                 blur_prob: float = 0.0, size: int = 0, normalize: bool = False) -> Recipe:
    """SimCLR's views (Chen et al. 2020, appendix A), as the host 'simclr' recipe: random resized
    crop, flip, colour jitter (brightness, contrast, saturation 0.8 s, hue 0.2 s; probability
    `jitter_prob`), grayscale, blur. Defaults are the CIFAR ones (s = 0.5, no blur); ImageNet uses
    jitter_strength=1.0 and blur_prob=0.5. `size` 0 keeps the input size.

    Returns fn(batch, key, first_index=0): batch['image'] [B, H, W, 3] in [-1, 1] ->
    batch['views'] [B, num_views, size, size, 3] in [-1, 1] (standardized with `normalize`);
    other keys pass through.
    """
    if num_views < 1:
        raise ConfigError(f"num_views must be >= 1; got {num_views}.")
    _check_views_options(size, crop_scale, jitter_prob, grayscale_prob)
    _check_probability("blur_prob", blur_prob)
    if jitter_strength < 0:
        raise ConfigError(f"jitter_strength must be >= 0; got {jitter_strength}.")
    s = jitter_strength

    def fn(batch: dict, key: jax.Array, first_index=0) -> dict:
        images = (_batch_images(batch, "simclr") + 1.0) * 0.5
        steps = [random_resized_crop_step(size or images.shape[1], crop_scale), flip_lr_step(0.5 if flip else 0.0),
                 color_jitter_step(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, jitter_prob),
                 random_grayscale_step(grayscale_prob), gaussian_blur_step(blur_prob)]
        # The views differ only in their keys: vmap over them compiles the chain once, not V times.
        one_view = lambda view_key: augment(images, view_key, steps, first_index)
        views = jax.vmap(one_view, out_axes=1)(jax.random.split(key, num_views))
        rest = {k: v for k, v in batch.items() if k != "image"}
        return {**rest, "views": to_model_range(views, normalize)}

    return fn


@DEVICE_AUGMENTATIONS.register("byol")
def byol_views(crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
               jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), jitter_prob: float = 0.8,
               grayscale_prob: float = 0.2, blur_probs: tuple[float, float] = (1.0, 0.1),
               solarize_probs: tuple[float, float] = (0.0, 0.2), size: int = 0, normalize: bool = False) -> Recipe:
    """BYOL's two asymmetric views (Grill et al. 2020, Table 6): crop, flip, colour jitter
    (brightness, contrast, saturation, hue) with probability 0.8, grayscale 0.2, then blur with
    probability 1.0 / 0.1 and solarize 0.0 / 0.2 for view 1 / 2. `size` 0 keeps the input size.

    Returns fn(batch, key, first_index=0): batch['image'] in [-1, 1] -> batch['views']
    [B, 2, size, size, 3] in [-1, 1] (standardized with `normalize`); other keys pass through.
    """
    _check_views_options(size, crop_scale, jitter_prob, grayscale_prob)
    if len(jitter) != 4:
        raise ConfigError(f"jitter must be (brightness, contrast, saturation, hue); got {jitter}.")
    for name, pair in (("blur_probs", blur_probs), ("solarize_probs", solarize_probs)):
        if len(pair) != 2:
            raise ConfigError(f"{name} must hold one probability per view (two); got {pair}.")
        for p in pair:
            _check_probability(name, p)

    def fn(batch: dict, key: jax.Array, first_index=0) -> dict:
        images = (_batch_images(batch, "byol") + 1.0) * 0.5

        def one_view(view_key, blur_p, solarize_p):
            steps = [random_resized_crop_step(size or images.shape[1], crop_scale),
                     flip_lr_step(0.5 if flip else 0.0), color_jitter_step(*jitter, p=jitter_prob),
                     random_grayscale_step(grayscale_prob)]
            # The views differ in their probabilities too: traced, they keep one compiled chain.
            if max(blur_probs) > 0:
                steps.append(gaussian_blur_step(blur_p))
            if max(solarize_probs) > 0:
                steps.append(solarize_step(solarize_p))
            return augment(images, view_key, steps, first_index)

        views = jax.vmap(one_view, out_axes=1)(jax.random.split(key, 2), jnp.asarray(blur_probs, jnp.float32),
                                               jnp.asarray(solarize_probs, jnp.float32))
        rest = {k: v for k, v in batch.items() if k != "image"}
        return {**rest, "views": to_model_range(views, normalize)}

    return fn


@DEVICE_AUGMENTATIONS.register("crop_flip")
def crop_flip(padding: int = 4, flip: bool = True, normalize: bool = False) -> Recipe:
    """The CIFAR supervised recipe (He et al. 2016): reflect-pad by 4, random crop, flip.

    Returns fn(batch, key, first_index=0): batch['image'] [B, H, W, 3] in [-1, 1] -> the same
    key, augmented (standardized with `normalize`); other keys pass through.
    """
    steps = [pad_and_crop_step(padding), flip_lr_step(0.5 if flip else 0.0)]

    def fn(batch: dict, key: jax.Array, first_index=0) -> dict:
        # Cropping and flipping do not care about the value range: work in [-1, 1] directly.
        images = augment(_batch_images(batch, "crop_flip"), key, steps, first_index)
        return {**batch, "image": to_model_range((images + 1.0) * 0.5, normalize) if normalize else images}

    return fn
