"""Augmentation recipes: the views each method trains on, written as pp strings of data/ops.py.

`AUGMENTATIONS` maps a config name (config.data.augment.name) to a factory returning
`fn(image_uint8 [H, W, 3], seed int64[2]) -> dict` of float32 tensors; the same seed gives the
same output. Outputs are in [-1, 1], or standardized with the ImageNet mean/std when the recipe's
option `normalize=True` (for models pretrained that way). `size=0` means "the input's size".

  - 'none': {'image'}; evaluation: decode, optional resize.
  - 'crop_flip': {'image'}; reflect-pad, random crop, flip (the CIFAR supervised recipe).
  - 'pp': whatever the pp string `spec` writes (it sees {'image': uint8 image}).
  - 'simclr': {'views': [num_views, S, S, 3]} (Chen et al. 2020).
  - 'byol': {'views': [2, S, S, 3]}, two asymmetric views (Grill et al. 2020, Table 6).
  - 'dino': {'global_views': [2, G, G, 3], 'local_views': [num_local, L, L, 3]} (Caron et al. 2021).
  - 'mae': {'image'}; crop and flip only (He et al. 2022).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import tensorflow as tf

from vision_jax.data import pp
from vision_jax.errors import ConfigError
from vision_jax.registry import Registry

AUGMENTATIONS = Registry("augmentation")

# Colour jitter (brightness, contrast, saturation, hue) of BYOL and DINO; SimCLR's is 0.8s/0.2s.
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)

_parse = functools.lru_cache(maxsize=64)(pp.parse)  # each recipe parses its strings once per size


def _model_range(normalize: bool) -> str:
    return "normalize" if normalize else "value_range(-1, 1)"


def _pair(values: Sequence[float]) -> str:
    return f"({float(values[0])}, {float(values[1])})"


def view_spec(size: int, crop_scale=(0.08, 1.0), flip: bool = True, jitter=BYOL_JITTER, jitter_prob: float = 0.8,
              grayscale_prob: float = 0.2, blur_prob: float = 0.0, solarize_prob: float = 0.0,
              normalize: bool = False) -> str:
    """The pp string of one SimCLR/BYOL/DINO-style view (ops with probability 0 are left out)."""
    ops = ["decode", f"random_resized_crop({size}, scale={_pair(crop_scale)})"]
    if flip:
        ops.append("flip_lr")
    if jitter_prob > 0:
        ops.append(f"color_jitter({', '.join(str(float(v)) for v in jitter)}, p={jitter_prob})")
    if grayscale_prob > 0:
        ops.append(f"random_grayscale({grayscale_prob})")
    if blur_prob > 0:
        ops.append(f"gaussian_blur({blur_prob})")
    if solarize_prob > 0:
        ops.append(f"solarize({solarize_prob})")
    return "|".join(ops + [_model_range(normalize)])


def _input_side(image: tf.Tensor, size: int, recipe: str) -> int:
    """`size`, or with size=0 the input's static height (sources give fixed-size images)."""
    if size:
        return size
    if image.shape[0] is None:
        raise ConfigError(f"augmentation {recipe!r} with size=0 keeps the input size, but the input size is not "
                          f"known statically; set config.data.augment.size.")
    return image.shape[0]


MAX_UNROLLED_VIEWS = 2


def _views(spec: str, count: int, image: tf.Tensor, seed: tf.Tensor, first_index: int = 0) -> tf.Tensor:
    """`count` views of the image by one pp string, view i with the seed fold_in(seed, first_index + i).

    Up to MAX_UNROLLED_VIEWS views are separate copies of the ops in the graph; more (multi-crop)
    go through tf.map_fn, which keeps one copy however many views there are, so tracing stays
    fast, but costs ~30% per image on small images (SimCLR's two 16 px digit views, 2 cores).
    """
    preprocess = _parse(spec)
    seeds = [tf.random.experimental.stateless_fold_in(seed, tf.constant(i, tf.int64))
             for i in range(first_index, first_index + count)]
    if count <= MAX_UNROLLED_VIEWS:
        return tf.stack([preprocess({"image": image}, view_seed)["image"] for view_seed in seeds])
    return tf.map_fn(lambda view_seed: preprocess({"image": image}, view_seed)["image"], tf.stack(seeds),
                     fn_output_signature=tf.float32)


def _check_early(*specs: str) -> None:
    """Parses the recipe's pp strings at build time, so a bad option fails before any data loads."""
    for spec in specs:
        _parse(spec)


@AUGMENTATIONS.register("none")
def no_augmentation(size: int = 0, normalize: bool = False):
    """Evaluation preprocessing: decode, resize to `size` (0: keep), model range."""
    spec = "|".join(["decode"] + ([f"resize({size})"] if size else []) + [_model_range(normalize)])
    _check_early(spec)

    def fn(image, seed):
        return {"image": _parse(spec)({"image": image}, seed)["image"]}

    return fn


@AUGMENTATIONS.register("crop_flip")
def crop_flip(padding: int = 4, flip: bool = True, normalize: bool = False):
    """CIFAR's supervised augmentation (He et al. 2016): pad 4 px (reflected), crop back, flip."""

    def spec_for(height, width):
        return "|".join(["decode", f"random_crop(({height}, {width}), padding={padding})"]
                        + (["flip_lr"] if flip else []) + [_model_range(normalize)])

    _check_early(spec_for(8, 8))

    def fn(image, seed):
        height, width = image.shape[0], image.shape[1]
        if height is None or width is None:
            raise ConfigError("augmentation 'crop_flip' needs images of a static size (the sources give them).")
        return {"image": _parse(spec_for(height, width))({"image": image}, seed)["image"]}

    return fn


