"""Train a recipe:

    python -m vision_jax.train --config=configs/simclr_digits.py --workdir=/tmp/simclr_digits

Rerunning the same command resumes from the latest checkpoint in --workdir. An installed package
has the same as a command: `vision-jax-train --config=... --workdir=...`. `--quiet` prints one line
per log step and no progress bars (on by itself when the output is not a terminal).
"""
import functools

from absl import app

from vision_jax import cli
from vision_jax import config as config_lib


def main(overrides: list[str]) -> None:
    cli.initialize_processes()
    with cli.user_errors_as_messages():
        config = config_lib.load_config(cli.FLAGS.config, overrides)
        from vision_jax import trainer  # after process setup, and only once the config is known good

        trainer.train(config, cli.FLAGS.workdir)


def run() -> None:
    """The `vision-jax-train` command (and `python -m vision_jax.train`)."""
    app.run(main, flags_parser=functools.partial(cli.parse_flags, doc=__doc__))


if __name__ == "__main__":
    run()
