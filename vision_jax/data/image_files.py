"""Image files by class: `<root>/<split>/<class>/<image>` in a directory or inside a zip archive.

Listing finds a split's images in sorted order and labels them by class folder. It is cached on
disk (one .npz per root and split in `cache_dir`) and checked against the names of the split and
class folders and the modification times of this split's class folders (a zip: its size and
time), so a restart does not list a million files again, while adding, removing or renaming a
file lists afresh. A file rewritten in place is not noticed: delete the cache file to re-list.

Unreadable files are handled one of two ways:
  - validated (`list_images(..., validate=True)`): every file is decoded once with PIL before
    training and the unreadable ones are dropped; the result is cached with the listing;
  - lazily (`decoder(..., replace_unreadable=True)`): nothing is read up front; a file that fails
    to decode when the pipeline meets it is replaced by the next readable file of the split's
    order (the same one on every run and resume), counted and warned about.
Either way, more than `max_bad_fraction` of the split unreadable is an error.

Reading a zip needs no extraction: members are read from their byte range with `os.pread`
(deflated ones inflated with zlib), so parallel tf.data workers share no file handle, and the
reader keeps three integers per member rather than a ZipInfo object.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import os
import struct
import tempfile
import threading
import warnings
import zipfile
import zlib
from typing import Callable

import numpy as np
import tensorflow as tf

from vision_jax.data.ops import decode_to_uint8
from vision_jax.errors import DataError, MissingDataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_CACHE_FORMAT = 1  # bump when the cache file's contents change meaning


@dataclasses.dataclass(frozen=True)
class ImageList:
    """One split's images in sorted order, and where they live."""
    root: str  # a directory, or a zip archive
    keys: np.ndarray  # bytes: paths relative to root ('train/cat/1.jpg'), which are member names in a zip
    labels: np.ndarray  # int32 class ids
    classes: tuple[str, ...]  # class names; id = position
    split: str
    is_zip: bool

    @property
    def where(self) -> str:
        """The split's location, for messages."""
        return f"{self.root}:{self.split}/" if self.is_zip else os.path.join(self.root, self.split)

    def select(self, index: np.ndarray) -> ImageList:
        return dataclasses.replace(self, keys=self.keys[index], labels=self.labels[index])

    def path(self, i: int) -> str:
        return self.path_of(self.keys[i])

    def path_of(self, key: bytes) -> str:
        """The file (or zip:member) of a key, for messages."""
        return f"{self.root}:{key.decode()}" if self.is_zip else os.path.join(self.root, key.decode())


def list_images(root: str, split: str, *, validate: bool, max_bad_fraction: float, cache_dir: str = "") -> ImageList:
    """The images of `split` under `root`, from the cache in `cache_dir` while it is valid
    ('' = no cache); with `validate`, without the files PIL cannot decode (one warning naming the
    first and the count; more than `max_bad_fraction` of them is an error)."""
    root = os.path.abspath(os.path.expanduser(root))
    is_zip = os.path.isfile(root)
    if is_zip and not zipfile.is_zipfile(root):  # e.g. a download cut short: no central directory at the end
        raise DataError(f"{root!r} is not a valid zip archive (truncated or corrupt?); image_folder's root "
                        f"is a folder or a .zip of <split>/<class>/<image> files.")
    if not is_zip and not os.path.isdir(os.path.join(root, split)):
        raise MissingDataError(
            f"Image folder split {os.path.join(root, split)!r} does not exist: expected images in "
            f"{root}/{split}/<class>/<image>.jpg (or a .zip archive with that layout as root).")
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else ""
    signature = _zip_signature(root) if is_zip else _folder_signature(root, split)
    return _list_cached(root, split, is_zip, signature, cache_dir, validate, max_bad_fraction)


