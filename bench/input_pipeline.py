"""Host input-pipeline throughput on this machine: images/s per CPU core for the tf.data recipes.

Each host pipeline is timed twice, with tf.data held to one thread (the per-core rate:
`threading.private_threadpool_size = 1`, `max_intra_op_parallelism = 1`) and with every core:
  1. simclr_cifar10: SimCLR's two views of CIFAR-10, read from the shared zip with the source and
     recipe of configs/simclr_cifar10.py;
  2. dino_multicrop: DINO multi-crop, 2 x 224 + 8 x 96 (views 'dino', defaults), from
     ImageNet-sized JPEGs;
  3. imagenet_train: decode + random_resized_crop(224) + flip (the ResNet-50 recipe), same JPEGs;
  4. imagenet_eval: decode, resize the short side to 256, central crop 224, same JPEGs;
     imagenet_decode: decode and a central 224 crop without resizing (the decode's share);
  5. cifar_eval: the 'none' recipe at 32 px (decode, scale), as the CIFAR config evaluates.
Then, for comparison, the jitted on-device 'simclr' recipe (data/device_augment.py) on 256
CIFAR images, and the fraction of train-step time spent waiting for data in the CIFAR ResNet-18
SimCLR recipe at a small batch.

There are no ImageNet JPEGs on this machine, so the bench makes some at start in a temp dir:
CIFAR images upscaled (PIL bicubic) to --jpeg_size plus Gaussian noise (--noise, in 8-bit levels;
it adds the high-frequency content that upscaling lacks), saved as JPEG quality 90. Decode cost
grows with size and entropy, so the mean file size is printed; ILSVRC-2012's training images
average about 110 KB (~140 GB / 1.28 M files) at about 400 x 350 px.

The host pipelines are built here from the same pieces as pipeline.train_batches (counter ->
index_shuffle -> source.load -> augment with stateless seed (seed, slot) -> batch -> prefetch),
so the thread options can be set; the eval recipes go through that graph too (the work per
example is the one eval_batches does). Protocol: --warmup_batches untimed, then batches until
--seconds have passed; images/s counts source images (a DINO image is 10 crops).

    PYTHONPATH=. python bench/input_pipeline.py
    PYTHONPATH=. python bench/input_pipeline.py --seconds=3 --num_jpegs=128 --steps=2   # quicker

Figures are noisy when other work shares the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import tempfile
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from vision_jax import config as config_lib
from vision_jax import parallel, trainer
from vision_jax.data import pipeline
from vision_jax.data.device_augment import DEVICE_AUGMENTATIONS
from vision_jax.data.sources import SOURCES, Source, build_source
from vision_jax.data.views import AUGMENTATIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_CONFIG = os.path.join(REPO, "configs", "simclr_cifar10.py")
SHARED_ZIP = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "cifar10", "cifar10_train_jpeg.zip"))
CORES = len(os.sched_getaffinity(0))

# bf16 ResNet-50 training on one H100 runs at about 3,000 images/s (the figure issue 3 plans for).
H100_RESNET50_IMAGES_PER_S = 3000
IMAGENET_MEAN_KB = 110  # ILSVRC-2012 train: ~140 GB over 1,281,167 JPEGs
IMAGENET_TRAIN_PP = "decode|random_resized_crop(224)|flip_lr|value_range(-1, 1)"
IMAGENET_EVAL_PP = "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"
# Decode and a plain crop, no resampling: the decode's share of the two recipes above.
IMAGENET_DECODE_PP = "decode|central_crop(224)|value_range(-1, 1)"


@dataclasses.dataclass
class Row:
    name: str
    data: str
    output: str
    one_thread: float | None = None  # images/s
    all_cores: float | None = None


# --- inputs --------------------------------------------------------------------------------------


def cifar_pictures(zip_path: str | None, count: int) -> tuple[list[tuple[str, np.ndarray]], str]:
    """`count` (class, uint8 32x32x3) pictures, spread over the classes of the CIFAR zip; without
    the zip, smooth random colour fields (upscaled 4x4 noise) stand in."""
    from PIL import Image

    if zip_path:
        with zipfile.ZipFile(zip_path) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(".jpg"))
            picked = names[:: max(1, len(names) // count)][:count]  # sorted by class: every class
            return [(n.split("/")[1], np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")))
                    for n in picked], "CIFAR-10 images"
    rs = np.random.default_rng(0)
    pictures = [(f"c{i % 10}", np.asarray(Image.fromarray(rs.integers(0, 256, (4, 4, 3), dtype=np.uint8))
                                          .resize((32, 32), Image.BICUBIC))) for i in range(count)]
    return pictures, "smooth random colour fields (no CIFAR zip)"


def make_imagenet_like_jpegs(root: str, pictures, size: tuple[int, int], noise: float) -> dict:
    """Writes root/train/<class>/<i>.jpg: each picture upscaled to size (w, h), plus noise, q=90."""
    from PIL import Image

    rs = np.random.default_rng(0)
    sizes = []
    for i, (label, picture) in enumerate(pictures):
        big = np.asarray(Image.fromarray(picture).resize(size, Image.BICUBIC), np.float32)
        big = np.clip(np.round(big + rs.normal(0.0, noise, big.shape)), 0, 255).astype(np.uint8)
        folder = os.path.join(root, "train", label)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(big).save(path, "JPEG", quality=90)
        sizes.append(os.path.getsize(path))
    return {"count": len(sizes), "mean_kb": float(np.mean(sizes)) / 1e3}


# --- host pipelines --------------------------------------------------------------------------------


def host_dataset(source: Source, augment, batch: int, threads: int | None, seed: int = 0) -> tf.data.Dataset:
    """pipeline.train_batches' graph for one process (same order, seeds and ops), with tf.data
    held to `threads` threads (None: tf.data's defaults, every core)."""
    num_examples = source.num_examples

    @tf.autograph.experimental.do_not_convert
    def example(slot):
        epoch, within = slot // num_examples, slot % num_examples
        index = tf.random.experimental.index_shuffle(
            within, seed=tf.stack([tf.constant(-seed - 1, tf.int64), epoch]), max_index=num_examples - 1)
        loaded = source.load(index)
        out = augment(loaded["image"], tf.stack([tf.constant(seed, tf.int64), slot]))
        out["label"] = loaded["label"]
        return out

    options = pipeline.pipeline_options()
    if threads is not None:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return (tf.data.Dataset.counter()
            .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch, drop_remainder=True)
            .prefetch(2)
            .with_options(options))


