"""image_folder at scale: the listing and validation cached on disk (and redone when the folder
changes), and, without the validation pass, unreadable files replaced when met, the same way on
every run and resume, counted, warned about, and an error past max_bad_fraction."""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image
from test_data import assert_batches_equal, take

from vision_jax.data import image_files, pipeline, sources, views
from vision_jax.data.sources import SOURCES
from vision_jax.errors import DataError

NUM_GOOD, SIZE = 10, 8


def png(index: int) -> bytes:
    """An 8x8 PNG whose pixel (0, 0) holds `index` (lossless, so it survives decoding)."""
    pixels = np.random.default_rng(index).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[0, 0, 0] = index
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def folder_files() -> dict[str, bytes]:
    """10 good PNGs and 2 unreadable files (one truncated, one not an image) in 2 classes."""
    files = {f"train/{'ab'[i % 2]}/{i:02d}.png": png(i) for i in range(NUM_GOOD)}
    files["train/a/03x.png"] = png(99)[:40]
    files["train/b/05x.png"] = b"not an image at all\n" * 5
    return files


@pytest.fixture(params=["folder", "zip"])
def root_with_bad_files(request, tmp_path) -> str:
    if request.param == "zip":
        path = tmp_path / "images.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in folder_files().items():
                archive.writestr(name, data)
        return str(path)
    for name, data in folder_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return str(tmp_path)


def build(root: str, cache_dir: str = "", **options) -> sources.Source:
    return SOURCES.build("image_folder", {"root": root, "listing_cache": cache_dir, **options}, split="train",
                         image_size=0)


def shown_indices(batch: dict) -> list[int]:
    """pixel (0, 0) of the 'none' view ((x / 127.5) - 1) back to the PNG's index."""
    return np.round((batch["image"][:, 0, 0, 0] + 1.0) * 127.5).astype(int).tolist()


NONE = views.AUGMENTATIONS.build("none")


def test_unreadable_files_are_replaced_by_the_next_readable_one_on_every_run_and_resume(root_with_bad_files):
    with pytest.warns(UserWarning) as record:
        source = build(root_with_bad_files, validate=False, max_bad_fraction=0.25)
        reference = take(pipeline.train_batches(source, NONE, global_batch=6, seed=1, start_step=0), 6)
    messages = [str(w.message) for w in record if "unreadable" in str(w.message)]
    # One warning at the first and one at the second unreadable file (the count doubled); each
    # file counts once, though 3 epochs meet it 3 times.
    assert len(messages) == 2 and "1 unreadable" in messages[0] and "2 unreadable" in messages[1]
    assert "max_bad_fraction=0.25" in messages[0] and ("03x.png" in messages[0] or "05x.png" in messages[0])
    assert source.num_examples == 12  # nothing was read up front

    # The rule, written out: the split's order is the seeded permutation of the sorted names,
    # and a bad file's place goes to the next readable file in that order (wrapping around).
    names = sorted(folder_files())
    order = [names[i] for i in sources._seeded_slice("train", len(names), 0)]
    readable = [not name.endswith("x.png") for name in order]
    replacement = {}
    for position, name in enumerate(order):
        nxt = next(k % 12 for k in range(position, position + 12) if readable[k % 12])
        replacement[position] = int(order[nxt].split("/")[2][:2])
    epochs = np.concatenate([shown_indices(b) for b in reference]).reshape(3, 12)
    for epoch in epochs:  # each epoch reads every position once, in a fresh order
        assert sorted(epoch.tolist()) == sorted(replacement.values())
    # A replacement brings its own label (PNG i is in class 'ab'[i % 2]).
    labels = np.concatenate([b["label"] for b in reference])
    np.testing.assert_array_equal(labels, epochs.reshape(-1) % 2)

    # A new run and a resumed one (each counting afresh) read the same batches.
    with pytest.warns(UserWarning, match="1 unreadable"):
        again = build(root_with_bad_files, validate=False, max_bad_fraction=0.25)
        rerun = take(pipeline.train_batches(again, NONE, global_batch=6, seed=1, start_step=0), 6)
        resumed = take(pipeline.train_batches(build(root_with_bad_files, validate=False, max_bad_fraction=0.25),
                                              NONE, global_batch=6, seed=1, start_step=3), 3)
    for a, b in zip(reference, rerun):
        assert_batches_equal(a, b)
    for step, batch in zip(range(3, 6), resumed):
        assert_batches_equal(batch, reference[step])


