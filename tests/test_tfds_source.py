"""The tfds source on datasets built here: random access to ArrayRecord files (the examples as
written, training end to end, exact resume, the same global batch over 1 and 2 processes, memory
that does not grow with the split, as for an image folder of the same pictures), the in-memory
mode, and the messages for unprepared and TFRecord-only datasets, whose commands are run as
written."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from helpers import REPO, saved_state
from test_data import assert_batches_equal, load_all, take

from vision_jax import config as config_lib
from vision_jax import trainer
from vision_jax.data import pipeline, views
from vision_jax.data.sources import SOURCES
from vision_jax.errors import ConfigError

NUM_EXAMPLES = 1200
HEIGHT, WIDTH = 96, 128


def indexed_pictures(count: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random pictures (they compress well) whose pixel (0, 0) holds their index."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 4, 4, channels), dtype=np.uint8)
    pictures = np.repeat(np.repeat(coarse, -(-height // 4), axis=1), -(-width // 4), axis=2)[:, :height, :width]
    pictures[:, 0, 0, 0] = np.arange(count) % 256
    pictures[:, 0, 0, -1] = np.arange(count) // 256 if channels > 1 else pictures[:, 0, 0, 0]
    return np.ascontiguousarray(pictures)


def build_tfds(data_dir, name: str, pictures: np.ndarray, file_format: str, shape=(None, None, 3)):
    """A tfds dataset 'name' with one 'train' split in data_dir, examples in the order given."""
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=shape, encoding_format="png"),
        "label": tfds.features.ClassLabel(num_classes=10)})
    examples = [(i, {"image": picture, "label": i % 10}) for i, picture in enumerate(pictures)]
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, split_datasets={"train": examples}, data_dir=str(data_dir),
        file_format=file_format, disable_shuffling=True,
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
    """'vj_indexed': 1,200 PNGs of 96x128 as ArrayRecord files, example i with i in pixel (0, 0)."""
    data_dir = tmp_path_factory.mktemp("tfds_array_record")
    build_tfds(data_dir, "vj_indexed", indexed_pictures(NUM_EXAMPLES, HEIGHT, WIDTH), "array_record",
               shape=(HEIGHT, WIDTH, 3))
    return str(data_dir)


def indexed(data_dir: str, split: str = "train", image_size: int = 0, **options):
    return SOURCES.build("tfds", {"dataset": "vj_indexed", "data_dir": data_dir, **options}, split=split,
                         image_size=image_size)


def test_examples_are_read_by_index_as_written(array_record_dir):
    written = indexed_pictures(NUM_EXAMPLES, HEIGHT, WIDTH)
    source = indexed(array_record_dir, "train[1100:]")
    assert (source.num_examples, source.num_classes) == (100, 10)
    data = load_all(source)
    np.testing.assert_array_equal(data["image"], written[1100:])  # PNG: lossless, at its own size
    np.testing.assert_array_equal(data["label"], np.arange(1100, 1200) % 10)
    # In memory (resized on loading) holds what the random-access source gives at that size.
    streamed, in_memory = indexed(array_record_dir, "train[:50]", 32), indexed(array_record_dir, "train[:50]", 32,
                                                                               in_memory=True)
    assert in_memory.description.endswith("in memory")
    streamed_data, in_memory_data = load_all(streamed), load_all(in_memory)
    np.testing.assert_array_equal(streamed_data["image"], in_memory_data["image"])
    np.testing.assert_array_equal(streamed_data["label"], in_memory_data["label"])
    assert streamed_data["image"].shape == (50, 32, 32, 3)


GLOBAL_BATCH = 64  # over a 100-example split: step 1 crosses into epoch 1
NUM_STEPS = 6


def test_batches_resume_exactly_and_are_the_same_over_two_processes(array_record_dir):
    source = indexed(array_record_dir, "train[:100]", 24)
    crop_flip = views.AUGMENTATIONS.build("crop_flip", {"padding": 2})
    make = lambda **kw: pipeline.train_batches(source, crop_flip, global_batch=GLOBAL_BATCH, seed=5, **kw)
    reference = take(make(start_step=0), NUM_STEPS)
    for a, b in zip(reference, take(make(start_step=0), NUM_STEPS)):
        assert_batches_equal(a, b)
    for k in (1, 4):
        for step, batch in zip(range(k, NUM_STEPS), take(make(start_step=k), 2)):
            assert_batches_equal(batch, reference[step])
    halves = [take(make(start_step=2, process_index=p, process_count=2), 3) for p in range(2)]
    for i, step in enumerate(range(2, 5)):
        combined = {key: np.concatenate([halves[0][i][key], halves[1][i][key]]) for key in reference[0]}
        assert_batches_equal(combined, reference[step])
    # Epoch 0 is a permutation of the split (crop_flip keeps pixel (0, 0) only sometimes, so
    # the labels, which travel with their image, are checked instead).
    labels = np.concatenate([b["label"] for b in reference])[:100]
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 10))


def tfds_config(data_dir: str):
    config = config_lib.load_config("configs/supervised_digits.py:runlocal", [
        "data.image_size=16", "model.widths=(8,16,32,32)", "evaluators.linear_probe.epochs=3", "eval_baselines=()",
        "optimizer.warmup_steps=0", "data.train_split=train[:256]", "data.eval_train_split=train[:256]",
        "data.eval_test_split=train[1000:]"])
    config.data.source = config_lib.ConfigDict({"name": "tfds", "dataset": "vj_indexed", "data_dir": data_dir})
    return config


@pytest.mark.slow
def test_trains_end_to_end_and_resumes_bitwise(array_record_dir, tmp_path, capsys):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    results = trainer.train(tfds_config(array_record_dir), str(uninterrupted))  # 6 steps, saved at 3 and 6
    assert "train data tfds vj_indexed[train[:256]] (256 examples)" in capsys.readouterr().out
    assert set(results["supervised"]) >= {"classification/top1", "knn/top1", "linear_probe/top1"}
    # A run that stopped after its step-3 checkpoint, rerun: it must end where the other did.
    shutil.copytree(uninterrupted, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    trainer.train(tfds_config(array_record_dir), str(resumed))
    assert "resuming from step 3" in capsys.readouterr().out
    expected, actual = saved_state(uninterrupted, 6), saved_state(resumed, 6)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(actual), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# Run in a fresh process: resident memory grown by building a source and reading one epoch of it.
MEASURE_MEMORY = r"""
import json, sys
import psutil
from vision_jax.data import pipeline, views
from vision_jax.data.sources import SOURCES

