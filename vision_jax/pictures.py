"""Pictures a method draws (`Method.pictures`: sample grids): grids of images, PNG files and
TensorBoard images."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

GRID_PADDING = 2  # pixels between images (and around them), as torchvision's make_grid


def to_uint8(images: jnp.ndarray) -> jnp.ndarray:
    """Images in [-1, 1] as uint8 in [0, 255], rounded as torchvision's save_image."""
    return jnp.clip(jnp.floor((images.astype(jnp.float32) + 1.0) * 127.5 + 0.5), 0, 255).astype(jnp.uint8)


def image_grid(images: jnp.ndarray, columns: int) -> jnp.ndarray:
    """One uint8 HWC picture of images [N, H, W, C] in [-1, 1]: rows of `columns` images on black,
    GRID_PADDING pixels apart (the last row is filled with black if N is not a multiple)."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    tiles = jnp.zeros((rows * columns, h + GRID_PADDING, w + GRID_PADDING, c), jnp.uint8)
    tiles = tiles.at[:n, GRID_PADDING:, GRID_PADDING:].set(to_uint8(images))
    grid = tiles.reshape(rows, columns, h + GRID_PADDING, w + GRID_PADDING, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * (h + GRID_PADDING), columns * (w + GRID_PADDING), c)
    return jnp.pad(grid, ((0, GRID_PADDING), (0, GRID_PADDING), (0, 0)))  # the bottom and right borders


def write_png(path: str, picture: np.ndarray) -> None:
    """An HWC uint8 picture (C = 1 or 3) as a PNG file, written whole or not at all."""
    picture = np.asarray(picture)
    image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".tmp"
    image.save(partial, format="PNG")
    os.replace(partial, path)