@AUGMENTATIONS.register("pp")
def pp_string(spec: str):
    """Any single-view pp string, e.g. 'decode|randaugment(2, 9)|value_range(-1, 1)'. The string
    sees {'image': uint8 image} and must produce float tensors; the pipeline adds 'label' after."""
    preprocess = pp.parse(spec)

    def fn(image, seed):
        return preprocess({"image": image}, seed)

    return fn


@AUGMENTATIONS.register("simclr")
def simclr_views(num_views: int = 2, crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
                 jitter_strength: float = 0.5, jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                 blur_prob: float = 0.0, size: int = 0, normalize: bool = False):
    """SimCLR's views (Chen et al. 2020, App. A): random resized crop, flip, colour jitter of
    strength s (brightness, contrast, saturation 0.8s, hue 0.2s) with probability 0.8, grayscale
    0.2, blur. Defaults are the CIFAR ones (s = 0.5, no blur); ImageNet uses jitter_strength=1.0
    and blur_prob=0.5."""
    if num_views < 1:
        raise ConfigError(f"augmentation 'simclr': num_views must be >= 1, got {num_views}.")
    s = jitter_strength
    spec_for = lambda side: view_spec(side, crop_scale, flip, (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), jitter_prob,
                                      grayscale_prob, blur_prob, 0.0, normalize)
    _check_early(spec_for(size or 8))

    def fn(image, seed):
        return {"views": _views(spec_for(_input_side(image, size, "simclr")), num_views, image, seed)}

    return fn


@AUGMENTATIONS.register("byol")
def byol_views(crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
               jitter: tuple[float, float, float, float] = BYOL_JITTER, jitter_prob: float = 0.8,
               grayscale_prob: float = 0.2, blur_probs: tuple[float, float] = (1.0, 0.1),
               solarize_probs: tuple[float, float] = (0.0, 0.2), size: int = 0, normalize: bool = False):
    """BYOL's two asymmetric views (Grill et al. 2020, Table 6): crop, flip, jitter (brightness,
    contrast, saturation, hue = 0.4, 0.4, 0.2, 0.1) with probability 0.8, grayscale 0.2; blur with
    probability 1.0 / 0.1 and solarize with probability 0.0 / 0.2 for view 1 / view 2 (CIFAR
    recipes turn blur off: blur_probs=(0, 0), as solo-learn)."""
    for name, pair in (("blur_probs", blur_probs), ("solarize_probs", solarize_probs)):
        if len(pair) != 2:
            raise ConfigError(f"augmentation 'byol': {name} must hold one probability per view (two), got {pair}.")

    def specs(side):
        return [view_spec(side, crop_scale, flip, jitter, jitter_prob, grayscale_prob, blur, solar, normalize)
                for blur, solar in zip(blur_probs, solarize_probs)]

    _check_early(*specs(size or 8))

    def fn(image, seed):
        view_specs = specs(_input_side(image, size, "byol"))
        views = [_views(spec, 1, image, seed, first_index=i) for i, spec in enumerate(view_specs)]
        return {"views": tf.concat(views, 0)}

    return fn


@AUGMENTATIONS.register("dino")
def dino_views(global_size: int = 224, global_scale: tuple[float, float] = (0.4, 1.0), num_local: int = 8,
               local_size: int = 96, local_scale: tuple[float, float] = (0.05, 0.4), flip: bool = True,
               normalize: bool = False):
    """DINO's multi-crop (Caron et al. 2021; the defaults of its main_dino.py): two global crops
    (scale (0.4, 1); some runs use (0.32, 1) or (0.14, 1)) and `num_local` small local crops,
    all with flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8 and grayscale 0.2. Global 1: blur p=1.0;
    global 2: blur p=0.1 and solarize p=0.2; locals: blur p=0.5. Globals and locals come back as
    separate tensors so that each batches by shape."""
    if num_local < 0:
        raise ConfigError(f"augmentation 'dino': num_local must be >= 0, got {num_local}.")
    global_specs = [view_spec(global_size, global_scale, flip, BYOL_JITTER, 0.8, 0.2, blur, solar, normalize)
                    for blur, solar in ((1.0, 0.0), (0.1, 0.2))]
    local_spec = view_spec(local_size, local_scale, flip, BYOL_JITTER, 0.8, 0.2, 0.5, 0.0, normalize)
    _check_early(*global_specs, local_spec)

    def fn(image, seed):
        global_views = tf.concat([_views(spec, 1, image, seed, first_index=i)
                                  for i, spec in enumerate(global_specs)], 0)
        if num_local:
            local_views = _views(local_spec, num_local, image, seed, first_index=len(global_specs))
        else:
            local_views = tf.zeros([0, local_size, local_size, 3], tf.float32)
        return {"global_views": global_views, "local_views": local_views}

    return fn


@AUGMENTATIONS.register("mae")
def mae_view(size: int = 0, crop_scale: tuple[float, float] = (0.2, 1.0), flip: bool = True,
             normalize: bool = False):
    """MAE's pretraining augmentation (He et al. 2022): random resized crop of scale (0.2, 1)
    (bicubic) and flip; no colour change, the masking is the augmentation."""

    def spec_for(side):
        return "|".join(["decode", f"random_resized_crop({side}, scale={_pair(crop_scale)})"]
                        + (["flip_lr"] if flip else []) + [_model_range(normalize)])

    _check_early(spec_for(size or 8))

    def fn(image, seed):
        return {"image": _parse(spec_for(_input_side(image, size, "mae")))({"image": image}, seed)["image"]}

    return fn
