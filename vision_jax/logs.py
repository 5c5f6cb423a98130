"""Where metrics go: console progress (console.py), TensorBoard event files (scalars, pictures,
the results table as text, the config as hparams) and a JSONL file in the workdir.

Only process 0 writes; the others stay quiet.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import tensorflow as tf  # the event-file writer; tf is already the input pipeline's
from tensorboard.plugins.hparams import api as hparams_api

from vision_jax import console
from vision_jax.pictures import write_png


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricLogger:
    def __init__(self, workdir: str, total_steps: int):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._tensorboard = None
        self._bar = None  # the training progress bar, from the first `advance`
        if self.enabled:
            self._tensorboard = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def forget_after(self, step: int) -> None:
        """Drops JSONL records past `step`: a resumed run rewrites the steps after its checkpoint,
        and each step must appear once (TensorBoard shows the newest event file's values)."""
        if not self.enabled or not os.path.exists(self.jsonl_path):
            return
        with open(self.jsonl_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.jsonl_path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.jsonl_path + ".tmp", self.jsonl_path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Appends one JSONL record and TensorBoard scalars (keys like 'train/loss')."""
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        with self._tensorboard.as_default(step=step):
            for key, value in metrics.items():
                tf.summary.scalar(key, float(value))
        self._tensorboard.flush()

    def write_pictures(self, step: int, pictures: dict[str, np.ndarray]) -> None:
        """HWC uint8 pictures as WORKDIR/pictures/<name>_step<step>.png and TensorBoard images ('pictures/<name>')."""
        if not self.enabled or not pictures:
            return
        with self._tensorboard.as_default(step=step):
            for name, picture in pictures.items():
                write_png(os.path.join(self.workdir, "pictures", f"{name}_step{step:06d}.png"), picture)
                tf.summary.image(f"pictures/{name}", picture[None])
        self._tensorboard.flush()

    def write_text(self, step: int, name: str, markdown: str) -> None:
        """A TensorBoard text summary (its Text tab renders Markdown, tables included)."""
        if not self.enabled:
            return
        with self._tensorboard.as_default(step=step):
            tf.summary.text(name, markdown)
        self._tensorboard.flush()

    def write_hparams(self, config: dict) -> None:
        """The config, flattened to 'optimizer.lr'-style keys, as TensorBoard hparams (HParams tab)."""
        if not self.enabled:
            return
        with self._tensorboard.as_default():
            hparams_api.hparams(flat_hparams(config), trial_id=os.path.abspath(self.workdir))
        self._tensorboard.flush()

    def advance(self, step: int) -> None:
        """Moves the training bar (a terminal only, console.py) to `step`, just finished."""
        if self._bar is None:
            self._bar = console.bar(total=self.total_steps, initial=step - 1, description="train",
                                    enabled=self.enabled)
        self._bar.update(step - self._bar.n)

    def end_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def progress(self, step: int, loss: float, images_per_s: float, seconds_per_step: float) -> None:
        if not self.enabled:
            return
        eta = _format_duration((self.total_steps - step) * seconds_per_step)
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f}, {images_per_s:.1f} images/s", refresh=False)
        console.echo(f"step {step}/{self.total_steps}  loss {loss:.4f}  {images_per_s:.1f} images/s  ETA {eta}")

    def info(self, message: str) -> None:
        if self.enabled:
            console.echo(message)


def flat_hparams(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """{'optimizer.lr': 0.002, 'model.widths': '(8, 16)', ...}: the values TensorBoard's hparams take
    (bool, int, float, str); tuples, lists and None as their text."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(tuple(value) if isinstance(value, list) else value)
    return flat


class CollapseMonitor:
    """Warns once when a method's logged 'embedding_std_ratio' (methods/base.py `embedding_spread`:
    ~1 for spread embeddings, 0 at collapse) falls below `threshold`."""

    def __init__(self, logger: MetricLogger, threshold: float = 0.1):
        self.logger, self.threshold, self.warned = logger, threshold, False

    def observe(self, step: int, summary: dict[str, float]) -> None:
        ratio = summary.get("train/embedding_std_ratio")
        if ratio is None or self.warned or ratio >= self.threshold:
            return
        self.warned = True
        self.logger.info(f"warning: the embeddings are collapsing at step {step}: their std over the batch is "
                         f"{ratio:.3f} of a spread embedding's 1/sqrt(d) (train/embedding_std_ratio). Check the "
                         f"views, the learning rate and, for EMA methods, the momentum schedule.")