# The train split and the evaluation slices of one folder share one listing in a process.
@functools.lru_cache(maxsize=8)
def _list_cached(root: str, split: str, is_zip: bool, signature: str, cache_dir: str, validate: bool,
                 max_bad_fraction: float) -> ImageList:
    images = _listing(root, split, is_zip, signature, cache_dir)
    if not validate:
        return images
    unreadable = _unreadable(images, signature, cache_dir)
    if len(unreadable):
        if len(unreadable) > max_bad_fraction * len(images.keys):
            raise DataError(
                f"{len(unreadable)} of {len(images.keys)} images in {images.where!r} cannot be decoded (first: "
                f"{images.path_of(unreadable[0])}), more than max_bad_fraction={max_bad_fraction}. Fix or remove "
                f"them, or skip them with --config.data.source.max_bad_fraction="
                f"{_fraction_that_skips(len(unreadable), len(images.keys))}")
        warnings.warn(f"Skipping {len(unreadable)} unreadable image(s) in {images.where!r}; first: "
                      f"{images.path_of(unreadable[0])}")
    return images.select(np.flatnonzero(~np.isin(images.keys, unreadable)))


def _fraction_that_skips(unreadable: int, total: int) -> float:
    """A short max_bad_fraction that is at least unreadable / total."""
    fraction = float(f"{unreadable / total:.2g}")
    return fraction if fraction * total >= unreadable else float(f"{fraction * 1.1:.2g}")


# --- listing ---------------------------------------------------------------------------------------


def _listing(root: str, split: str, is_zip: bool, signature: str, cache_dir: str) -> ImageList:
    cache_path = _cache_path(cache_dir, root, split, "listing")
    cached = _read_cache(cache_path, signature)
    if cached is not None:
        keys, labels, classes = cached["keys"], cached["labels"], tuple(cached["classes"].tolist())
    else:
        names, class_folders = _zip_names(root) if is_zip else _folder_names(root, split)
        keys, labels, classes = _label(names, class_folders, split)
        _write_cache(cache_path, signature, keys=keys, labels=labels, classes=np.asarray(classes, str))
    images = ImageList(root, keys, labels, classes, split, is_zip)
    if not len(keys):
        raise MissingDataError(
            f"Image folder {images.where!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files in "
            f"class sub-folders).")
    present = set(np.unique(labels).tolist())
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        warnings.warn(f"{images.where!r} has no images of class(es) {empty[:5]}{' ...' if len(empty) > 5 else ''} "
                      f"({len(empty)} of {len(classes)}; an empty class folder, or a class only other splits "
                      f"have). Class ids still count them, so every split labels alike.")
    return images


def _folder_names(root: str, split: str) -> tuple[list[str], set[str]]:
    """The files in `split`'s class folders (relative to root), and the class folder names of
    every split."""
    class_folders, names = set(), []
    for split_entry in _subfolders(root):
        for class_entry in _subfolders(split_entry.path):
            class_folders.add(class_entry.name)
            if split_entry.name == split:
                names += [f"{split}/{class_entry.name}/{e.name}" for e in os.scandir(class_entry.path)
                          if e.is_file()]
    return names, class_folders


def _zip_names(root: str) -> tuple[list[str], set[str]]:
    with zipfile.ZipFile(root) as archive:
        entries = archive.namelist()
    names = [n for n in entries if not n.endswith("/")]
    folders = [n.rstrip("/").split("/") for n in entries if n.endswith("/")]
    class_folders = ({parts[1] for parts in (n.split("/") for n in names) if len(parts) == 3}
                     | {parts[1] for parts in folders if len(parts) == 2})
    return names, class_folders


def _label(names: list[str], class_folders: set[str], split: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    # Class ids come from the class folders of EVERY split, so a split missing a class (a small
    # validation set, say) still gives each class the same id as the training split.
    classes = tuple(sorted(class_folders))
    class_id = {c: i for i, c in enumerate(classes)}
    keys = sorted(n for n in names if _is_image_of(n, split))
    labels = np.asarray([class_id[k.split("/")[1]] for k in keys], np.int32)
    return np.asarray([k.encode() for k in keys], dtype=bytes).reshape(-1), labels, classes


def _is_image_of(name: str, split: str) -> bool:
    parts = name.split("/")
    return len(parts) == 3 and parts[0] == split and parts[2].lower().endswith(IMAGE_EXTENSIONS)


def _subfolders(path: str) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(path) if e.is_dir()), key=lambda e: e.name)


# --- the listing cache -------------------------------------------------------------------------------


def _folder_signature(root: str, split: str) -> str:
    """Changes when a split or class folder appears or goes, or a file of `split` is added,
    removed or renamed (each changes its class folder's modification time)."""
    lines = []
    for split_entry in _subfolders(root):
        for class_entry in _subfolders(split_entry.path):
            stamp = class_entry.stat().st_mtime_ns if split_entry.name == split else ""
            lines.append(f"{split_entry.name}/{class_entry.name} {stamp}")
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def _zip_signature(root: str) -> str:
    stat = os.stat(root)
    return f"{stat.st_size} {stat.st_mtime_ns}"


