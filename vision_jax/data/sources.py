"""Sources: random-access examples that the pipeline reads by index.

A `Source` knows how many examples a split has and how to load example `i` inside tf.data as
{'image': uint8 [size, size, 3], 'label': int32}. Random access is what makes the input order a
pure function of (seed, step), so a resumed run continues with exactly the same batches.

Registered sources: `digits` (scikit-learn's 1,797 8x8 digits, embedded: no download),
`image_folder` (`root/<split>/<class>/*.jpg`, root a directory or a .zip), `arrays` (an .npz of
uint8 images and labels; `arrays_source` takes numpy arrays directly), and `tfds` (any prepared
tfds dataset by name).
`image_folder` and `tfds` read and decode each example when the pipeline asks for it, so host
memory holds an index (file names and labels) but no images, whatever the dataset's size;
`digits`, `arrays` and `tfds(in_memory=True)` hold the decoded images in memory.
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
from vision_jax.registry import Registry, closest, options_of

SOURCES = Registry("data source")


@dataclasses.dataclass(frozen=True)
class Source:
    num_examples: int
    num_classes: int
    load: Callable[[tf.Tensor], dict]  # int64 index -> {'image', 'label'}, traceable by tf.data
    description: str
    labels: np.ndarray | None = None  # every example's class id, where known without decoding images


def in_memory_source(images: np.ndarray, labels: np.ndarray, num_classes: int, description: str) -> Source:
    images_t, labels_t = tf.constant(images, tf.uint8), tf.constant(labels, tf.int32)

    def load(index):
        return {"image": tf.gather(images_t, index), "label": tf.gather(labels_t, index)}

    return Source(len(images), num_classes, load, description, labels)


def _seeded_slice(split: str, num_examples: int, split_seed: int) -> np.ndarray:
    _, begin, end = slice_bounds(split, num_examples)
    return np.random.default_rng(split_seed).permutation(num_examples)[begin:end]


def _sized(image: tf.Tensor, size: int) -> tf.Tensor:
    """The image resized to size x size, or as it is with size 0."""
    return _resize(image, size) if size else image


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


def default_listing_cache() -> str:
    """Where image_folder caches its listings unless told otherwise: one small file per folder and split."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "vision_jax")