data_dir, folder = sys.argv[1:]
SOURCES_BY_KIND = {
    "streamed": ("tfds", {"dataset": "vj_indexed", "data_dir": data_dir}),
    "folder": ("image_folder", {"root": folder, "validate": False, "listing_cache": ""}),
    "in_memory": ("tfds", {"dataset": "vj_indexed", "data_dir": data_dir, "in_memory": True})}

def grown(kind, split):
    before = psutil.Process().memory_info().rss
    source = SOURCES.build(*SOURCES_BY_KIND[kind], split=split, image_size=0)
    batches = pipeline.train_batches(source, views.AUGMENTATIONS.build("none"), global_batch=40, seed=0,
                                     start_step=0)
    for _ in range(source.num_examples // 40):
        next(batches)
    return psutil.Process().memory_info().rss - before  # source and iterator still alive

grown("streamed", "train[:40]")  # first use: TensorFlow's one-time allocations
print(json.dumps({f"{kind} {split}": grown(kind, split) for kind in SOURCES_BY_KIND
                  for split in ("train[:120]", "train")}))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_split(array_record_dir, tmp_path):
    for i, picture in enumerate(indexed_pictures(NUM_EXAMPLES, HEIGHT, WIDTH)):  # the same images as files
        path = tmp_path / "train" / f"c{i % 10}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", MEASURE_MEMORY, array_record_dir, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    grown = json.loads(result.stdout.strip().splitlines()[-1])
    decoded_difference = (NUM_EXAMPLES - 120) * HEIGHT * WIDTH * 3  # bytes of the 1,080 more images, decoded
    # Held in memory, the full split costs at least its decoded size more than a tenth of it: the
    # measurement sees that. Read by index, from ArrayRecord or files, the difference stays small.
    assert grown["in_memory train"] - grown["in_memory train[:120]"] > 0.8 * decoded_difference, grown
    assert grown["streamed train"] - grown["streamed train[:120]"] < 0.15 * decoded_difference, grown
    assert grown["folder train"] - grown["folder train[:120]"] < 0.15 * decoded_difference, grown


def test_tfrecord_only_dataset_gets_a_conversion_command_that_works(tmp_path):
    grey = indexed_pictures(30, 8, 8, channels=1)
    build_tfds(tmp_path, "vj_grey", grey, "tfrecord", shape=(None, None, 1))
    options = {"dataset": "vj_grey", "data_dir": str(tmp_path)}
    with pytest.raises(FileNotFoundError, match=r"stored as tfrecord only.*in_memory=True") as error:
        SOURCES.build("tfds", options, split="train", image_size=8)
    # The other way out, in memory from the TFRecord files, needs one image size.
    with pytest.raises(ConfigError, match=r"vary in size .* needs config\.data\.image_size"):
        SOURCES.build("tfds", {**options, "in_memory": True}, split="train", image_size=0)
    in_memory = load_all(SOURCES.build("tfds", {**options, "in_memory": True}, split="train", image_size=8))

    command = re.search(r"python -m vision_jax\.data\.convert_tfds \S+ \S+", str(error.value)).group(0)
    argv = shlex.split(command)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    converted = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert "Wrote 1 ArrayRecord shard" in converted.stdout

    streamed = load_all(SOURCES.build("tfds", options, split="train", image_size=0))
    np.testing.assert_array_equal(streamed["image"], np.repeat(grey, 3, axis=-1))  # grey becomes RGB
    np.testing.assert_array_equal(streamed["label"], np.arange(30) % 10)
    np.testing.assert_array_equal(in_memory["image"], streamed["image"])  # at 8 px: the same pixels
    # The TFRecord files stay for tf.data readers.
    assert tfds.builder("vj_grey", data_dir=str(tmp_path)).as_dataset(split="train").cardinality() == 30


class VjTinyBuilt(tfds.core.GeneratorBasedBuilder):
    """A dataset with code (registered as 'vj_tiny_built'), to prepare from the message's command."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=10)}), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, picture in enumerate(indexed_pictures(20, 8, 8)):
            yield i, {"image": picture, "label": i % 10}


def test_unprepared_dataset_gets_a_command_that_prepares_it(tmp_path):
    message = r"'vj_tiny_built' is not prepared.*file_format='array_record'"
    with pytest.raises(FileNotFoundError, match=message) as error:
        SOURCES.build("tfds", {"dataset": "vj_tiny_built", "data_dir": str(tmp_path)}, split="train", image_size=0)
    argv = shlex.split(re.search(r"python -c .*", str(error.value)).group(0))
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    exec(argv[2], {})  # in this process, where the builder's code is registered
    source = SOURCES.build("tfds", {"dataset": "vj_tiny_built", "data_dir": str(tmp_path)}, split="train",
                           image_size=0)
    np.testing.assert_array_equal(load_all(source)["image"], indexed_pictures(20, 8, 8))


def test_unknown_dataset_suggests_names():
    with pytest.raises(ConfigError, match=r"tfds has no dataset 'mnistt'\. Did you mean 'mnist'"):
        SOURCES.build("tfds", {"dataset": "mnistt"}, split="train", image_size=8)