def _cache_path(cache_dir: str, root: str, split: str, kind: str) -> str:
    if not cache_dir:
        return ""
    digest = hashlib.sha1(f"{root}\0{split}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{os.path.basename(root)}-{split}-{digest}.{kind}.npz")


def _read_cache(path: str, signature: str) -> dict | None:
    if not path or not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["signature"]) != f"{_CACHE_FORMAT} {signature}":
                return None
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # unreadable cache: list afresh
        return None


def _write_cache(path: str, signature: str, **arrays: np.ndarray) -> None:
    """Writes atomically (temp file, then rename): processes sharing the cache never read half a file."""
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".tmp", delete=False) as f:
            np.savez(f, signature=np.asarray(f"{_CACHE_FORMAT} {signature}"), **arrays)
        os.replace(f.name, path)
    except OSError as error:
        warnings.warn(f"Cannot write the image listing cache {path!r} ({error}); the next run lists the files "
                      f"again. Point config.data.source.listing_cache at a writable directory.")


# --- the validation pass -----------------------------------------------------------------------------


def _unreadable(images: ImageList, signature: str, cache_dir: str) -> np.ndarray:
    """Keys of the files PIL cannot decode, from the cache while the listing is unchanged."""
    signature = f"{signature} {hashlib.sha1(images.keys.tobytes()).hexdigest()}"
    cache_path = _cache_path(cache_dir, images.root, images.split, "validation")
    cached = _read_cache(cache_path, signature)
    if cached is not None:
        return cached["unreadable"]
    read = _ZipMembers(images.root, images.keys).read if images.is_zip else functools.partial(_read_file, images)
    readable = np.asarray(_readable_mask([functools.partial(read, i) for i in range(len(images.keys))]), bool)
    unreadable = images.keys[~readable]
    _write_cache(cache_path, signature, unreadable=unreadable)
    return unreadable


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


def _read_file(images: ImageList, i: int) -> bytes:
    with open(images.path(i), "rb") as f:
        return f.read()


# --- reading in the pipeline -------------------------------------------------------------------------


def decoder(images: ImageList, replace_unreadable: bool = False,
            max_bad_fraction: float = 0.0) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """`decode(index) -> (used, uint8 [H, W, 3])`: image `index` of the list, a tf.data-traceable
    op; `used` is the index of the file it came from (always `index` without replacement).

    With `replace_unreadable`, a file that cannot be read or decoded is replaced by the next
    readable file in the list's order (wrapping around): the replacement depends on the files
    only, so every run and every resume gets the same one. Each unreadable file met is counted
    once; a warning names the first and repeats when the count doubles; more than
    `max_bad_fraction` of the list is an error.
    """
    read = byte_reader(images)

    @tf.autograph.experimental.do_not_convert
    def decode(index):
        return index, decode_to_uint8(read(index))

    if not replace_unreadable:
        return decode
    num_images = len(images.keys)
    log = _UnreadableLog(images, max_bad_fraction)
    none_readable = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.zeros([0, 0, 3], tf.uint8)))

    @tf.autograph.experimental.do_not_convert
    def decode_or_replace(index):
        index = tf.cast(index, tf.int64)
        # Candidates are decoded one at a time and only until one works, so a readable file costs
        # one read and one decode, as without replacement. Past `limit` unreadable ones in a row
        # the run fails anyway, so the search stops there.
        candidates = tf.data.Dataset.range(index, index + log.limit + 1).map(lambda k: k % num_images)
        used, image = candidates.map(decode).ignore_errors().concatenate(none_readable).take(1).get_single_element()

        def note_replacement():
            count = tf.numpy_function(log.note, [index, used], tf.int64, stateful=True)
            with tf.control_dependencies([count]):
                return tf.identity(used), tf.identity(image)

        return tf.cond(tf.equal(used, index), lambda: (used, image), note_replacement)

    return decode_or_replace


