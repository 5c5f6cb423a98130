"""Errors that mean "the input is wrong, here is how to fix it", as opposed to bugs.

The command-line entry points print these as one message, without a stack trace; every other
exception keeps its traceback. Each also derives from the builtin a caller would expect.
"""


class UserError(Exception):
    """A mistake in a config, data or workdir that the message explains how to fix."""


class ConfigError(UserError, ValueError):
    """Unknown or mistyped config keys, names or options."""


class DataError(UserError, ValueError):
    """Data that cannot be used as it is (bad images, bad labels, empty splits)."""


class MissingDataError(UserError, FileNotFoundError):
    """Data, or a checkpoint, that is not where the config says."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint in the workdir that cannot be used."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss or gradients stopped being finite; nothing was saved after the last good state."""


class WorkdirError(UserError, OSError):
    """A workdir that cannot be used: a file, not writable, or in use by another run."""


# sysexits.h EX_TEMPFAIL, "try again later": what a run stopped by a signal exits with, after saving.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """A stop signal (preemption, Ctrl-C) ended training after the state of `step` was saved."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step