def images_per_s(dataset: tf.data.Dataset, batch: int, warmup_batches: int, seconds: float) -> float:
    batches = dataset.as_numpy_iterator()
    for _ in range(warmup_batches):  # tracing, first file reads, thread start-up
        next(batches)
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        next(batches)
        count += 1
    return count * batch / (time.perf_counter() - start)


def time_host(row: Row, source: Source, augment, batch: int, args) -> Row:
    for threads in (1, None):
        rate = images_per_s(host_dataset(source, augment, batch, threads), batch, args.warmup_batches, args.seconds)
        if threads == 1:
            row.one_thread = rate
        else:
            row.all_cores = rate
        print(f"  {row.name:<16} {'1 thread' if threads else f'{CORES} cores':>9}: {rate:8.1f} images/s",
              flush=True)
    return row


# --- on-device augmentation -----------------------------------------------------------------------


def time_device_simclr(pictures, batch: int) -> float:
    """Median images/s of the jitted device 'simclr' recipe (CIFAR defaults) on `batch` 32x32 images."""
    images = np.stack([p for _, p in pictures][:batch])
    images = np.concatenate([images] * -(-batch // len(images)))[:batch]
    augment = jax.jit(DEVICE_AUGMENTATIONS.build("simclr", {}))
    data = {"image": jnp.asarray(images, jnp.float32) / 127.5 - 1.0}
    key = jax.random.key(0)
    jax.block_until_ready(augment(data, key))  # compile
    times = []
    for i in range(7):
        start = time.perf_counter()
        jax.block_until_ready(augment(data, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - start)
    return batch / sorted(times[2:])[len(times[2:]) // 2]


# --- data wait in the train loop ------------------------------------------------------------------


def data_wait(config, warmup_steps: int, steps: int) -> dict:
    """The trainer's loop (train_batches -> prefetch_to_device -> compiled step) with each step
    waited on: time blocked in next(batches) vs time in the step."""
    workdir = tempfile.mkdtemp(prefix="bench_input_pipeline_")
    try:
        run = trainer.Run(config, workdir)
        state = run.init_state()
        batches = pipeline.train_batches(run.train_source, run.augment, global_batch=config.batch_size,
                                         seed=config.seed, start_step=0, prefetch=config.data.prefetch,
                                         batch_transform=run.batch_transform)
        batches = parallel.prefetch_to_device(batches, parallel.batch_sharding(run.mesh))
        first = next(batches)
        start = time.perf_counter()
        step_fn = run.compile_step().lower(state, first).compile()
        compile_s = time.perf_counter() - start
        state, _ = jax.block_until_ready(step_fn(state, first))
        waits, step_times = [], []
        for i in range(warmup_steps + steps):
            start = time.perf_counter()
            batch = next(batches)
            got = time.perf_counter()
            state, metrics = jax.block_until_ready(step_fn(state, batch))
            if i >= warmup_steps:
                waits.append(got - start)
                step_times.append(time.perf_counter() - got)
            print(f"  step {i + 1}{' (warm-up)' if i < warmup_steps else ''}: data {(got - start) * 1e3:.1f} ms, "
                  f"step {time.perf_counter() - got:.2f} s, loss {float(metrics['loss']):.3f}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wait, step = float(np.mean(waits)), float(np.mean(step_times))
    return {"compile_s": compile_s, "wait_s": wait, "step_s": step, "fraction": wait / (wait + step),
            "consumed": config.batch_size / (wait + step)}


# --- main ------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar_zip", default=SHARED_ZIP, help="CIFAR-10 JPEG zip (train/<class>/*.jpg)")
    parser.add_argument("--num_jpegs", type=int, default=256, help="ImageNet-sized JPEGs to make")
    parser.add_argument("--jpeg_size", type=parse_size, default=(400, 350), help="their width x height")
    parser.add_argument("--noise", type=float, default=20.0, help="Gaussian noise std added, in 8-bit levels")
    parser.add_argument("--cifar_batch", type=int, default=128)
    parser.add_argument("--imagenet_batch", type=int, default=16)
    parser.add_argument("--warmup_batches", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per pipeline and thread count")
    parser.add_argument("--device_batch", type=int, default=256)
    parser.add_argument("--step_batch", type=int, default=32, help="global batch of the data-wait run")
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of the data-wait run (0: skip it)")
    args = parser.parse_args()
    tf.config.set_visible_devices([], "GPU")  # as pipeline.py: the host pipeline stays on the CPU
    wall_start = time.perf_counter()

    zip_path = args.cifar_zip if os.path.isfile(args.cifar_zip) else None
    if not zip_path:
        print(f"CIFAR-10 zip {args.cifar_zip} not found: skipping the CIFAR pipelines and the data-wait run "
              f"(pass --cifar_zip=PATH).")
    pictures, picture_kind = cifar_pictures(zip_path, max(args.num_jpegs, args.device_batch))
    print(f"machine: {CORES} CPU cores, jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"tensorflow {tf.__version__}", flush=True)

    rows: list[Row] = []
    tmp = tempfile.mkdtemp(prefix="bench_jpegs_")
    try:
        width, height = args.jpeg_size
        jpegs = make_imagenet_like_jpegs(tmp, pictures[:args.num_jpegs], args.jpeg_size, args.noise)
        jpeg_data = f"{jpegs['count']} JPEGs {width}x{height}, {jpegs['mean_kb']:.0f} KB"
        print(f"made {jpegs['count']} ImageNet-sized JPEGs in {tmp}: {picture_kind} upscaled (PIL bicubic) to "
              f"{width}x{height}, noise std {args.noise:g} levels, quality 90; mean file size "
              f"{jpegs['mean_kb']:.1f} KB (ILSVRC-2012 train averages ~{IMAGENET_MEAN_KB} KB)", flush=True)
        imagenet = SOURCES.build("image_folder", {"root": tmp}, split="train", image_size=0)

        cifar_config = None
        if zip_path:
            cifar_config = config_lib.load_config(f"{CIFAR_CONFIG}:data_root={zip_path}")
            data = cifar_config.data
            cifar = build_source(data.source, data.train_split, data.image_size)
            simclr = AUGMENTATIONS.build(data.augment.name, {k: v for k, v in data.augment.items() if k != "name"})
            print("timing host pipelines", flush=True)
            rows.append(time_host(Row("simclr_cifar10", f"CIFAR-10 zip, {cifar.num_examples} JPEGs 32x32",
                                      "2 views 32 px"), cifar, simclr, args.cifar_batch, args))
        else:
            print("timing host pipelines", flush=True)
        rows.append(time_host(Row("dino_multicrop", jpeg_data, "2x224 + 8x96 crops"), imagenet,
                              AUGMENTATIONS.build("dino", {}), args.imagenet_batch, args))
        rows.append(time_host(Row("imagenet_train", jpeg_data, "rrc 224 + flip"), imagenet,
                              AUGMENTATIONS.build("pp", {"spec": IMAGENET_TRAIN_PP}), args.imagenet_batch, args))
        rows.append(time_host(Row("imagenet_eval", jpeg_data, "short side 256, centre 224"), imagenet,
                              AUGMENTATIONS.build("pp", {"spec": IMAGENET_EVAL_PP}), args.imagenet_batch, args))
        rows.append(time_host(Row("imagenet_decode", jpeg_data, "centre 224, no resize"), imagenet,
                              AUGMENTATIONS.build("pp", {"spec": IMAGENET_DECODE_PP}), args.imagenet_batch, args))
        if zip_path:
            rows.append(time_host(Row("cifar_eval", "CIFAR-10 zip, 32x32", "'none' at 32 px"), cifar,
                                  AUGMENTATIONS.build("none", {}), args.cifar_batch, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("timing the on-device 'simclr' recipe", flush=True)
    device_rate = time_device_simclr(pictures, args.device_batch)
    rows.append(Row("device simclr", f"{args.device_batch} images 32x32 in memory", "2 views 32 px (jitted)",
                    None, device_rate))
    print(f"  device simclr: {device_rate:.1f} images/s", flush=True)

    wait = None
    if cifar_config is not None and args.steps > 0:
        print(f"timing data wait: configs/simclr_cifar10.py, batch {args.step_batch}", flush=True)
        config = config_lib.load_config(f"{CIFAR_CONFIG}:data_root={zip_path}", [
            f"batch_size={args.step_batch}", f"total_steps={args.warmup_steps + args.steps + 10}",
            "optimizer.warmup_steps=1", "checkpoint.every_steps=100000", "checkpoint.use_async=False"])
        wait = data_wait(config, args.warmup_steps, args.steps)

    print(f"\nInput pipeline throughput ({CORES}-core CPU; images/s counts source images; "
          f"'1 thread' = tf.data on one thread = per core)\n")
    print(f"| pipeline | data | output per image | 1 thread (images/s) | all {CORES} cores (images/s) "
          f"| per core at {CORES} cores |")
    print("|---|---|---|---:|---:|---:|")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    for r in rows:
        per_core = None if r.all_cores is None else r.all_cores / CORES
        label = f"{r.name} (this CPU, {CORES} cores)" if r.one_thread is None else r.name
        print(f"| {label} | {r.data} | {r.output} | {fmt(r.one_thread)} | {fmt(r.all_cores)} | {fmt(per_core)} |")

    by_name = {r.name: r for r in rows}
    print()
    if wait:
        pipe = by_name["simclr_cifar10"]
        print(f"Data wait, CIFAR ResNet-18 SimCLR (configs/simclr_cifar10.py, batch {args.step_batch}; trainer loop "
              f"train_batches -> prefetch_to_device -> compiled step, each step waited on; mean of {args.steps} "
              f"steps after {args.warmup_steps} warm-up): next(batches) {wait['wait_s'] * 1e3:.1f} ms, step "
              f"{wait['step_s']:.2f} s -> {100 * wait['fraction']:.2f}% of step time waiting for data "
              f"(compile {wait['compile_s']:.0f} s).")
        print(f"Pipeline vs step: the step consumes {wait['consumed']:.1f} images/s; the host SimCLR pipeline "
              f"gives {pipe.all_cores:.0f} images/s on {CORES} cores ({pipe.one_thread:.0f} on one), "
              f"{pipe.all_cores / wait['consumed']:.0f}x what the step eats: on this CPU the input is not "
              f"the bottleneck; the pipeline needs ~{100 * wait['consumed'] / pipe.one_thread:.1f}% of one core.")
    train = by_name["imagenet_train"]
    print(f"Cores per H100 (bf16 ResNet-50, ~{H100_RESNET50_IMAGES_PER_S} images/s): decode + "
          f"random_resized_crop(224) + flip runs at {train.one_thread:.0f} images/s per core here "
          f"({jpeg_data}), so ~{H100_RESNET50_IMAGES_PER_S / train.one_thread:.0f} cores per H100 "
          f"(~{H100_RESNET50_IMAGES_PER_S / (train.all_cores / CORES):.0f} from the {CORES}-core rate per core); "
          f"real ImageNet files (~{IMAGENET_MEAN_KB} KB) decode slower, so count that as a lower bound.")
    dino = by_name["dino_multicrop"]
    print(f"DINO multi-crop at {dino.one_thread:.1f} images/s per core needs "
          f"~{H100_RESNET50_IMAGES_PER_S / dino.one_thread:.0f} cores per 3,000 images/s.")
    if "simclr_cifar10" in by_name:
        host = by_name["simclr_cifar10"]
        print(f"On-device SimCLR views: {device_rate:.0f} images/s on this CPU ({CORES} cores) vs "
              f"{host.all_cores:.0f} for the host recipe on the same cores.")
    print(f"\nwall time {time.perf_counter() - wall_start:.0f} s")


if __name__ == "__main__":
    main()