class _UnreadableLog:
    """The unreadable files met by the pipeline: each counted once, warned about as the count
    doubles, and an error past `max_bad_fraction` of the list."""

    def __init__(self, images: ImageList, max_bad_fraction: float):
        self.images, self.max_bad_fraction = images, max_bad_fraction
        self.limit = int(max_bad_fraction * len(images.keys))
        self.unreadable: set[int] = set()
        self._lock = threading.Lock()  # tf.data calls `note` from several threads

    def note(self, index, used) -> np.int64:
        """Files index, index+1, ... before `used` (-1: none of the limit + 1 tried) are unreadable."""
        index, used, num_images = int(index), int(used), len(self.images.keys)
        skipped = (used - index) % num_images if used >= 0 else self.limit + 1
        with self._lock:
            before = len(self.unreadable)
            self.unreadable.update((index + k) % num_images for k in range(skipped))
            count = len(self.unreadable)
        if count > self.limit:
            raise DataError(
                f"{count} of {num_images} images in {self.images.where!r} cannot be decoded (latest: "
                f"{self.images.path(index)}), more than max_bad_fraction={self.max_bad_fraction}. Fix or remove "
                f"them, or count them all before training with --config.data.source.validate=true (its error "
                f"names the max_bad_fraction that skips them).")
        if count.bit_length() > before.bit_length():  # the count reached 1, 2, 4, 8, ...
            warnings.warn(
                f"{count} unreadable image(s) met so far in {self.images.where!r}; latest "
                f"{self.images.path(index)}, replaced by {self.images.path(used)} (the next readable one in the "
                f"split's order, the same on every run and resume). More than {self.limit} "
                f"(max_bad_fraction={self.max_bad_fraction}) is an error.")
        return np.int64(count)


def byte_reader(images: ImageList) -> Callable[[tf.Tensor], tf.Tensor]:
    """`read(index) -> encoded bytes of image index`, a tf.data-traceable op. The lookup tables are
    built here, eagerly, so tracing `read` touches no Python state."""
    if not images.is_zip:
        prefix, keys = tf.constant(images.root + os.sep), tf.constant(images.keys)

        @tf.autograph.experimental.do_not_convert
        def read(index):
            return tf.io.read_file(tf.strings.join([prefix, tf.gather(keys, index)]))

        return read
    members = _ZipMembers(images.root, images.keys)

    @tf.autograph.experimental.do_not_convert
    def read(index):
        data = tf.numpy_function(members.read, [index], tf.string, stateful=False)
        data.set_shape(())
        return data

    return read


class _ZipMembers:
    """Random access to the given members of a zip from many threads: three integers each
    (local header offset, compressed size, compression method), one shared file descriptor."""

    def __init__(self, path: str, keys: np.ndarray):
        self.path, self.keys = path, keys
        wanted = {k.decode(): i for i, k in enumerate(keys)}
        self.table = np.full((len(keys), 3), -1, np.int64)
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                i = wanted.get(info.filename)
                if i is not None:
                    self.table[i] = (info.header_offset, info.compress_size, info.compress_type)
        if (self.table[:, 0] < 0).any():
            missing = keys[np.flatnonzero(self.table[:, 0] < 0)[0]].decode()
            raise MissingDataError(f"{path!r} has no member {missing!r} (the archive changed since it was listed).")
        self._fd = os.open(path, os.O_RDONLY)
        self._local = threading.local()  # a ZipFile per thread for members neither stored nor deflated

    def read(self, i) -> bytes:
        offset, size, method = (int(v) for v in self.table[int(i)])
        # The local header (30 bytes + name + extra field; its extra length may differ from the
        # central directory's) precedes the member's data.
        header = os.pread(self._fd, 30, offset)
        if header[:4] != b"PK\x03\x04":
            raise DataError(f"Corrupt zip archive {self.path!r}: bad local header for {self.keys[int(i)].decode()!r}.")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        if method == zipfile.ZIP_STORED:
            return os.pread(self._fd, size, offset + 30 + name_length + extra_length)
        if method == zipfile.ZIP_DEFLATED:
            return zlib.decompress(os.pread(self._fd, size, offset + 30 + name_length + extra_length), -zlib.MAX_WBITS)
        if not hasattr(self._local, "archive"):
            self._local.archive = zipfile.ZipFile(self.path)
        return self._local.archive.read(self.keys[int(i)].decode())

    def __del__(self):
        try:
            os.close(self._fd)
        except (OSError, AttributeError):
            pass