def test_too_many_unreadable_files_met_is_an_error(root_with_bad_files):
    source = build(root_with_bad_files, validate=False, max_bad_fraction=0.1)  # 1 of 12 allowed
    batches = pipeline.train_batches(source, NONE, global_batch=12, seed=0, start_step=0)
    with pytest.raises(DataError, match=r"^2 of 12 images in .* cannot be decoded .*max_bad_fraction=0\.1\. Fix or"):
        next(batches)


def test_validation_pass_skips_unreadable_files_up_front(root_with_bad_files):
    with pytest.warns(UserWarning, match="Skipping 2 unreadable image"):
        source = build(root_with_bad_files, max_bad_fraction=0.25)
    assert source.num_examples == NUM_GOOD
    batch = next(pipeline.train_batches(source, NONE, global_batch=10, seed=0, start_step=0))
    assert sorted(shown_indices(batch)) == list(range(NUM_GOOD))


def test_listing_and_validation_come_from_the_cache_until_the_folder_changes(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    for name, data in folder_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    with pytest.warns(UserWarning, match="Skipping 2"):
        first = build(str(root), str(cache), max_bad_fraction=0.25)
    cached = sorted(os.listdir(cache))  # one listing and one validation result, named after the folder
    assert len(cached) == 2 and all(name.startswith("data-train-") for name in cached), cached

    # A restart (a new process: nothing cached in memory) neither lists nor decodes the files.
    def forbidden(*args):
        raise AssertionError("listed or validated again")

    image_files._list_cached.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(image_files, "_folder_names", forbidden)
        patch.setattr(image_files, "_readable_mask", forbidden)
        with pytest.warns(UserWarning, match="Skipping 2"):
            again = build(str(root), str(cache), max_bad_fraction=0.25)
    assert again.num_examples == first.num_examples == NUM_GOOD

    # Adding, removing or renaming a file changes its class folder: the folder is listed afresh.
    (root / "train" / "b" / "new.png").write_bytes(png(50))
    image_files._list_cached.cache_clear()
    with pytest.warns(UserWarning, match="Skipping 2"):
        assert build(str(root), str(cache), max_bad_fraction=0.25).num_examples == NUM_GOOD + 1
    (root / "train" / "a" / "03x.png").unlink()
    with pytest.warns(UserWarning, match="Skipping 1"):
        assert build(str(root), str(cache), max_bad_fraction=0.25).num_examples == NUM_GOOD + 1
    (root / "train" / "a" / "00.png").rename(root / "train" / "a" / "00.gif.txt")
    with pytest.warns(UserWarning, match="Skipping 1"):
        assert build(str(root), str(cache), max_bad_fraction=0.25).num_examples == NUM_GOOD


def test_an_unwritable_cache_directory_is_a_warning_with_the_fix(tmp_path):
    for name, data in folder_files().items():
        if not name.endswith("x.png"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
    (tmp_path / "not_a_dir").write_text("a file where the cache directory would go")
    with pytest.warns(UserWarning, match=r"Cannot write the image listing cache.*config\.data\.source\.listing_cache"):
        source = build(str(tmp_path), str(tmp_path / "not_a_dir"))
    assert source.num_examples == NUM_GOOD


def test_the_default_cache_is_read_from_xdg_cache_home_when_the_source_is_built(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for name, data in folder_files().items():
        if not name.endswith("x.png"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # set after vision_jax was imported
    SOURCES.build("image_folder", {"root": str(root)}, split="train", image_size=0)
    cached = sorted(os.listdir(tmp_path / "xdg" / "vision_jax"))
    assert len(cached) == 2 and all(name.startswith("data-train-") for name in cached), cached
