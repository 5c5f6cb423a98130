"""The large synthetic case of bench/input_pipeline.py (`--large_examples=200000`): input at
ImageNet scale without ImageNet.

Generates once (cached in --large_dir, never in the repository) N JPEGs of 160x120 (CIFAR-10
pictures upscaled plus Gaussian noise, quality 90, in 1,000 class folders as ImageNet has) and
writes the same bytes as an image folder and as an ArrayRecord tfds dataset. Then each case runs
in a fresh process, so resident memory is its own, with tf.data held to one thread (the per-core
rate), for the ImageNet-style decode + random_resized_crop(224) + flip:

  array_record     the tfds source, read by index (tf.data: the chosen loader)
  grain_thread     peer loader: grain (if installed) reading the same source, the same ops as one
                   tf.function per example, one thread in the process
  grain_process    the same in one grain worker process (mp_prefetch)
  folder_listing   image_folder, validate=False, no listing cache yet: start-up only
  folder           image_folder, validate=False, listing from the cache
  folder_validate  image_folder with the up-front validation pass, nothing cached: start-up only
  in_memory        tfds in_memory=True on the first --large_in_memory examples (decoded once)

and reports start-up (process start to first batch, and the part of it that is imports), the
resident memory (RSS, with grain's worker process) after the steps, and after the first tenth of
the steps images per second of wall time and per CPU-second (the CPU time of the process and
its worker: on a shared machine the steadier per-core figure). The data were just written, so they are read from the page cache: a cold disk
adds its latency.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import psutil

STARTED = psutil.Process().create_time()  # wall-clock start of this process: start-up counts imports

import tensorflow as tf  # noqa: E402

from vision_jax.data import pipeline  # noqa: E402
from vision_jax.data.sources import SOURCES  # noqa: E402
from vision_jax.data.views import AUGMENTATIONS  # noqa: E402

IMPORTED = time.time()
DATASET = "vj_bench_large"
NUM_CLASSES = 1000
TRAIN_PP = "decode|random_resized_crop(224)|flip_lr|value_range(-1, 1)"
CASES = ("array_record", "grain_thread", "grain_process", "folder_listing", "folder", "folder_validate", "in_memory")
STARTUP_ONLY = ("folder_listing", "folder_validate")


# --- the data ---------------------------------------------------------------------------------------


def make_dataset(root: str, count: int, size: tuple[int, int], noise: float, pictures: list[np.ndarray]) -> dict:
    """Writes root/folder/train/<class>/<i>.jpg and the tfds dataset DATASET in root/tfds once;
    later calls read what the first one recorded in root/ready.json."""
    ready = os.path.join(root, "ready.json")
    if os.path.isfile(ready):
        with open(ready) as f:
            made = json.load(f)
        if made["count"] == count and tuple(made["size"]) == tuple(size):
            return {**made, "cached": True}
    import tensorflow_datasets as tfds
    from PIL import Image

    shutil.rmtree(root, ignore_errors=True)
    width, height = size
    bank = np.random.default_rng(0).normal(0.0, noise, (64, height, width, 3)).astype(np.float32)

    def jpeg(i: int) -> bytes:
        big = np.asarray(Image.fromarray(pictures[i % len(pictures)]).resize(size, Image.BICUBIC), np.float32)
        noisy = np.clip(np.round(big + bank[(i * 7) % len(bank)]), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    sizes = []

    def encoded():
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
            for begin in range(0, count, 4096):  # PIL encodes outside the GIL; 4,096 futures at a time
                yield from pool.map(jpeg, range(begin, min(count, begin + 4096)))

    def examples():
        for i, data in enumerate(encoded()):
            label = i % NUM_CLASSES
            path = os.path.join(root, "folder", "train", f"c{label:04d}", f"{i:07d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            sizes.append(len(data))
            if (i + 1) % 20000 == 0:
                print(f"  {i + 1} / {count} JPEGs written", flush=True)
            yield i, {"image": data, "label": label}

    start = time.perf_counter()
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(height, width, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)})
    tfds.dataset_builders.store_as_tfds_dataset(
        name=DATASET, version="1.0.0", features=features, split_datasets={"train": examples()},
        data_dir=os.path.join(root, "tfds"), file_format="array_record", disable_shuffling=True,
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    made = {"count": count, "size": list(size), "mean_kb": float(np.mean(sizes)) / 1e3,
            "seconds": time.perf_counter() - start}
    with open(ready, "w") as f:
        json.dump(made, f)
    return {**made, "cached": False}


# --- one case, in this process ---------------------------------------------------------------------------


class GrainExample:
    """grain's per-element function for the peer: slot -> the tfds source's load and the recipe,
    traced once per process as one tf.function (the same ops as the tf.data pipeline)."""

    def __init__(self, data_dir: str, seed: int = 0):
        self.data_dir, self.seed, self._fn = data_dir, seed, None

    def __getstate__(self):  # worker processes build their own tf.function
        return {"data_dir": self.data_dir, "seed": self.seed, "_fn": None}

    def __call__(self, slot: int) -> dict:
        if self._fn is None:
            one_thread_per_op()  # in a worker process: before its first TensorFlow op
            source = SOURCES.build("tfds", {"dataset": DATASET, "data_dir": self.data_dir}, split="train",
                                   image_size=0)
            augment = AUGMENTATIONS.build("pp", {"spec": TRAIN_PP})

            @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
            def example(slot):
                loaded = source.load(pipeline.example_index(slot, source.num_examples, self.seed))
                out = augment(loaded["image"], tf.stack([tf.constant(self.seed, tf.int64), slot]))
                return {**out, "label": loaded["label"]}

            self._fn = example
        return {k: v.numpy() for k, v in self._fn(tf.constant(slot, tf.int64)).items()}


def one_thread_per_op() -> None:
    """TensorFlow ops outside tf.data on one thread, as tf.data's are here (max_intra_op_parallelism=1)."""
    if tf.config.threading.get_intra_op_parallelism_threads() != 1:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def batches(case: str, root: str, batch: int, in_memory_examples: int):
    """The case's iterator of batches, with its loader held to one thread or process."""
    tfds_dir, folder = os.path.join(root, "tfds"), os.path.join(root, "folder")
    if case.startswith("grain"):
        import grain
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # grain reads absl flags; this process parsed none
        one_thread_per_op()
        dataset = grain.MapDataset.range(0, 1 << 40).map(GrainExample(tfds_dir)).batch(batch, drop_remainder=True)
        if case == "grain_thread":
            return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2 * batch)))
        return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=batch)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=1, per_worker_buffer_size=2)))
    if case in ("array_record", "in_memory"):
        options = {"dataset": DATASET, "data_dir": tfds_dir, "in_memory": case == "in_memory"}
        split = f"train[:{in_memory_examples}]" if case == "in_memory" else "train"
        source = SOURCES.build("tfds", options, split=split, image_size=0)
    else:
        cache = os.path.join(root, "listing_cache")
        if case != "folder":  # nothing cached yet
            shutil.rmtree(cache, ignore_errors=True)
        options = {"root": folder, "validate": case == "folder_validate", "listing_cache": cache}
        source = SOURCES.build("image_folder", options, split="train", image_size=0)
    dataset = pipeline.train_dataset(source, AUGMENTATIONS.build("pp", {"spec": TRAIN_PP}), global_batch=batch,
                                     seed=0, start_step=0)
    threads = tf.data.Options()
    threads.threading.private_threadpool_size = 1
    threads.threading.max_intra_op_parallelism = 1
    return dataset.with_options(threads).as_numpy_iterator()


