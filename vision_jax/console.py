"""What the console shows: progress bars with an ETA on a terminal, one line per log step
otherwise, and TensorFlow's start-up noise kept out.

- Quiet mode (no bars; the per-log-step lines alone, what CI and log files want): `--quiet` on
  `vision-jax-train` / `vision-jax-evaluate`, or `VISION_JAX_QUIET=1`. It is on by itself when
  stdout or stderr is not a terminal; `VISION_JAX_QUIET=0` (or `--noquiet`) forces the bars.
- `VISION_JAX_VERBOSE=1` lets TensorFlow's and absl's start-up logs through again.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Iterator

from tqdm import tqdm

QUIET_ENV = "VISION_JAX_QUIET"
VERBOSE_ENV = "VISION_JAX_VERBOSE"
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, ETA {remaining}{postfix}]"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def quiet() -> bool:
    """True when progress bars are off: asked for, or output that is not a terminal."""
    asked = os.environ.get(QUIET_ENV, "")
    if asked in ("0", "1"):
        return asked == "1"
    return not (sys.stdout.isatty() and sys.stderr.isatty())


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside: C++ code writes there directly, below Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow once without its start-up chatter (absl's "All log messages before
    absl::InitializeLog()" and the oneDNN notice, printed twice by C++ at import, which
    TF_CPP_MIN_LOG_LEVEL no longer reaches). Later `import tensorflow` statements reuse the module.
    A failing import still raises its Python error; rerun with VISION_JAX_VERBOSE=1 to see the rest."""
    if verbose() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO and WARNING logs after start-up
    with _native_stderr_silenced():
        import tensorflow  # noqa: F401


def echo(message: str) -> None:
    """Prints a line to stdout above any progress bar (which is then redrawn below it)."""
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def bar(iterable: Iterable | None = None, *, total: int, description: str, initial: int = 0,
        enabled: bool = True, leave: bool = True) -> tqdm:
    """A progress bar with an ETA on stderr, or (quiet mode, or `enabled` False) a silent pass-through."""
    return tqdm(iterable, total=total, initial=initial, desc=description, leave=leave,
                disable=not enabled or quiet(), bar_format=BAR_FORMAT, dynamic_ncols=True, file=sys.stderr)
