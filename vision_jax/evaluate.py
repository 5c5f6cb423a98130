"""Run a recipe's evaluators on the latest checkpoint in a workdir and print the results table:

    python -m vision_jax.evaluate --config=configs/simclr_digits.py --workdir=/tmp/simclr_digits
    # Any split: the evaluators score config.data.eval_test_split (and probes fit on eval_train_split):
    python -m vision_jax.evaluate --config=/tmp/simclr_digits/config.json --workdir=/tmp/simclr_digits \
        --config.data.eval_test_split='train[:100]'

The table is also written to WORKDIR/eval_results_step<N>_<split>.json (one file per step and split).

An installed package has the same as a command: `vision-jax-evaluate --config=... --workdir=...`.
"""
import functools
import json
import os
import re
from typing import TYPE_CHECKING

import jax
from absl import app

from vision_jax import cli
from vision_jax import config as config_lib
from vision_jax.errors import ConfigError, MissingDataError

if TYPE_CHECKING:  # the trainer pulls in TensorFlow and flax: imported on use below
    from vision_jax.trainer import Run


def restore(config, workdir: str) -> tuple["Run", dict]:
    """(the `trainer.Run` that `config` describes, the state of the latest checkpoint in `workdir`),
    read-only: a training run may be writing this workdir (no lock taken, nothing cleaned up).
    For notebooks and scripts that look inside a run: its features (`run.eval_data()`), outputs, pictures."""
    from vision_jax import checkpoint, trainer

    checkpointer = checkpoint.Checkpointer(workdir, every_steps=0, keep=1, read_only=True)
    try:
        if checkpointer.latest_step() is None:
            raise MissingDataError(f"No checkpoint in {checkpointer.directory}: train first with "
                                   f"python -m vision_jax.train --config=... --workdir={workdir}")
        run = trainer.Run(config, workdir)
        return run, run.restore_or_init(checkpointer)
    finally:
        checkpointer.close()


def evaluate(config, workdir: str) -> dict[str, dict[str, float]]:
    from vision_jax.evaluators.report import format_table

    if not config.evaluators:
        raise ConfigError("The config names no evaluators (config.evaluators); add e.g. "
                         "config.evaluators.knn = dict(k=20).")
    run, state = restore(config, workdir)
    step = int(state["step"])
    results = run.evaluate(state, with_baselines=True)
    if jax.process_index() == 0:
        print(format_table(results, run.results_caption(step)), flush=True)
        with open(os.path.join(workdir, results_file_name(step, config.data.eval_test_split)), "w") as f:
            json.dump(results, f, indent=2)
    return results


def results_file_name(step: int, split: str) -> str:
    """`eval_results_step<N>_<split>.json`, one file per step and scored split, so that scoring
    another split keeps the first one's results: `train[45000:]` -> `train_45000-`, `test[:10%]` ->
    `test_-10pct`."""
    name = split.replace("[", "_").replace(":", "-").replace("%", "pct").replace("]", "")
    return f"eval_results_step{step}_{re.sub(r'[^A-Za-z0-9_.+-]', '', name)}.json"


def main(overrides: list[str]) -> None:
    cli.initialize_processes()
    with cli.user_errors_as_messages():
        evaluate(config_lib.load_config(cli.FLAGS.config, overrides), cli.FLAGS.workdir)


def run() -> None:
    """The `vision-jax-evaluate` command (and `python -m vision_jax.evaluate`)."""
    app.run(main, flags_parser=functools.partial(cli.parse_flags, doc=__doc__))


if __name__ == "__main__":
    run()