def this_process_and_workers() -> list[psutil.Process]:
    """This process and its live children (grain's worker process, when there is one)."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def cpu_seconds() -> float:
    """CPU time of this process and its workers: unlike wall time, what other work on the machine
    takes does not count."""
    return sum(p.cpu_times().user + p.cpu_times().system for p in this_process_and_workers())


def measure(case: str, root: str, batch: int, steps: int, in_memory_examples: int) -> dict:
    iterator = batches(case, root, batch, in_memory_examples)
    next(iterator)
    result = {"case": case, "import_s": IMPORTED - STARTED, "startup_s": time.time() - STARTED}
    if case not in STARTUP_ONLY:
        warmup = max(1, steps // 10)
        for step in range(1, steps):
            if step == warmup:
                timed_from, cpu_from = time.perf_counter(), cpu_seconds()
            next(iterator)
        images = (steps - warmup) * batch
        result["images_per_s"] = images / (time.perf_counter() - timed_from)
        result["images_per_cpu_s"] = images / (cpu_seconds() - cpu_from)
        result["steps"] = steps
    result["rss_mb"] = sum(p.memory_info().rss for p in this_process_and_workers()) / 2**20
    return result


# --- all cases, each in a fresh process -------------------------------------------------------------------


def run(root: str, batch: int, steps: int, grain_steps: int, in_memory_examples: int, repeats: int) -> dict:
    """case -> its measurements, one per round; the rounds go through every case in turn, so a
    change in the machine's load touches all cases alike."""
    cases = CASES if importlib.util.find_spec("grain") else [c for c in CASES if not c.startswith("grain")]
    if len(cases) < len(CASES):
        print("  grain is not installed (pip install -c constraints.txt grain): its rows are left out", flush=True)
    results = {case: [] for case in cases}
    for round_ in range(repeats):
        for case in cases:
            case_steps = grain_steps if case.startswith("grain") else steps
            command = [sys.executable, os.path.abspath(__file__), f"--case={case}", f"--root={root}",
                       f"--batch={batch}", f"--steps={case_steps}", f"--in_memory_examples={in_memory_examples}"]
            load = os.getloadavg()[0]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
            if done.returncode != 0:
                raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
            result = {**json.loads(done.stdout.strip().splitlines()[-1]), "load": load}
            print(f"  round {round_ + 1}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()), flush=True)
            results[case].append(result)
    return results


def main():
    parser = argparse.ArgumentParser(description="One case of the large input benchmark (run by input_pipeline.py)")
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--in_memory_examples", type=int, default=20000)
    args = parser.parse_args()
    tf.config.set_visible_devices([], "GPU")
    print(json.dumps(measure(args.case, args.root, args.batch, args.steps, args.in_memory_examples)), flush=True)
    os._exit(0)  # grain's worker and tf.data's threads need no orderly shutdown here


if __name__ == "__main__":
    main()
