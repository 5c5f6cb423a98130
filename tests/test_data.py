"""Input pipeline: sources, split strings, training/eval batch order, augmentations."""
from __future__ import annotations

import collections
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vision_jax.data import pipeline, sources, splits, views
from vision_jax.data.sources import SOURCES

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_train_jpeg.zip"
NUM_DIGITS = 1797


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def load_all(source: sources.Source) -> dict[str, np.ndarray]:
    """Every example of `source`, in index order, through `source.load` inside tf.data."""
    dataset = tf.data.Dataset.range(source.num_examples).map(source.load).batch(source.num_examples)
    return next(dataset.as_numpy_iterator())


def image_hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def example_keys(data: dict[str, np.ndarray]) -> collections.Counter:
    return collections.Counter((image_hash(im), int(lab)) for im, lab in zip(data["image"], data["label"]))


def indexed_source(num_examples: int, size: int = 8) -> sources.Source:
    """A source whose image `i` carries `i` in pixel (0, 0): every example is distinct and
    identifiable after the 'none' augmentation."""
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, (num_examples, size, size, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(num_examples) % 256
    images[:, 0, 0, 1] = np.arange(num_examples) // 256
    labels = (np.arange(num_examples) % 10).astype(np.int32)
    return sources.in_memory_source(images, labels, 10, "indexed")


def indices_of(model_images: np.ndarray) -> np.ndarray:
    """Inverts the 'none' augmentation on pixel (0, 0) of `indexed_source` images."""
    pixels = np.round((model_images[..., 0, 0, :2].astype(np.float64) + 1.0) * 127.5).astype(np.int64)
    return pixels[..., 0] + 256 * pixels[..., 1]


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def batches_differ(a: dict, b: dict) -> bool:
    return any(a[k].tobytes() != b[k].tobytes() for k in a)


# ----------------------------------------------------------------------------------------------
# Digits source and split strings
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train():
    return sources.digits("train[:80%]", image_size=32)


def test_digits_holdout_is_a_partition_of_all_examples(digits_train):
    held_out = sources.digits("train[80%:]", image_size=32)
    everything = sources.digits("train", image_size=32)
    assert everything.num_examples == NUM_DIGITS
    assert digits_train.num_examples + held_out.num_examples == NUM_DIGITS
    assert digits_train.num_examples == NUM_DIGITS * 80 // 100

    train, test, full = load_all(digits_train), load_all(held_out), load_all(everything)
    # As multisets of (image, label): train + test is exactly the full set, so they are disjoint
    # and together cover every example (digits has a few duplicate images; multisets handle them).
    assert example_keys(train) + example_keys(test) == example_keys(full)
    # A different split seed gives a different holdout.
    other = load_all(sources.digits("train[80%:]", image_size=32, split_seed=1))
    assert example_keys(other) != example_keys(test)


@pytest.mark.parametrize("size", [16, 32])
def test_digits_images_are_uint8_rgb_at_image_size(size):
    source = sources.digits("train[:200]", image_size=size)
    data = load_all(source)
    assert source.num_classes == 10
    assert data["image"].dtype == np.uint8
    assert data["image"].shape == (200, size, size, 3)
    assert data["label"].dtype == np.int32
    assert data["label"].min() >= 0 and data["label"].max() < 10
    assert len(np.unique(data["label"])) == 10
    # Grey digits: three equal channels, using the whole [0, 255] range.
    np.testing.assert_array_equal(data["image"][..., 0], data["image"][..., 2])
    assert data["image"].max() > 200 and data["image"].min() < 50


def test_digits_rejects_other_split_names():
    with pytest.raises(ValueError, match="digits has one split, 'train'.*'test'"):
        sources.digits("test", image_size=8)


def test_slice_bounds_semantics():
    assert splits.slice_bounds("train", 100) == ("train", 0, 100)
    assert splits.slice_bounds("train[:10]", 100) == ("train", 0, 10)
    assert splits.slice_bounds("train[-10:]", 100) == ("train", 90, 100)
    assert splits.slice_bounds("train[10%:20%]", 1000) == ("train", 100, 200)
    assert splits.slice_bounds("val[ 5 : ]", 100) == ("val", 5, 100)


@pytest.mark.parametrize("split", ["train[:80", "train[a:b]", "train[1:2:3]", "train[%:]", "train[-:]",
                                   "train[:80%%]", "", "[:10]", "train(0:10)"])
def test_malformed_split_strings_error(split):
    with pytest.raises(ValueError, match="malformed"):
        splits.slice_bounds(split, 100)


@pytest.mark.parametrize("split", ["train[5:5]", "train[80%:20%]", "train[100%:]", "train[:0]", "train[200:]"])
def test_empty_slices_error(split):
    with pytest.raises(ValueError, match=r"selects no examples out of 100"):
        splits.slice_bounds(split, 100)


def test_digits_empty_slice_errors():
    with pytest.raises(ValueError, match=r"'train\[100%:\]' selects no examples out of 1797"):
        sources.digits("train[100%:]", image_size=8)


# ----------------------------------------------------------------------------------------------
# Training batches: a pure function of (seed, step)
# ----------------------------------------------------------------------------------------------

GLOBAL_BATCH = 256  # over 1437 digits: epoch 1 starts inside step 5
NUM_REFERENCE_STEPS = 12


@pytest.fixture(scope="module")
def crop_flip():
    return views.AUGMENTATIONS.build("crop_flip")


@pytest.fixture(scope="module")
def reference_batches(digits_train, crop_flip):
    iterator = pipeline.train_batches(digits_train, crop_flip, global_batch=GLOBAL_BATCH, seed=7, start_step=0)
    return take(iterator, NUM_REFERENCE_STEPS)


def test_train_batches_shapes(reference_batches):
    batch = reference_batches[0]
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (GLOBAL_BATCH, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (GLOBAL_BATCH,) and batch["label"].dtype == np.int32


def test_train_batches_are_reproducible(digits_train, crop_flip, reference_batches):
    again = take(pipeline.train_batches(digits_train, crop_flip, global_batch=GLOBAL_BATCH, seed=7,
                                        start_step=0), 6)
    for a, b in zip(reference_batches, again):
        assert_batches_equal(a, b)


def test_start_step_resumes_exactly(digits_train, crop_flip, reference_batches):
    assert (5 * GLOBAL_BATCH) < digits_train.num_examples < (6 * GLOBAL_BATCH)  # step 5 crosses epochs
    rng = np.random.default_rng(0)
    steps = [5, int(rng.integers(1, NUM_REFERENCE_STEPS)), NUM_REFERENCE_STEPS - 1]
    for k in steps:
        resumed = pipeline.train_batches(digits_train, crop_flip, global_batch=GLOBAL_BATCH, seed=7, start_step=k)
        assert_batches_equal(next(resumed), reference_batches[k])
    # And continues from there.
    resumed = pipeline.train_batches(digits_train, crop_flip, global_batch=GLOBAL_BATCH, seed=7, start_step=4)
    for k, batch in zip(range(4, 7), resumed):
        assert_batches_equal(batch, reference_batches[k])


def test_processes_split_the_global_batch(digits_train, crop_flip, reference_batches):
    per_process = [
        take(pipeline.train_batches(digits_train, crop_flip, global_batch=GLOBAL_BATCH, seed=7, start_step=4,
                                    process_index=p, process_count=2), 3)
        for p in range(2)
    ]
    for i, k in enumerate(range(4, 7)):  # step 5 crosses the epoch boundary
        first, second = per_process[0][i], per_process[1][i]
        assert first["image"].shape[0] == GLOBAL_BATCH // 2
        combined = {key: np.concatenate([first[key], second[key]]) for key in first}
        assert_batches_equal(combined, reference_batches[k])


def test_global_batch_must_divide_over_processes(digits_train, crop_flip):
    with pytest.raises(ValueError, match="Global batch 255 is not divisible by 2 processes"):
        pipeline.train_batches(digits_train, crop_flip, global_batch=255, seed=0, start_step=0,
                               process_index=0, process_count=2)


def test_different_seeds_give_different_batches(digits_train, crop_flip, reference_batches):
    other = take(pipeline.train_batches(digits_train, crop_flip, global_batch=GLOBAL_BATCH, seed=8,
                                        start_step=0), 2)
    for a, b in zip(reference_batches, other):
        assert batches_differ(a, b)
        assert a["label"].tobytes() != b["label"].tobytes()  # a different order, not only new crops


def test_each_epoch_is_a_fresh_permutation():
    source = indexed_source(1437)
    none = views.AUGMENTATIONS.build("none")
    batches = take(pipeline.train_batches(source, none, global_batch=256, seed=3, start_step=0), 12)
    order = np.concatenate([indices_of(b["image"]) for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, order % 10)  # the label travels with its image
    n = source.num_examples
    # Within one epoch nothing repeats: the first N // B full batches are all distinct examples ...
    first_steps = order[: (n // 256) * 256]
    assert len(np.unique(first_steps)) == len(first_steps)
    # ... and each epoch is exactly a permutation of all examples, in a new order each time.
    epoch0, epoch1 = order[:n], order[n: 2 * n]
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(n))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(n))
    assert not np.array_equal(epoch0, epoch1)
    # The order is shuffled, not the identity.
    assert not np.array_equal(epoch0, np.arange(n))


# ----------------------------------------------------------------------------------------------
# Evaluation batches: every example exactly once, padding masked
# ----------------------------------------------------------------------------------------------


def _masked_indices(batches) -> tuple[np.ndarray, int]:
    stacked = pipeline.stack_all(batches)
    mask = stacked["mask"].astype(bool)
    assert set(np.unique(stacked["mask"])) <= {0.0, 1.0}
    return indices_of(stacked["image"])[mask], int((~mask).sum())


@pytest.mark.parametrize("global_batch", [100, 64, 360, 1000])
def test_eval_batches_cover_each_example_once(global_batch):
    source = indexed_source(360)
    none = views.AUGMENTATIONS.build("none")
    batches = list(pipeline.eval_batches(source, none, global_batch=global_batch))
    assert len(batches) == pipeline.num_eval_batches(source, global_batch) == -(-360 // global_batch)
    assert all(b["image"].shape[0] == global_batch for b in batches)
    seen, padding = _masked_indices(batches)
    np.testing.assert_array_equal(seen, np.arange(360))  # in order, each once
    assert padding == len(batches) * global_batch - 360


def test_eval_batches_over_two_processes_cover_each_example_once():
    source = indexed_source(360)
    none = views.AUGMENTATIONS.build("none")
    seen, padding = [], 0
    for p in range(2):
        batches = list(pipeline.eval_batches(source, none, global_batch=100, process_index=p, process_count=2))
        assert len(batches) == 4 and all(b["image"].shape[0] == 50 for b in batches)
        indices, pad = _masked_indices(batches)
        seen.append(indices)
        padding += pad
    union = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(union), np.arange(360))
    assert padding == 400 - 360


def test_eval_batches_reject_batch_not_divisible_by_processes():
    none = views.AUGMENTATIONS.build("none")
    with pytest.raises(ValueError, match="Global batch 101 is not divisible by 2 processes"):
        pipeline.eval_batches(indexed_source(20), none, global_batch=101, process_index=0, process_count=2)


def test_eval_batches_preprocess_none_is_exact(digits_train):
    none = views.AUGMENTATIONS.build("none")
    stacked = pipeline.stack_all(pipeline.eval_batches(digits_train, none, global_batch=500))
    mask = stacked["mask"].astype(bool)
    raw = load_all(digits_train)
    expected = raw["image"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    np.testing.assert_array_equal(stacked["image"][mask], expected)
    np.testing.assert_array_equal(stacked["label"][mask], raw["label"])


# ----------------------------------------------------------------------------------------------
# Augmentations
# ----------------------------------------------------------------------------------------------


def test_simclr_views_in_the_pipeline(digits_train):
    simclr = views.AUGMENTATIONS.build("simclr")
    make = lambda seed: pipeline.train_batches(digits_train, simclr, global_batch=8, seed=seed, start_step=0)
    batch = next(make(0))
    assert set(batch) == {"views", "label"}
    v = batch["views"]
    assert v.shape == (8, 2, 32, 32, 3) and v.dtype == np.float32
    assert v.min() >= -1.0 and v.max() <= 1.0
    assert v.min() < -0.5 and v.max() > 0.5  # not collapsed to a constant
    for i in range(8):
        assert not np.array_equal(v[i, 0], v[i, 1]), f"the two views of example {i} are identical"
    assert_batches_equal(next(make(0)), batch)  # the same seed reproduces the views exactly


def test_simclr_views_are_a_function_of_the_seed():
    simclr = tf.function(views.AUGMENTATIONS.build("simclr", {"num_views": 3, "blur_prob": 0.5}))
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    seed = tf.constant([1, 2], tf.int64)
    first = simclr(image, seed)["views"].numpy()
    assert first.shape == (3, 24, 24, 3) and first.dtype == np.float32
    assert first.min() >= -1.0 and first.max() <= 1.0
    np.testing.assert_array_equal(simclr(image, seed)["views"].numpy(), first)
    other = simclr(image, tf.constant([1, 3], tf.int64))["views"].numpy()
    assert not np.array_equal(other, first)


def test_none_augmentation_is_exact_rescaling():
    none = views.AUGMENTATIONS.build("none")
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    out = none(tf.constant(image), tf.constant([5, 6], tf.int64))["image"].numpy()
    assert out.dtype == np.float32 and out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, image.astype(np.float32) / np.float32(127.5) - np.float32(1.0))
    assert out.min() == -1.0 and out.max() == 1.0


def test_crop_flip_outputs_padded_windows(crop_flip):
    """Every crop_flip output is a (maybe mirrored) 32x32 window of the reflect-padded image."""
    source = indexed_source(64, size=32)
    batch = next(pipeline.train_batches(source, crop_flip, global_batch=64, seed=0, start_step=0))
    images = batch["image"]
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    raw = load_all(source)["image"]
    labels = batch["label"]
    shifts = set()
    for out, label in zip(images, labels):
        pixels = np.round((out.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)
        # Find which example it is (pixel (0, 0) may have moved, so match by label + content).
        candidates = [i for i in range(64) if i % 10 == label]
        found = None
        for i in candidates:
            padded = np.pad(raw[i], ((4, 4), (4, 4), (0, 0)), mode="reflect")
            for dy in range(9):
                for dx in range(9):
                    window = padded[dy:dy + 32, dx:dx + 32]
                    for flipped in (False, True):
                        if np.array_equal(window[:, ::-1] if flipped else window, pixels):
                            found = (dy, dx, flipped)
        assert found is not None, "crop_flip output is not a window of the padded image"
        shifts.add(found)
    assert len(shifts) > 5  # crops and flips actually vary
    assert any(f for _, _, f in shifts) and not all(f for _, _, f in shifts)


def test_crop_flip_without_padding_or_flip_is_the_identity():
    identity = views.AUGMENTATIONS.build("crop_flip", {"padding": 0, "flip": False})
    none = views.AUGMENTATIONS.build("none")
    image = tf.constant(np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    seed = tf.constant([3, 4], tf.int64)
    np.testing.assert_array_equal(identity(image, seed)["image"].numpy(), none(image, seed)["image"].numpy())


# ----------------------------------------------------------------------------------------------
# image_folder on real CIFAR-10 JPEGs
# ----------------------------------------------------------------------------------------------

CIFAR_CLASSES = ("airplane", "bird", "truck")
PER_CLASS = 20


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """20 real CIFAR-10 JPEGs for each of 3 classes, in root/train/<class>/<file>.jpg."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"CIFAR-10 zip not found at {CIFAR_ZIP} (../shared is absent on this machine)")
    root = tmp_path_factory.mktemp("cifar")
    files = {}  # path -> class name
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith(".jpg"))
        for cls in CIFAR_CLASSES:
            for name in [n for n in names if n.split("/")[1] == cls][:PER_CLASS]:
                path = root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(name))
                files[path] = cls
    return root, files


def test_image_folder_on_cifar(cifar_folder):
    root, files = cifar_folder
    source = SOURCES.build("image_folder", {"root": str(root)}, split="train", image_size=32)
    assert source.num_classes == len(CIFAR_CLASSES)
    assert source.num_examples == len(CIFAR_CLASSES) * PER_CLASS
    data = load_all(source)
    assert data["image"].shape == (source.num_examples, 32, 32, 3) and data["image"].dtype == np.uint8

    # Decode every file with PIL: CIFAR images are 32x32, so resizing to 32 must be the identity,
    # and each source example must be byte-equal to exactly one file, labelled by its folder.
    class_index = {cls: i for i, cls in enumerate(sorted(CIFAR_CLASSES))}
    expected = {}
    for path, cls in files.items():
        with Image.open(path) as image:
            assert image.size == (32, 32)
            expected[image_hash(np.asarray(image.convert("RGB")))] = class_index[cls]
    assert len(expected) == len(files)
    got = [(image_hash(im), int(lab)) for im, lab in zip(data["image"], data["label"])]
    assert sorted(got) == sorted(expected.items())


def test_image_folder_split_slices_partition(cifar_folder):
    root, _ = cifar_folder
    build = lambda split: SOURCES.build("image_folder", {"root": str(root)}, split=split, image_size=16)
    full, first, rest = build("train"), build("train[:50%]"), build("train[50%:]")
    assert first.num_examples + rest.num_examples == full.num_examples
    assert example_keys(load_all(first)) + example_keys(load_all(rest)) == example_keys(load_all(full))
    assert load_all(first)["image"].shape[1:] == (16, 16, 3)


def test_image_folder_missing_root_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        sources.image_folder(str(missing), "train", image_size=8)


def test_image_folder_empty_split_errors(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        sources.image_folder(str(tmp_path), "train", image_size=8)


def _write_jpeg(path: Path, seed: int, size: int = 12) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return pixels


@pytest.fixture
def folder_with_bad_files(tmp_path):
    for i in range(8):
        _write_jpeg(tmp_path / "train" / ("a" if i % 2 else "b") / f"{i}.jpg", seed=i)
    good = (tmp_path / "train" / "a" / "1.jpg").read_bytes()
    truncated = tmp_path / "train" / "a" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    not_image = tmp_path / "train" / "b" / "text.jpg"
    not_image.write_bytes(b"this is not an image at all\n" * 10)
    return tmp_path, {str(truncated), str(not_image)}


def test_image_folder_skips_bad_files_with_one_warning(folder_with_bad_files):
    root, bad = folder_with_bad_files
    with pytest.warns(UserWarning, match="Skipping 2 unreadable image") as record:
        source = sources.image_folder(str(root), "train", image_size=12, max_bad_fraction=0.5)
    messages = [str(w.message) for w in record if "unreadable" in str(w.message)]
    assert len(messages) == 1
    assert any(path in messages[0] for path in bad)
    assert source.num_examples == 8
    data = load_all(source)  # the skipped files are never read by the pipeline
    assert data["image"].shape == (8, 12, 12, 3)
    assert sorted(collections.Counter(data["label"].tolist()).values()) == [4, 4]


def test_image_folder_too_many_bad_files_errors(folder_with_bad_files):
    root, _ = folder_with_bad_files
    with pytest.raises(ValueError, match=r"2 of 10 images .* cannot be decoded.*max_bad_fraction=0\.1"):
        sources.image_folder(str(root), "train", image_size=12, max_bad_fraction=0.1)


def test_image_folder_mixed_modes_load_as_rgb(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(3):
        _write_jpeg(tmp_path / "train" / "a" / f"{i}.jpg", seed=10 + i)
        _write_jpeg(tmp_path / "train" / "b" / f"{i}.jpg", seed=20 + i)
    gray = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "train" / "a" / "gray.png")
    rgba = rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "train" / "b" / "rgba.PNG")

    source = sources.image_folder(str(tmp_path), "train", image_size=12)
    assert source.num_examples == 8 and source.num_classes == 2
    data = load_all(source)
    assert data["image"].shape == (8, 12, 12, 3) and data["image"].dtype == np.uint8
    found = {image_hash(im): int(lab) for im, lab in zip(data["image"], data["label"])}
    # PNGs are lossless: grey is replicated to three channels, alpha is dropped.
    assert found.get(image_hash(np.repeat(gray[..., None], 3, axis=-1))) == 0
    assert found.get(image_hash(rgba[..., :3])) == 1
