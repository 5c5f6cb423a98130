"""Stopping on a signal without losing work: finish the step, save it, exit with code 75.

The signals are SIGTERM (a scheduler's preemption notice, `kill`), SIGINT (Ctrl-C) and
`config.preemption_signal` (default SIGUSR1, for SLURM's `sbatch --signal=USR1@90`). The train
loop asks `should_stop(step)` after every step; when it says yes, the loop saves that step
synchronously and raises `Preempted`, which the command line turns into exit code 75
(`errors.PREEMPTED_EXIT_CODE`) and the command that resumes. After the first signal every one of
them has its default action again, so a second signal ends the process at once, without saving,
even while the main thread is inside a long compile or save.

With one process a Python handler notes the signal. With several (jax.distributed), all must save
the same step, and JAX's preemption service agrees on it: `jax.distributed.initialize` installs
its own (C++) SIGTERM handler; a SIGTERM on any process reaches every process through the
coordination service, they settle on the step after the fastest one's current step, and
`multihost_utils.reached_preemption_sync_point(step)` (orbax: `CheckpointManager.reached_preemption`)
turns True at that step on all of them. So SIGTERM is left to JAX, the other signals are forwarded
to it as SIGTERM, and the loop must ask at every step, with the global step, from its first step.
(One gap: there, a second SIGTERM that comes before the processes agree is absorbed by JAX's
handler; a second SIGINT or SIGUSR1 still ends the process at once.)
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

import jax


class StopSignals:
    """While active (`with StopSignals(...)`), a stop signal makes `should_stop` True at an agreed step."""

    def __init__(self, extra_signal: str, reached_sync_point: Callable[[int], bool]):
        """`extra_signal`: a signal name or ''; `reached_sync_point(step)`: JAX's multi-process
        agreement (e.g. `Checkpointer.reached_preemption`), used when jax.distributed runs."""
        self.received: str | None = None  # the name of the first signal, once one came
        self._reached_sync_point = reached_sync_point
        # Multi-process: SIGTERM belongs to JAX's preemption service (see the module docstring).
        self._jax_agrees = jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service
        names = ["SIGINT", "SIGTERM", *([extra_signal] if extra_signal else [])]
        self._signals = list(dict.fromkeys(signal.Signals[n] for n in names))
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; leave them alone
        for sig in self._signals:
            if sig == signal.SIGTERM and self._jax_agrees:
                continue
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(sig, previous)

    def _on_signal(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name
        if self._jax_agrees:
            signal.raise_signal(signal.SIGTERM)  # JAX's handler: tells every process
        self._restore_default_actions()
        print(f"Received {self.received}: stopping once the current step is saved (send it again to exit at "
              f"once, without saving).", file=sys.stderr, flush=True)

    def _restore_default_actions(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                signal.signal(sig, signal.SIG_DFL)

    def should_stop(self, step: int) -> bool:
        """Call after every step, on every process, with the step just finished (the global count)."""
        if not self._jax_agrees:
            return self.received is not None
        if not self._reached_sync_point(step):
            return False
        # SIGTERM reaches JAX's handler, not Python's: this process may not know which signal it was.
        self.received = self.received or "a preemption notice"
        self._restore_default_actions()
        return True
