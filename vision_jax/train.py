"""Train a recipe:

    python -m vision_jax.train --config=configs/simclr_digits.py --workdir=/tmp/simclr_digits

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""
from absl import app

from vision_jax import cli
from vision_jax import config as config_lib


def main(overrides: list[str]) -> None:
    cli.initialize_processes()
    with cli.user_errors_as_messages():
        config = config_lib.load_config(cli.FLAGS.config, overrides)
        from vision_jax import trainer  # after process setup, and only once the config is known good

        trainer.train(config, cli.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
