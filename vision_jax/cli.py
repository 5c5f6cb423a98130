"""Command-line plumbing shared by `train` and `evaluate`: flags, config overrides, processes."""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
import sys

import jax
from absl import flags, logging

from vision_jax import console
from vision_jax.errors import PREEMPTED_EXIT_CODE, Preempted, UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Recipe: path/to/recipe.py[:key=value,...].", required=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.", required=True)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", False, "Join a multi-process run whose coordinator address, process count and "
                  "id come from the cluster environment (SLURM, Cloud TPU, ...; jax.distributed.initialize).")
flags.DEFINE_bool("quiet", None, "One line per log step and no progress bars (default: on when the output is "
                  "not a terminal); --noquiet forces the bars. Same as VISION_JAX_QUIET=1 / 0.")

OVERRIDE_PREFIX = "--config."


def parse_flags(argv: list[str], doc: str = "") -> list[str]:
    """absl parser that sets aside `--config.field=value` overrides (absl would reject them). `--help`
    prints `doc` (the command's docstring) and the flags, and exits 0."""
    if not console.verbose():
        logging.set_verbosity(logging.WARNING)  # orbax logs every step of every save at INFO
    if {"--help", "-h", "--helpshort", "--helpfull"} & set(argv[1:]):
        print(f"{doc.strip()}\n\nFlags:\n{FLAGS.module_help(__name__)}")
        sys.exit(0)
    console.import_tensorflow_quietly()  # before the trainer or the data pipeline import it loudly
    overrides = [arg[len(OVERRIDE_PREFIX):] for arg in argv[1:] if arg.startswith(OVERRIDE_PREFIX)]
    rest = [arg for arg in argv if not arg.startswith(OVERRIDE_PREFIX)]
    try:
        FLAGS(rest)
    except flags.Error as error:
        sys.exit(f"{error}\nUsage: python -m vision_jax.train --config=configs/<recipe>.py[:args] "
                 f"--workdir=DIR [--config.<field>=<value> ...]")
    if FLAGS.quiet is not None:  # one switch, read wherever a bar is made (console.quiet)
        os.environ[console.QUIET_ENV] = "1" if FLAGS.quiet else "0"
    return overrides


def initialize_processes() -> None:
    """Joins a multi-process run when asked to: by the flags, or with --distributed from the
    cluster environment (jax.distributed.initialize reads SLURM's and Cloud TPU's)."""
    if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.distributed:
        # Cross-process collectives for CPU devices (no effect on GPU/TPU). Must be set before
        # any backend starts, so do not query jax.devices() above this line.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


@contextlib.contextmanager
def user_errors_as_messages():
    """Mistakes in input (UserError) and a full disk end the program with their message alone, no
    traceback; a run stopped by a signal exits with PREEMPTED_EXIT_CODE and the command that resumes it."""
    try:
        yield
    except UserError as error:
        exit_with_message(f"error: {error}")
    except Preempted as stop:
        exit_with_message(f"{stop} Resume with:\n  {resume_command()}", PREEMPTED_EXIT_CODE)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        exit_with_message(f"error: writing {error.filename or 'the workdir'} failed: {error.strerror}. Free some "
                          f"space, then rerun the same command to resume from the last checkpoint.")


def exit_with_message(message: str, code: int = 1) -> None:
    """Writes the message and its newline to stderr in one write, then exits. sys.exit(message)
    writes the two separately, and a failing checkpoint writer thread still printing its traceback
    can land between them, running its output on from the message's line."""
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), f"{message}\n".encode())
    except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor (a notebook's)
        sys.stderr.write(f"{message}\n")
    sys.exit(code)


def resume_command() -> str:
    """This process's own command line, to type again (from the same directory) to resume."""
    return f"cd {shlex.quote(os.getcwd())} && {shlex.join([sys.executable, '-m', _module(), *sys.argv[1:]])}"


def _module() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else "vision_jax.train"
