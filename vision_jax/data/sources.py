"""Sources: random-access examples that the pipeline reads by index.

A `Source` knows how many examples a split has and how to load example `i` inside tf.data as
{'image': uint8 [size, size, 3], 'label': int32}. Random access is what makes the input order a
pure function of (seed, step), so a resumed run continues with exactly the same batches.

Registered sources: `digits` (scikit-learn's 1,797 8x8 digits, embedded: no download),
`image_folder` (`root/<split>/<class>/*.jpg`, root a directory or a .zip), `arrays` (an .npz of
uint8 images and labels; `arrays_source` takes numpy arrays directly), and `tfds` (any prepared
tfds dataset by name).
Splits without a fixed order (digits, image folders) are listed in sorted order, then permuted
with `split_seed` before slicing, so `train[:45000]` / `train[45000:]` is a fixed, seeded holdout.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from vision_jax.data import image_files
from vision_jax.data.ops import decode_to_uint8
from vision_jax.data.splits import parse_split, slice_bounds
from vision_jax.errors import ConfigError, DataError, MissingDataError
from vision_jax.registry import Registry, closest

SOURCES = Registry("data source")


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
    """Images in `root/<split>/<class>/<file>`, where root is a directory or a .zip archive.

    Classes are the sorted class-folder names over all splits. Unreadable files are skipped
    with one warning naming the first and the count; more than `max_bad_fraction` is an error.
    `image_size=0` keeps each image at its own size (for recipes that crop from the full image).
    """
    name, _, _ = parse_split(split)
    images = image_files.list_images(root, name, max_bad_fraction)
    index = _seeded_slice(split, len(images.keys), split_seed)
    selected = dataclasses.replace(images, keys=tuple(np.asarray(images.keys)[index]))
    labels_t = tf.constant(images.labels[index])
    read = image_files.byte_reader(selected)

    @tf.autograph.experimental.do_not_convert  # plain graph code; autograph only adds risk
    def load(i):
        image = decode_to_uint8(read(i))
        return {"image": _resize(image, image_size) if image_size else image, "label": tf.gather(labels_t, i)}

    return Source(len(index), len(images.classes), load, f"image_folder {root} {split}")


@SOURCES.register("arrays")
def arrays(path: str, split: str, image_size: int, split_seed: int = 0) -> Source:
    """In-memory arrays from an .npz file with 'images' (uint8 [N, H, W, 3] or [N, H, W]) and
    'labels' (int [N]); for data made in a notebook (`np.savez(path, images=..., labels=...)`).
    The split names no folder here: 'train[:90%]' slices the seeded permutation of all N."""
    if not os.path.isfile(path):
        raise MissingDataError(f"Array file {path!r} does not exist; write it with "
                               f"np.savez(path, images=uint8 [N,H,W,3], labels=int [N]).")
    with np.load(path) as data:
        missing = {"images", "labels"} - set(data.files)
        if missing:
            raise DataError(f"{path!r} has no {sorted(missing)} array(s) (it has {data.files}); save "
                            f"with np.savez(path, images=..., labels=...).")
        images, labels = data["images"], data["labels"]
    return arrays_source(images, labels, split, image_size, split_seed, description=f"arrays {path} {split}")


def arrays_source(images: np.ndarray, labels: np.ndarray, split: str = "train", image_size: int = 0,
                  split_seed: int = 0, num_classes: int | None = None, description: str = "arrays") -> Source:
    """A Source over numpy arrays (the Python API behind the 'arrays' source)."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"images must be uint8 [N, H, W, 3] or [N, H, W]; got {images.dtype} {images.shape}.")
    if labels.ndim == 2 and len(labels) == len(images):
        raise DataError(f"labels have shape {labels.shape}: one-hot or per-class scores, but a source needs "
                        f"one integer class id per image; save labels.argmax(axis=1) instead.")
    if labels.ndim != 1:
        raise DataError(f"labels must be [N] class ids; got shape {labels.shape}.")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integer class ids; got dtype {labels.dtype}.")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels must lie in [0, {num_classes}); found {labels.min()}..{labels.max()}.")
    if images.ndim == 3 or images.shape[-1] == 1:
        images = np.repeat(images.reshape(images.shape[:3])[..., None], 3, axis=-1)
    index = _seeded_slice(split, len(images), split_seed)
    images = images[index]
    if image_size and images.shape[1:3] != (image_size, image_size):
        images = _resize(images, image_size).numpy()
    return in_memory_source(images, labels[index].astype(np.int32), num_classes, description)


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
