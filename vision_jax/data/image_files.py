"""Image files by class: `<root>/<split>/<class>/<image>` in a directory or inside a zip archive.

Listing finds the images, labels them by class folder, and decodes each once with PIL to drop
unreadable files before training starts (a corrupt JPEG met mid-run would kill the run hours in).
Reading a zip needs no extraction: stored (uncompressed) members are read straight from their
byte range with `os.pread`, so parallel tf.data workers do not contend for one file handle.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import os
import struct
import threading
import warnings
import zipfile

import numpy as np
import tensorflow as tf

from vision_jax.errors import DataError, MissingDataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class ImageList:
    """The readable images of one split, in sorted order, and how to read their bytes."""
    keys: tuple[str, ...]  # file paths, or member names in the archive
    labels: np.ndarray  # int32 class ids
    classes: tuple[str, ...]  # class names; id = position
    archive: str | None  # the zip file, or None for a directory


def list_images(root: str, split: str, max_bad_fraction: float) -> ImageList:
    root = os.path.expanduser(root)
    if os.path.isfile(root):
        if not zipfile.is_zipfile(root):  # e.g. a download cut short: no central directory at the end
            raise DataError(f"{root!r} is not a valid zip archive (truncated or corrupt?); image_folder's root "
                            f"is a folder or a .zip of <split>/<class>/<image> files.")
        return _list_cached(root, split, max_bad_fraction, True)
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise MissingDataError(
            f"Image folder split {split_dir!r} does not exist: expected images in "
            f"{root}/{split}/<class>/<image>.jpg (or a .zip archive with that layout as root).")
    return _list_cached(root, split, max_bad_fraction, False)


# Cached: the train split and the evaluation slices of one folder share one listing and decode pass.
@functools.lru_cache(maxsize=8)
def _list_cached(root: str, split: str, max_bad_fraction: float, is_zip: bool) -> ImageList:
    if is_zip:
        with zipfile.ZipFile(root) as archive:
            entries = archive.namelist()
        names = [n for n in entries if not n.endswith("/")]
        folders = [n.rstrip("/") for n in entries if n.endswith("/")]
        where = f"{root}:{split}/"
    else:
        walk = list(os.walk(root))
        names = [os.path.relpath(os.path.join(d, f), root) for d, _, files in walk for f in files]
        folders = [os.path.relpath(d, root) for d, _, _ in walk]
        where = os.path.join(root, split)
    # Class ids come from the class folders of EVERY split, so a split missing a class (a small
    # validation set, say) still gives each class the same id as the training split.
    classes = sorted({parts[1] for parts in (n.split("/") for n in names) if len(parts) == 3}
                     | {parts[1] for parts in (f.split("/") for f in folders) if len(parts) == 2})
    keys, labels = [], []
    for name in sorted(names):
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == split and parts[2].lower().endswith(IMAGE_EXTENSIONS):
            keys.append(name if is_zip else os.path.join(root, name))
            labels.append(classes.index(parts[1]))
    if not keys:
        raise MissingDataError(
            f"Image folder {where!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files in "
            f"class sub-folders).")

    empty = [c for i, c in enumerate(classes) if i not in set(labels)]
    if empty:
        warnings.warn(f"{where!r} has no images of class(es) {empty[:5]}{' ...' if len(empty) > 5 else ''} "
                      f"({len(empty)} of {len(classes)}; an empty class folder, or a class only other splits "
                      f"have). Class ids still count them, so every split labels alike.")
    reader = zip_reader(root) if is_zip else None
    readable = _readable_mask([functools.partial(reader.read, k) if reader else functools.partial(_read_file, k)
                               for k in keys])
    bad = [k for k, ok in zip(keys, readable) if not ok]
    if bad:
        if len(bad) > max_bad_fraction * len(keys):
            needed = float(f"{len(bad) / len(keys):.2g}")
            needed = needed if needed * len(keys) >= len(bad) else float(f"{needed * 1.1:.2g}")
            raise DataError(
                f"{len(bad)} of {len(keys)} images in {where!r} cannot be decoded (first: {bad[0]}), "
                f"more than max_bad_fraction={max_bad_fraction}. Fix or remove them, or skip them with "
                f"--config.data.source.max_bad_fraction={needed}")
        warnings.warn(f"Skipping {len(bad)} unreadable image(s) in {where!r}; first: {bad[0]}")
    keep = np.asarray(readable, bool)
    return ImageList(tuple(np.asarray(keys)[keep]), np.asarray(labels, np.int32)[keep], tuple(classes),
                     root if is_zip else None)


def byte_reader(images: ImageList):
    """`read(index) -> encoded bytes of image index`, a tf.data-traceable op. The lookup tables are
    built here, eagerly, so tracing `read` touches no Python state."""
    if images.archive is None:
        paths = tf.constant(images.keys)

        @tf.autograph.experimental.do_not_convert
        def read(index):
            return tf.io.read_file(tf.gather(paths, index))

        return read
    reader = zip_reader(images.archive)
    member_ids = tf.constant(np.asarray([reader.member_id(k) for k in images.keys], np.int64))

    @tf.autograph.experimental.do_not_convert
    def read(index):
        data = tf.numpy_function(reader.read_member, [tf.gather(member_ids, index)], tf.string, stateful=False)
        data.set_shape(())
        return data

    return read


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _readable_mask(readers: list) -> list[bool]:
    from PIL import Image

    def readable(read) -> bool:
        try:
            with Image.open(io.BytesIO(read())) as image:
                image.load()  # a full decode: catches truncated files, not just bad headers
            return True
        except Exception:  # noqa: BLE001 - any failure to read or decode means "skip this file"
            return False

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(readable, readers, chunksize=256))


class _ZipReader:
    """Random access to a zip's members from many threads."""

    def __init__(self, path: str):
        self.path = path
        with zipfile.ZipFile(path) as archive:
            self.infos = [i for i in archive.infolist() if not i.is_dir()]
        self.ids = {info.filename: i for i, info in enumerate(self.infos)}
        self._fd = os.open(path, os.O_RDONLY)
        self._local = threading.local()  # a ZipFile per thread for compressed members
        self._data_offsets: dict[int, int] = {}

    def member_id(self, name: str) -> int:
        return self.ids[name]

    def read(self, name: str) -> bytes:
        return self.read_member(self.ids[name])

    def read_member(self, member_id) -> bytes:
        info = self.infos[int(member_id)]
        if info.compress_type == zipfile.ZIP_STORED:
            return os.pread(self._fd, info.file_size, self._data_offset(int(member_id)))
        if not hasattr(self._local, "archive"):
            self._local.archive = zipfile.ZipFile(self.path)
        return self._local.archive.read(info)

    def _data_offset(self, member_id: int) -> int:
        offset = self._data_offsets.get(member_id)
        if offset is None:
            info = self.infos[member_id]
            # The local header (30 bytes + name + extra field; its extra length may differ from the
            # central directory's) precedes the member's data.
            header = os.pread(self._fd, 30, info.header_offset)
            if header[:4] != b"PK\x03\x04":
                raise DataError(f"Corrupt zip archive {self.path!r}: bad local header for {info.filename!r}.")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            offset = info.header_offset + 30 + name_length + extra_length
            self._data_offsets[member_id] = offset
        return offset

    def __del__(self):
        try:
            os.close(self._fd)
        except (OSError, AttributeError):
            pass


# One reader (one listing of the archive, one file descriptor) per archive for the process.
zip_reader = functools.lru_cache(maxsize=4)(_ZipReader)
