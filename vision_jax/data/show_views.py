"""Draws a recipe's augmented views as a PNG grid, to see what the model will train on.

    python -m vision_jax.data.show_views --config=configs/simclr_digits.py --out=views.png --num_images=8
    python -m vision_jax.data.show_views --config=configs/simclr_digits.py --out=v.png \
        --config.data.augment.jitter_strength=1.0

One row per training image: the original, then each view the recipe makes (DINO: the global
views, then the local ones), every cell scaled to the same height. Views come from the seed the
training pipeline gives example slot i at step 0: (config.seed, i).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from vision_jax import console

console.import_tensorflow_quietly()  # before anything imports it loudly

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from vision_jax.config import load_config  # noqa: E402
from vision_jax.data.ops import model_range_to_uint8  # noqa: E402
from vision_jax.data.sources import build_source  # noqa: E402
from vision_jax.data.views import AUGMENTATIONS  # noqa: E402
from vision_jax.errors import UserError  # noqa: E402
from vision_jax.registry import options_of  # noqa: E402

OVERRIDE_PREFIX = "--config."
GAP = 2  # pixels between cells
BACKGROUND = 255


def view_images(output: dict, normalized: bool) -> list[np.ndarray]:
    """Every image an augmentation returned, in its key order: [H, W, 3] once, [N, H, W, 3] N times."""
    images = []
    for value in output.values():
        value = np.asarray(value)
        if value.dtype.kind != "f" or value.shape[-1:] != (3,):
            continue
        if value.ndim == 3:
            images.append(model_range_to_uint8(value, normalized))
        elif value.ndim == 4:
            images.extend(model_range_to_uint8(value, normalized))
    return images


def grid(rows: list[list[np.ndarray]], cell_height: int) -> np.ndarray:
    """Rows of images, each scaled (nearest neighbour) to `cell_height`, on a white background."""
    scaled = [[np.asarray(Image.fromarray(image).resize(
        (max(1, round(cell_height * image.shape[1] / image.shape[0])), cell_height), Image.NEAREST))
        for image in row] for row in rows]
    width = GAP + max(sum(cell.shape[1] + GAP for cell in row) for row in scaled)
    height = GAP + len(scaled) * (cell_height + GAP)
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    for r, row in enumerate(scaled):
        top, left = GAP + r * (cell_height + GAP), GAP
        for cell in row:
            canvas[top:top + cell_height, left:left + cell.shape[1]] = cell
            left += cell.shape[1] + GAP
    return canvas


def batch_views(batch: dict, normalized: bool, num_images: int = 8) -> np.ndarray | None:
    """The grid of a training batch's first `num_images` examples, one row each: their views (SSL
    methods) or augmented image (supervised, MAE, DCGAN), as the model receives them; None for a
    batch without RGB images in the model's range."""
    arrays = {key: np.asarray(value) for key, value in batch.items()}
    rows = [view_images({key: value[i] for key, value in arrays.items()}, normalized)
            for i in range(min(num_images, len(next(iter(arrays.values())))))]
    heights = [image.shape[0] for row in rows for image in row]
    return grid(rows, max(96, *heights)) if heights else None


def draw(config, num_images: int, cell_height: int = 0) -> np.ndarray:
    """The grid for the first `num_images` training examples of `config` (cell_height 0: at least
    96 px, or the largest view's height)."""
    data = config.data
    source = build_source(data.source, data.train_split, data.image_size)
    options = options_of(data.augment)
    augment = AUGMENTATIONS.build(data.augment.name, options)
    normalized = bool(options.get("normalize", False))
    rows = []
    for i in range(min(num_images, source.num_examples)):
        original = source.load(tf.constant(i, tf.int64))["image"]
        output = augment(original, tf.constant([config.seed, i], tf.int64))
        rows.append([original.numpy()] + view_images({k: v.numpy() for k, v in output.items()}, normalized))
    cell_height = cell_height or max(96, *(image.shape[0] for row in rows for image in row))
    return grid(rows, cell_height)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vision_jax.data.show_views",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="Recipe: path/to/recipe.py[:key=value,...].")
    parser.add_argument("--out", required=True, help="PNG file to write.")
    parser.add_argument("--num_images", type=int, default=8, help="Rows: how many training images.")
    parser.add_argument("--cell_height", type=int, default=0, help="Pixel height of each cell (0: automatic).")
    args, rest = parser.parse_known_args(argv)
    overrides = [arg[len(OVERRIDE_PREFIX):] for arg in rest if arg.startswith(OVERRIDE_PREFIX)]
    unknown = [arg for arg in rest if not arg.startswith(OVERRIDE_PREFIX)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} "
                     f"(config fields are set with --config.<field>=<value>)")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):  # checked before the (slow) drawing
        parser.error(f"--out={args.out}: folder {folder} does not exist; create it (mkdir -p {shlex.quote(folder)}) or "
                     f"choose another --out")
    tf.config.set_visible_devices([], "GPU")  # pictures need no accelerator
    try:
        config = load_config(args.config, overrides)
        picture = draw(config, args.num_images, args.cell_height)
    except UserError as error:
        sys.exit(f"error: {error}")
    Image.fromarray(picture).save(args.out, format="PNG")
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]} px)")


if __name__ == "__main__":
    main()