@SOURCES.register("image_folder")
def image_folder(root: str, split: str, image_size: int, split_seed: int = 0, max_bad_fraction: float = 0.001,
                 validate: bool = True, listing_cache: str | None = None) -> Source:
    """Images in `root/<split>/<class>/<file>`, where root is a directory or a .zip archive.

    Classes are the sorted class-folder names over all splits. The listing is cached in
    `listing_cache` (None: $XDG_CACHE_HOME/vision_jax, by default ~/.cache/vision_jax, read when
    the source is built; '' = no cache; see data/image_files.py for when it is re-listed).
    `validate=True` decodes every file once before training and skips the unreadable ones with
    one warning (the result is cached with the listing); `validate=False` (for a million files)
    reads nothing up front and replaces a file that fails to decode when met by the next readable
    one, the same on every run and resume. Either way, more than `max_bad_fraction` unreadable is
    an error. `image_size=0` keeps each image at its own size (for recipes that crop from the
    full image).
    """
    name, _, _ = parse_split(split)
    images = image_files.list_images(root, name, validate=validate, max_bad_fraction=max_bad_fraction,
                                     cache_dir=default_listing_cache() if listing_cache is None else listing_cache)
    images = images.select(_seeded_slice(split, len(images.keys), split_seed))
    labels_t = tf.constant(images.labels)
    decode = image_files.decoder(images, replace_unreadable=not validate, max_bad_fraction=max_bad_fraction)

    @tf.autograph.experimental.do_not_convert  # plain graph code; autograph only adds risk
    def load(i):
        used, image = decode(i)  # `used` differs from i where an unreadable file was replaced
        return {"image": _sized(image, image_size), "label": tf.gather(labels_t, used)}

    return Source(len(images.keys), len(images.classes), load, f"image_folder {root} {split}", images.labels)


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
def tfds_source(dataset: str, split: str, image_size: int, data_dir: str | None = None, image_key: str = "image",
                label_key: str = "label", in_memory: bool = False) -> Source:
    """A prepared tensorflow-datasets dataset, named by `dataset` (e.g. 'imagenet2012'); the split
    string goes to tfds, so tfds slicing ('train[:90%]') works.

    Examples are read by random access from the dataset's ArrayRecord files (`tfds.data_source`;
    prepare with file_format='array_record') and decoded one at a time as the pipeline asks for
    them, so host memory does not grow with the dataset. A dataset stored only as TFRecord gets
    an error saying how to convert it. `in_memory=True` decodes the whole split into host memory
    once instead, from either format (for CIFAR-sized data); images are stored at `image_size`,
    or at their own size when the dataset declares one.
    """
    import tensorflow_datasets as tfds

    builder = _prepared_builder(dataset, data_dir)
    features = builder.info.features
    for key, kind, option in ((image_key, tfds.features.Image, "image_key"),
                              (label_key, tfds.features.ClassLabel, "label_key")):
        if not isinstance(features[key] if key in features.keys() else None, kind):
            raise ConfigError(f"tfds {dataset} has no {kind.__name__} feature {key!r} (its features: "
                              f"{', '.join(features.keys())}); set config.data.source.{option}.")
    num_classes = features[label_key].num_classes
    description = f"tfds {dataset}[{split}]"

    @tf.autograph.experimental.do_not_convert
    def example(encoded_image, label):
        return {"image": _sized(decode_to_uint8(encoded_image), image_size), "label": tf.cast(label, tf.int32)}

    if tfds.core.file_adapters.FileFormat.ARRAY_RECORD in builder.info.available_file_formats():
        records = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        spec = {key: features.tf_example_spec[key] for key in (image_key, label_key)}

        @tf.autograph.experimental.do_not_convert
        def load(index):
            record = tf.numpy_function(lambda i: records[int(i)], [index], tf.string, stateful=False)
            record.set_shape(())
            parsed = tf.io.parse_single_example(record, spec)
            return example(parsed[image_key], parsed[label_key])

        if not in_memory:
            return Source(len(records), num_classes, load, description)
        examples = tf.data.Dataset.range(len(records)).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    elif in_memory:
        examples = builder.as_dataset(split=split, shuffle_files=False,
                                      decoders={image_key: tfds.decode.SkipDecoding()}).map(
            lambda ex: example(ex[image_key], ex[label_key]), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        raise MissingDataError(
            f"tfds dataset {dataset!r} in {builder.data_dir} is stored as {builder.info.file_format.value} only, "
            f"which cannot be read by index (and the input order must be a function of (seed, step) to resume "
            f"exactly). Convert it once; the ArrayRecord files go beside the others: python -m vision_jax.data."
            f"convert_tfds --dataset={dataset}{f' --data_dir={data_dir}' if data_dir else ''}  (or, if it fits in "
            f"host memory, load it there: --config.data.source.in_memory=True)")
    if not image_size and None in features[image_key].shape:
        raise ConfigError(f"tfds {dataset}'s images vary in size ({features[image_key].shape}), so in_memory=True "
                          f"needs config.data.image_size to store them at one size.")
    return _decoded_in_memory(examples, builder.info.splits[split].num_examples, num_classes,
                              f"{description} in memory")


def _decoded_in_memory(examples: tf.data.Dataset, count: int, num_classes: int, description: str) -> Source:
    """An in-memory Source holding the `count` examples of `examples` ({'image': uint8, 'label'})."""
    images, labels, filled = None, np.zeros([count], np.int32), 0
    for batch in examples.batch(1024).as_numpy_iterator():
        if images is None:  # filled in place: no second copy of the pixels while loading
            images = np.empty((count, *batch["image"].shape[1:]), np.uint8)
        images[filled:filled + len(batch["label"])] = batch["image"]
        labels[filled:filled + len(batch["label"])] = batch["label"]
        filled += len(batch["label"])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{description} has labels outside [0, {num_classes}).")
    return in_memory_source(images, labels, num_classes, description)


def _prepared_builder(dataset: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders()
        raise ConfigError(f"tfds has no dataset {dataset!r}.{closest(dataset, known)}") from None
    if not builder.is_prepared():
        root = os.fspath(builder.data_dir_root)
        # `tfds build` needs apache-beam, which tensorflow-datasets does not install: the
        # Python call below works in this package's environment.
        raise MissingDataError(
            f"tfds dataset {dataset!r} is not prepared in data_dir={root!r}. Prepare it once as ArrayRecord "
            f"files, which the pipeline reads by index: python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{dataset}', data_dir='{root}').download_and_prepare(file_format='array_record')\"")
    return builder


def class_balanced_subset(source: Source, fraction: float, seed: int) -> Source:
    """`fraction` of `source`'s examples with the same number from every class, each class's drawn
    by a permutation seeded with `seed` (SimCLR's 1% and 10% semi-supervised subsets); the
    examples keep their order."""
    labels = source.labels if source.labels is not None else _read_labels(source)
    per_class = round(fraction * len(labels) / source.num_classes)
    counts = np.bincount(labels, minlength=source.num_classes)
    if per_class < 1 or counts.min() < per_class:
        raise ConfigError(f"config.data.label_fraction={fraction} asks for {per_class} examples of each of "
                          f"{source.num_classes} classes from {source.description}, whose smallest class has "
                          f"{counts.min()}; choose a fraction between {source.num_classes / len(labels):.4g} and "
                          f"{counts.min() * source.num_classes / len(labels):.4g}.")
    rng = np.random.default_rng(seed)
    index = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                    for c in range(source.num_classes)]))
    index_t = tf.constant(index, tf.int64)
    return Source(len(index), source.num_classes, lambda i: source.load(tf.gather(index_t, i)),
                  f"{source.description}, {per_class} labeled examples per class (label seed {seed})", labels[index])


def _read_labels(source: Source) -> np.ndarray:
    """Every label of a source that does not list them (reads, and so decodes, every example once)."""
    examples = tf.data.Dataset.range(source.num_examples).map(lambda i: source.load(i)["label"],
                                                              num_parallel_calls=tf.data.AUTOTUNE)
    return np.fromiter(examples.as_numpy_iterator(), np.int64, count=source.num_examples)


def build_source(source_config, split: str, image_size: int) -> Source:
    """Builds the configured source for one split (config: {'name': ..., **options})."""
    return SOURCES.build(source_config["name"], options_of(source_config), split=split, image_size=image_size)
