"""Sources beyond the basics: image folders read straight from a zip archive, class ids shared
across splits, native-size images, and in-memory arrays, with the errors their misuse gets."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image
from test_data import CIFAR_ZIP, example_keys, load_all

from vision_jax.data import sources
from vision_jax.data.sources import SOURCES

CLASSES = ("airplane", "bird", "truck")


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
    """12 real CIFAR JPEGs per class, both as a folder and as zips (stored and deflated members)."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"CIFAR-10 zip not found at {CIFAR_ZIP} (../shared is absent on this machine)")
    root = tmp_path_factory.mktemp("subset")
    folder = root / "folder"
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg") and n.split("/")[1] in CLASSES)
        chosen = [n for cls in CLASSES for n in [m for m in names if m.split("/")[1] == cls][:12]]
        for name in chosen:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(archive.read(name))
    zips = {}
    for kind, compression in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
        zips[kind] = root / f"{kind}.zip"
        with zipfile.ZipFile(zips[kind], "w", compression) as archive:
            archive.writestr("README.txt", "not an image, outside any split")
            for name in chosen:
                archive.write(folder / name, name)
    return folder, zips


@pytest.mark.parametrize("kind", ["stored", "deflated"])
def test_zip_archive_reads_the_same_examples_as_the_extracted_folder(cifar_subset, kind):
    folder, zips = cifar_subset
    from_folder = SOURCES.build("image_folder", {"root": str(folder)}, split="train[:75%]", image_size=32)
    from_zip = SOURCES.build("image_folder", {"root": str(zips[kind])}, split="train[:75%]", image_size=32)
    assert from_zip.num_examples == from_folder.num_examples == 27 and from_zip.num_classes == 3
    a, b = load_all(from_folder), load_all(from_zip)
    np.testing.assert_array_equal(a["image"], b["image"])  # same order, same bytes, same labels
    np.testing.assert_array_equal(a["label"], b["label"])


def test_zip_without_the_split_is_a_clear_error(cifar_subset):
    _, zips = cifar_subset
    with pytest.raises(FileNotFoundError, match=r"stored\.zip:validation/.*holds no images"):
        SOURCES.build("image_folder", {"root": str(zips["stored"])}, split="validation", image_size=32)


def _write(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_class_ids_are_shared_by_splits_that_miss_a_class(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee", "cat"):
        _write(tmp_path / "train" / cls / "0.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    # The validation split has no 'ant': 'bee' and 'cat' must keep ids 1 and 2.
    for cls in ("bee", "cat"):
        _write(tmp_path / "val" / cls / "0.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match=r"no images of class\(es\) \['ant'\]"):
        val = SOURCES.build("image_folder", {"root": str(tmp_path)}, split="val", image_size=6)
    train = SOURCES.build("image_folder", {"root": str(tmp_path)}, split="train", image_size=6)
    assert val.num_classes == train.num_classes == 3
    assert sorted(load_all(val)["label"].tolist()) == [1, 2]


def test_image_size_zero_keeps_each_image_at_its_own_size(tmp_path):
    rng = np.random.default_rng(1)
    shapes = {"a": (10, 14), "b": (7, 5)}
    for cls, (h, w) in shapes.items():
        _write(tmp_path / "train" / cls / "0.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    source = SOURCES.build("image_folder", {"root": str(tmp_path)}, split="train", image_size=0)
    import tensorflow as tf

    got = {int(ex["label"]): ex["image"].shape for ex in
           tf.data.Dataset.range(2).map(source.load).as_numpy_iterator()}
    assert got == {0: (10, 14, 3), 1: (7, 5, 3)}


def test_arrays_source_from_npz_slices_a_seeded_permutation(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    build = lambda split: SOURCES.build("arrays", {"path": str(tmp_path / "data.npz")}, split=split, image_size=8)
    full, head, tail = build("train"), build("train[:30]"), build("train[30:]")
    assert (full.num_examples, head.num_examples, tail.num_examples, full.num_classes) == (40, 30, 10, 4)
    assert example_keys(load_all(head)) + example_keys(load_all(tail)) == example_keys(load_all(full))
    assert example_keys(load_all(full)) == example_keys({"image": images, "label": labels})
    # Grey [N, H, W] arrays become RGB.
    grey = sources.arrays_source(images[..., 0], labels, image_size=8)
    data = load_all(grey)
    np.testing.assert_array_equal(data["image"][..., 0], data["image"][..., 2])


@pytest.mark.parametrize("images,labels,message", [
    (np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, int), "must be uint8"),
    (np.zeros((4, 8, 8, 3), np.uint8), np.zeros(3, int), "4 images but 3 labels"),
    (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, -1, 2]), r"labels must lie in \[0, 3\)"),
    (np.zeros((4, 8, 8, 3), np.uint8), np.array([0.0, 1.0, 0.0, 1.0]), "integer class ids"),
])
def test_bad_arrays_are_refused_with_the_reason(images, labels, message):
    with pytest.raises(ValueError, match=message):
        sources.arrays_source(images, labels, num_classes=3 if "lie in" in message else None)


def test_missing_npz_and_missing_keys_say_how_to_write_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"np\.savez"):
        SOURCES.build("arrays", {"path": str(tmp_path / "nope.npz")}, split="train", image_size=8)
    np.savez(tmp_path / "bad.npz", pictures=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"no \['images', 'labels'\]"):
        SOURCES.build("arrays", {"path": str(tmp_path / "bad.npz")}, split="train", image_size=8)


def test_an_empty_class_folder_is_reported_and_keeps_its_id(tmp_path):
    rng = np.random.default_rng(3)
    for cls in ("a", "c"):
        _write(tmp_path / "train" / cls / "0.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    (tmp_path / "train" / "b").mkdir()
    with pytest.warns(UserWarning, match=r"no images of class\(es\) \['b'\].*empty class folder"):
        source = SOURCES.build("image_folder", {"root": str(tmp_path)}, split="train", image_size=6)
    assert source.num_classes == 3
    assert sorted(load_all(source)["label"].tolist()) == [0, 2]
