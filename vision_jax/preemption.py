"""Stopping on a signal without losing work: finish the step, save it, exit with code 75.

The signals are SIGTERM (a scheduler's preemption notice, `kill`), SIGINT (Ctrl-C) and
`config.preemption_signal` (default SIGUSR1, for SLURM's `sbatch --signal=USR1@90`). The train
loop asks `should_stop(step)` after every step; when it says yes, the loop saves that step
synchronously and raises `Preempted`, which the command line turns into exit code 75
(`errors.PREEMPTED_EXIT_CODE`) and the command that resumes. A second signal ends the process at
once, without saving, with code 128 + the signal's number (as a shell reports a process the
signal killed).

The signals are seen by a watcher thread, not by Python handlers: those run only when the main
thread runs Python, so they would wait for a compile or a device computation of minutes. Python's
C-level handler writes each signal's number to a socket (`signal.set_wakeup_fd`) at once, and the
watcher reads it there.

With several processes (jax.distributed), all must save the same step, and JAX's preemption
service agrees on it: `jax.distributed.initialize` installs its own (C++) SIGTERM handler; a
SIGTERM on any process reaches every process through the coordination service, they settle on the
step after the fastest one's current step, and `multihost_utils.reached_preemption_sync_point(step)`
(orbax: `CheckpointManager.reached_preemption`) turns True at that step on all of them. So SIGTERM
is left to JAX, the other signals are forwarded to it as SIGTERM, and the loop must ask at every
step, with the global step, from its first step. (One gap: there, a second SIGTERM that comes
before the processes agree is absorbed by JAX's handler; a second SIGINT or SIGUSR1 still ends the
process at once. Once they agree, SIGTERM is watched too.)
"""
from __future__ import annotations

import os
import signal
import socket
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
        self._previous_wakeup_fd = -1
        self._sockets: tuple[socket.socket, socket.socket] | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread: leave them alone
        self._sockets = socket.socketpair()
        self._sockets[1].setblocking(False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._sockets[1].fileno(), warn_on_full_buffer=False)
        for sig in self._signals:
            if not (sig == signal.SIGTERM and self._jax_agrees):
                self._watch(sig)
        threading.Thread(target=self._watcher, name="vision_jax stop signals", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._sockets is None:
            return
        for sig, previous in self._previous.items():
            # None: a handler not set from Python (JAX's), which cannot be put back: the default then.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        self._sockets[1].close()  # the watcher reads the end of the stream and returns
        self._sockets = None

    def _watch(self, sig: signal.Signals) -> None:
        # A Python handler, for its C-level part (the wakeup write); the watcher does the work.
        self._previous.setdefault(sig, signal.signal(sig, lambda signum, frame: None))

    def _watcher(self) -> None:
        reader = self._sockets[0]
        watched = {int(sig) for sig in self._signals}
        with reader:
            while data := reader.recv(64):
                for signum in (n for n in data if n in watched):
                    self._on_signal(signal.Signals(signum))

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is not None:
            print(f"Received {sig.name} again: exiting at once, without saving.", file=sys.stderr, flush=True)
            os._exit(128 + sig)  # the main thread may be busy for minutes: no cleanup, no wait
        self.received = sig.name
        if self._jax_agrees:
            signal.raise_signal(signal.SIGTERM)  # JAX's handler: tells every process
        print(f"Received {sig.name}: stopping once the current step is saved (send it again to exit at once, "
              f"without saving).", file=sys.stderr, flush=True)

    def should_stop(self, step: int) -> bool:
        """Call after every step, on every process, with the step just finished (the global count)."""
        if not self._jax_agrees:
            return self.received is not None
        if not self._reached_sync_point(step):
            return False
        # SIGTERM reached JAX's handler, not ours: this process may not know which signal it was.
        self.received = self.received or "a preemption notice"
        if self._sockets is not None:
            self._watch(signal.SIGTERM)  # from now on a SIGTERM is a second signal
        return True
