"""Run a recipe's evaluators on the latest checkpoint in a workdir and print the results table:

    python -m vision_jax.evaluate --config=configs/simclr_digits.py --workdir=/tmp/simclr_digits
"""
import json
import os

import jax
from absl import app

from vision_jax import cli
from vision_jax import config as config_lib
from vision_jax.errors import ConfigError, MissingDataError


def evaluate(config, workdir: str) -> dict[str, dict[str, float]]:
    from vision_jax import trainer
    from vision_jax.evaluators.report import format_table

    run = trainer.Run(config, workdir)
    step = run.checkpointer.latest_step()
    if step is None:
        raise MissingDataError(f"No checkpoint in {run.checkpointer.directory}: train first with "
                                f"python -m vision_jax.train --config=... --workdir={workdir}")
    if not run.evaluators:
        raise ConfigError("The config names no evaluators (config.evaluators); add e.g. "
                         "config.evaluators.knn = dict(k=20).")
    state = run.restore_or_init()
    results = run.evaluate(state, with_baselines=True)
    if jax.process_index() == 0:
        print(format_table(results, run.results_caption(step)), flush=True)
        with open(os.path.join(workdir, f"eval_results_step{step}.json"), "w") as f:
            json.dump(results, f, indent=2)
    run.checkpointer.close()
    return results


def main(overrides: list[str]) -> None:
    cli.initialize_processes()
    with cli.user_errors_as_messages():
        evaluate(config_lib.load_config(cli.FLAGS.config, overrides), cli.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
