"""tf.data pipelines that turn a Source into per-process numpy batches.

Training order is a pure function of (seed, step): global example slot `g = step * B + j`
(B the global batch, j in [0, B)) holds example `shuffle_epoch(g // N)[g % N]`, a Feistel-style
permutation of the N examples drawn fresh each epoch (`tf.random.experimental.index_shuffle`),
augmented with the stateless seed (seed, g). Process p of P builds slots j in
[p * B/P, (p+1) * B/P) of every global batch, so processes see disjoint examples, and the global
batch is the same whatever the process count. Resuming at step k needs nothing but k: no
iterator state, no replay.

We do not use `tfds.split_for_jax_process` for training, because splitting the data per process
would make the global batch (and so the run) depend on how many processes there are.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from vision_jax.data.sources import Source
from vision_jax.errors import ConfigError, DataError

# tf.data runs on the host; keep TensorFlow off any accelerator so JAX owns its memory.
tf.config.set_visible_devices([], "GPU")


def pipeline_options() -> tf.data.Options:
    """Options of every pipeline here: deterministic order, and no tf.data autotuning.

    With autotuning on, deleting an endless training iterator (which every run does at its end)
    blocked for up to 5.6 s after 15 s of iteration and 27-60 s after a 4-minute main job
    (TF 2.21, 2 cores); with it off, 0.2-0.4 s. No measurable loss: map parallelism (AUTOTUNE)
    then takes TF's default and the prefetch depths are set explicitly. On 2 cores the main
    job's digits pipeline gave 2,535-2,786 examples/s without autotuning vs 2,203-2,446 with it,
    and the SimCLR CIFAR zip pipeline 1,450 vs 1,495.
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return options


def train_batches(source: Source, augment: Callable, *, global_batch: int, seed: int, start_step: int,
                  process_index: int = 0, process_count: int = 1, prefetch: int = 2,
                  batch_transform: Callable | None = None) -> Iterator[dict]:
    """Endless iterator of this process's slice of each global training batch from `start_step`.

    `batch_transform(batch, seed)` (e.g. mixup from `pp.parse_batch`) runs on each local batch
    with the stateless seed (seed, step, process index). It mixes examples within this process's
    slice, so unlike the per-example randomness its result depends on the process count.
    """
    return _numpy_batches(train_dataset(source, augment, global_batch=global_batch, seed=seed, start_step=start_step,
                                        process_index=process_index, process_count=process_count, prefetch=prefetch,
                                        batch_transform=batch_transform))


def train_dataset(source: Source, augment: Callable, *, global_batch: int, seed: int, start_step: int,
                  process_index: int = 0, process_count: int = 1, prefetch: int = 2,
                  batch_transform: Callable | None = None) -> tf.data.Dataset:
    """The tf.data pipeline behind `train_batches` (benchmarks time it with other thread options)."""
    local_batch = _local_batch(global_batch, process_count)
    num_examples = source.num_examples

    @tf.autograph.experimental.do_not_convert  # plain graph code; autograph only adds warnings
    def example(local_counter):
        slot = _global_slot(local_counter, local_batch, global_batch, process_index)
        loaded = source.load(example_index(slot, num_examples, seed))
        out = augment(loaded["image"], tf.stack([tf.constant(seed, tf.int64), slot]))
        out["label"] = loaded["label"]
        return out

    dataset = (tf.data.Dataset.counter(start_step * local_batch)
               .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(local_batch, drop_remainder=True))
    if batch_transform is not None:
        @tf.autograph.experimental.do_not_convert
        def transform(step, batch):
            # Per-example seeds are (seed, slot >= 0); batch seeds fold (step, process) into
            # (seed, -2), a stream of their own.
            batch_seed = tf.random.experimental.stateless_fold_in(
                tf.constant([seed, -2], tf.int64), step * process_count + process_index)
            return batch_transform(batch, batch_seed)

        dataset = dataset.enumerate(start_step).map(transform, num_parallel_calls=tf.data.AUTOTUNE,
                                                    deterministic=True)
    return dataset.prefetch(prefetch).with_options(pipeline_options())


def eval_batches(source: Source, preprocess: Callable, *, global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
    """One pass over every example, in order, with the last global batch padded.

    Each batch has a 'mask' (1 for real examples, 0 for padding) that evaluators must honour.
    """
    local_batch = _local_batch(global_batch, process_count)
    num_examples = source.num_examples
    num_steps = math.ceil(num_examples / global_batch)

    @tf.autograph.experimental.do_not_convert  # plain graph code; autograph only adds warnings
    def example(local_counter):
        slot = _global_slot(local_counter, local_batch, global_batch, process_index)
        loaded = source.load(tf.minimum(slot, num_examples - 1))
        out = preprocess(loaded["image"], tf.zeros([2], tf.int64))
        out["label"] = loaded["label"]
        out["mask"] = tf.cast(slot < num_examples, tf.float32)
        return out

    dataset = (tf.data.Dataset.range(num_steps * local_batch)
               .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(local_batch)
               .prefetch(2)
               .with_options(pipeline_options()))
    return _numpy_batches(dataset)


def example_index(slot: tf.Tensor, num_examples: int, seed: int) -> tf.Tensor:
    """The example that global slot `slot` holds: position `slot % N` of epoch `slot // N`'s permutation."""
    epoch, within = slot // num_examples, slot % num_examples
    return tf.random.experimental.index_shuffle(
        within, seed=tf.stack([tf.constant(-seed - 1, tf.int64), epoch]), max_index=num_examples - 1)


def _numpy_batches(dataset: tf.data.Dataset) -> Iterator[dict]:
    """The dataset's elements as numpy. A DataError raised inside the pipeline (too many
    unreadable images, say) reaches tf.data's caller as an InvalidArgumentError carrying its
    text; it is raised again as the DataError, so the command line prints the one-line message."""
    iterator = dataset.as_numpy_iterator()
    while True:
        try:
            element = next(iterator)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as error:
            raised = re.search(r"\bDataError: (.*)", error.message)
            if raised is None:
                raise
            raise DataError(raised.group(1)) from None
        yield element


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ConfigError(f"Global batch {global_batch} is not divisible by {process_count} processes.")
    return global_batch // process_count


def _global_slot(local_counter: tf.Tensor, local_batch: int, global_batch: int, process_index: int) -> tf.Tensor:
    """This process's `local_counter`-th example is slot j of its share of global batch `step`."""
    step, j = local_counter // local_batch, local_counter % local_batch
    return step * global_batch + process_index * local_batch + j


def num_eval_batches(source: Source, global_batch: int) -> int:
    return math.ceil(source.num_examples / global_batch)


def stack_all(batches: Iterator[dict]) -> dict[str, np.ndarray]:
    """Concatenates an iterator of batches (handy for small evaluation sets and tests)."""
    batches = list(batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
