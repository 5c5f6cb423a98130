"""Sources: random-access examples that the pipeline reads by index.

A `Source` knows how many examples a split has and how to load example `i` inside tf.data as
{'image': uint8 [size, size, 3], 'label': int32}. Random access is what makes the input order a
pure function of (seed, step), so a resumed run continues with exactly the same batches.

Registered sources: `digits` (scikit-learn's 1,797 8x8 digits, embedded: no download),
`image_folder` (`root/<split>/<class>/*.jpg`), and `tfds` (any prepared tfds dataset by name).
Splits without a fixed order (digits, image folders) are listed in sorted order, then permuted
with `split_seed` before slicing, so `train[:45000]` / `train[45000:]` is a fixed, seeded holdout.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import warnings
from typing import Callable

import numpy as np
import tensorflow as tf

from vision_jax.data.splits import parse_split, slice_bounds
from vision_jax.errors import ConfigError, DataError, MissingDataError
from vision_jax.registry import Registry, closest

SOURCES = Registry("data source")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class Source:
    num_examples: int
    num_classes: int
    load: Callable[[tf.Tensor], dict]  # int64 index -> {'image', 'label'}, traceable by tf.data
    description: str


def in_memory_source(images: np.ndarray, labels: np.ndarray, num_classes: int, description: str) -> Source:
    images_t, labels_t = tf.constant(images, tf.uint8), tf.constant(labels, tf.int32)

    def load(index):
        return {"image": tf.gather(images_t, index), "label": tf.gather(labels_t, index)}

    return Source(len(images), num_classes, load, description)


def _seeded_slice(split: str, num_examples: int, split_seed: int) -> np.ndarray:
    _, begin, end = slice_bounds(split, num_examples)
    return np.random.default_rng(split_seed).permutation(num_examples)[begin:end]


def _resize(images: tf.Tensor, size: int) -> tf.Tensor:
    resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


@SOURCES.register("digits")
def digits(split: str, image_size: int, split_seed: int = 0) -> Source:
    """scikit-learn's handwritten digits: 8x8 grey, upsampled to `image_size` RGB."""
    from sklearn.datasets import load_digits

    name, _, _ = parse_split(split)
    if name != "train":
        raise ConfigError(f"digits has one split, 'train' (slice it, e.g. 'train[:80%]'); got {split!r}.")
    data = load_digits()
    grey = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    index = _seeded_slice(split, len(rgb), split_seed)
    images = _resize(rgb[index], image_size).numpy()
    return in_memory_source(images, data.target[index].astype(np.int32), 10, f"digits[{split}]")


@SOURCES.register("image_folder")
def image_folder(root: str, split: str, image_size: int, split_seed: int = 0,
                 max_bad_fraction: float = 0.001) -> Source:
    """Images in `root/<split>/<class>/<file>`; classes are the sorted sub-folder names.

    Every file is decoded once up front: unreadable ones are skipped with one warning that names
    the first bad path and the count; more than `max_bad_fraction` bad files is an error.
    """
    name, _, _ = parse_split(split)
    split_dir = os.path.join(os.path.expanduser(root), name)
    if not os.path.isdir(split_dir):
        raise MissingDataError(
            f"Image folder split {split_dir!r} does not exist: expected images in "
            f"{root}/{name}/<class>/<image>.jpg.")
    paths, labels, num_classes = _list_readable_images(split_dir, max_bad_fraction)
    index = _seeded_slice(split, len(paths), split_seed)
    paths_t = tf.constant(np.asarray(paths)[index])
    labels_t = tf.constant(np.asarray(labels, np.int32)[index])

    def load(i):
        image = _decode(tf.io.read_file(tf.gather(paths_t, i)))
        return {"image": _resize(image, image_size), "label": tf.gather(labels_t, i)}

    return Source(len(index), num_classes, load, f"image_folder {root} {split}")


# Cached: the train split and the evaluation splits of one folder share a single decoding pass.
@functools.lru_cache(maxsize=4)
def _list_readable_images(split_dir: str, max_bad_fraction: float) -> tuple[list[str], list[int], int]:
    """(paths, labels, number of classes) of the decodable images under `split_dir`/<class>/."""
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(split_dir, cls))):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(split_dir, cls, file))
                labels.append(label)
    if not paths:
        raise MissingDataError(
            f"Image folder {split_dir!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} "
            f"files in class sub-folders).")

    readable = _readable_mask(paths)
    bad = [p for p, ok in zip(paths, readable) if not ok]
    if bad:
        if len(bad) > max_bad_fraction * len(paths):
            raise DataError(
                f"{len(bad)} of {len(paths)} images in {split_dir!r} cannot be decoded (first: {bad[0]}), "
                f"more than max_bad_fraction={max_bad_fraction}. Fix or remove them, or raise "
                f"config.data.source.max_bad_fraction.")
        warnings.warn(f"Skipping {len(bad)} unreadable image(s) in {split_dir!r}; first: {bad[0]}")
    return ([p for p, ok in zip(paths, readable) if ok], [lab for lab, ok in zip(labels, readable) if ok],
            len(classes))


def _decode(data: tf.Tensor) -> tf.Tensor:
    """Decodes to uint8 RGB. JPEGs use libjpeg's accurate integer IDCT (what PIL and most decoders
    give); tf.io.decode_image's default is the fast IDCT, off by up to a few levels per pixel."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image.set_shape((None, None, 3))
    return image


def _readable_mask(paths: list[str]) -> list[bool]:
    from PIL import Image

    def readable(path: str) -> bool:
        try:
            with Image.open(path) as image:
                image.load()  # a full decode: catches truncated files, not just bad headers
            return True
        except Exception:  # noqa: BLE001 - any failure to decode means "skip this file"
            return False

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(readable, paths, chunksize=256))


@SOURCES.register("tfds")
def tfds_source(name: str, split: str, image_size: int, data_dir: str | None = None,
                image_key: str = "image", label_key: str = "label") -> Source:
    """A prepared tensorflow-datasets dataset, loaded into memory at `image_size`.

    In-memory loading suits datasets up to CIFAR/ImageNet-64 scale; the split string is passed to
    tfds, so tfds slicing ('train[:90%]') works.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders()
        raise ConfigError(f"tfds has no dataset {name!r}.{closest(name, known)}") from None
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as error:  # tfds's way of saying the data is not in data_dir
        raise MissingDataError(
            f"tfds dataset {name!r} is not prepared in data_dir={builder.data_dir_root!r}. Prepare it "
            f"once with: tfds build {name} --data_dir={builder.data_dir_root}  ({error})") from None
    num_classes = builder.info.features[label_key].num_classes

    def to_example(example):
        image = example[image_key]
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return _resize(image, image_size), tf.cast(example[label_key], tf.int32)

    images, labels = [], []
    for image, label in dataset.map(to_example).batch(1024).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    images, labels = np.concatenate(images), np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"tfds {name}[{split}] has labels outside [0, {num_classes}).")
    return in_memory_source(images, labels, num_classes, f"tfds {name}[{split}]")


def build_source(source_config, split: str, image_size: int) -> Source:
    """Builds the configured source for one split (config: {'name': ..., **options})."""
    options = {k: v for k, v in source_config.items() if k != "name"}
    return SOURCES.build(source_config["name"], options, split=split, image_size=image_size)
