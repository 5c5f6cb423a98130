"""Run a recipe's evaluators on the latest checkpoint in a workdir and print the results table:

    python -m vision_jax.evaluate --config=configs/simclr_digits.py --workdir=/tmp/simclr_digits
    # Any split: the evaluators score config.data.eval_test_split (and probes fit on eval_train_split):
    python -m vision_jax.evaluate --config=/tmp/simclr_digits/config.json --workdir=/tmp/simclr_digits \
        --config.data.eval_test_split='train[:100]'

An installed package has the same as a command: `vision-jax-evaluate --config=... --workdir=...`.
"""
import functools
import json
import os

import jax
from absl import app

from vision_jax import cli
from vision_jax import config as config_lib
from vision_jax.errors import ConfigError, MissingDataError


def evaluate(config, workdir: str) -> dict[str, dict[str, float]]:
    from vision_jax import checkpoint, trainer
    from vision_jax.evaluators.report import format_table

    # Read-only: a training run may be writing this workdir (no lock taken, nothing cleaned up).
    checkpointer = checkpoint.Checkpointer(workdir, every_steps=0, keep=1, read_only=True)
    if checkpointer.latest_step() is None:
        raise MissingDataError(f"No checkpoint in {checkpointer.directory}: train first with "
                                f"python -m vision_jax.train --config=... --workdir={workdir}")
    if not config.evaluators:
        raise ConfigError("The config names no evaluators (config.evaluators); add e.g. "
                         "config.evaluators.knn = dict(k=20).")
    run = trainer.Run(config, workdir)
    state = run.restore_or_init(checkpointer)
    checkpointer.close()
    step = int(state["step"])
    results = run.evaluate(state, with_baselines=True)
    if jax.process_index() == 0:
        print(format_table(results, run.results_caption(step)), flush=True)
        with open(os.path.join(workdir, f"eval_results_step{step}.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(overrides: list[str]) -> None:
    cli.initialize_processes()
    with cli.user_errors_as_messages():
        evaluate(config_lib.load_config(cli.FLAGS.config, overrides), cli.FLAGS.workdir)


def run() -> None:
    """The `vision-jax-evaluate` command (and `python -m vision_jax.evaluate`)."""
    app.run(main, flags_parser=functools.partial(cli.parse_flags, doc=__doc__))


if __name__ == "__main__":
    run()
