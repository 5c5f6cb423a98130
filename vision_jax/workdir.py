"""The workdir's guards: a usable folder, one run at a time, and a config that matches the run it
resumes.

- `prepare`: the workdir is a folder this process can create and write.
- `lock`: a run holds `WORKDIR/lock` (JSON: host, PID, start time, SLURM job). A second run
  refuses, naming them. A lock whose PID has ended on this host, or that an earlier run of the same
  SLURM job left on another node (a requeued job), is stale: taken over with a warning.
- `check_resume`: resuming a checkpoint with a config that differs from the saved `config.json`
  stops with a short diff, unless the change cannot alter what is trained (intervals, layout,
  total_steps) or `config.allow_config_change` is set. `write_config` saves config.json, and is
  called only once the checkpoint restored, so a refused run never overwrites it.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
import warnings
from typing import Any, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from vision_jax import config as config_lib
from vision_jax.errors import ConfigError, WorkdirError

LOCK_NAME = "lock"
CONFIG_NAME = "config.json"
# Changes that cannot alter the trained state, accepted on resume without asking: bookkeeping,
# and the device layout (a run may resume on another device count). total_steps moves the end
# (and stretches the learning-rate schedule); it is accepted with a note.
ACCEPTED_CHANGES = ("total_steps", "log_every", "eval_every", "pictures_every", "num_pictures", "checkpoint.every_steps",
                    "checkpoint.keep", "checkpoint.use_async", "data.prefetch", "data.eval_batch_size", "mesh.data",
                    "mesh.model", "sharding", "preemption_signal", "allow_config_change")
_UNSET = object()


def prepare(workdir: str) -> None:
    """Creates the workdir, or explains in one line why it cannot be used."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder; choose another --workdir.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"Cannot create --workdir={workdir} ({error.strerror}); choose another --workdir.") from None


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock while the block runs. Process 0 takes it; every process learns the outcome."""
    path = os.path.join(workdir, LOCK_NAME)
    refusal = _acquire(path) if jax.process_index() == 0 else ""
    if jax.process_count() > 1 and not bool(multihost_utils.broadcast_one_to_all(np.int32(refusal == ""))):
        refusal = refusal or f"Process 0 could not lock --workdir={workdir}; its log says why."
    if refusal:
        raise WorkdirError(refusal)
    try:
        yield
    finally:
        if jax.process_index() == 0 and _read_lock(path).get("pid") == os.getpid():
            os.remove(path)


def _acquire(path: str) -> str:
    """Creates the lock file; returns '' or, if the workdir cannot be locked, the reason and what to do."""
    workdir = os.path.dirname(path)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().isoformat(" ", "seconds"), "slurm_job_id": os.environ.get("SLURM_JOB_ID", "")}
    for _ in range(2):  # a second try after taking over a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            stale = _stale_because(holder, me, path)
            if not stale:
                return (f"--workdir={workdir} is in use by another run: PID {holder.get('pid')} on host "
                        f"{holder.get('host')}, started {holder.get('started')}. Wait for it to end, or stop it; "
                        f"if it is gone, delete {path} and rerun.")
            warnings.warn(f"Taking over the lock of a run that is gone ({stale}): {path}")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        except OSError as error:
            return f"--workdir={workdir} is not writable ({error.strerror}); choose another --workdir."
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return ""
    return f"--workdir={workdir}: another run took its lock at the same moment ({path}); rerun."


def _read_lock(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _stale_because(holder: dict, me: dict, path: str) -> str:
    """Why the lock `holder` wrote is stale, or '' if its run may be alive."""
    if not holder:  # unreadable: being written this instant, or left half-written by a crash
        return "an unreadable lock file" if time.time() - os.path.getmtime(path) > 10 else ""
    if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
        return f"PID {holder.get('pid')} on this host has ended"
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == me["slurm_job_id"] and holder.get("host") != me["host"]:
        return f"an earlier run of SLURM job {me['slurm_job_id']}, on {holder.get('host')}"
    return ""


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (TypeError, ValueError):
        return False
    return True


def check_resume(config, workdir: str, checkpoint_step: int) -> list[str]:
    """Refuses to resume `checkpoint_step` with this config if that cannot be what is meant; returns
    notes on the accepted changes."""
    if checkpoint_step > config.total_steps:
        raise ConfigError(f"The checkpoint in {workdir}/checkpoints is at step {checkpoint_step}, past "
                          f"config.total_steps={config.total_steps}: use --config.total_steps={checkpoint_step} "
                          f"(or more), or a new --workdir.")
    saved_path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.exists(saved_path):
        return []
    with open(saved_path) as f:
        saved = json.load(f)
    changes = config_changes(saved, config)
    asked = [c for c in changes if c[0] not in ACCEPTED_CHANGES]
    if asked and not config.allow_config_change:
        raise ConfigError(
            f"This config differs from the one that saved the checkpoint at step {checkpoint_step} "
            f"({saved_path}): {describe(asked)}. To continue that run with these changes, add "
            f"--config.allow_config_change=true; to resume it unchanged, use --config={saved_path}; "
            f"or use a new --workdir.")
    notes = [f"resuming step {checkpoint_step} with a changed config (allow_config_change): {describe(asked)}"] \
        if asked else []
    if any(path == "total_steps" for path, _, _ in changes):
        notes.append(f"total_steps {saved.get('total_steps')} -> {config.total_steps}: the run now ends at step "
                     f"{config.total_steps}, and the learning-rate schedule spans that many steps.")
    return notes


def changes_since_saved(config, workdir: str) -> str:
    """The differences between `config` and the workdir's config.json that could alter training,
    described ('' if none, or no config.json)."""
    saved_path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.exists(saved_path):
        return ""
    with open(saved_path) as f:
        return describe([c for c in config_changes(json.load(f), config) if c[0] not in ACCEPTED_CHANGES])


def config_changes(saved: dict, config) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every difference, in JSON terms. A field the
    saved config lacks (it predates the field) counts only if set away from its default."""
    current = json.loads(config_lib.to_json(config))
    defaults = _flatten(json.loads(config_lib.to_json(config_lib.default_config())))
    old, new = _flatten(saved), _flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, _UNSET), new.get(key, _UNSET)
        if before is _UNSET and key in defaults and after == defaults[key]:
            continue
        if before != after:
            changes.append((key, before, after))
    return changes


def describe(changes: list[tuple[str, Any, Any]], limit: int = 8) -> str:
    def show(value):
        return "(unset)" if value is _UNSET else json.dumps(value)

    shown = [f"{key} {show(before)} -> {show(after)}" for key, before, after in changes[:limit]]
    more = f" (and {len(changes) - limit} more)" if len(changes) > limit else ""
    return "; ".join(shown) + more


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_config(config, workdir: str) -> None:
    """Saves the config the run continues with (process 0; atomically, so never half-written)."""
    if jax.process_index() == 0:
        path = os.path.join(workdir, CONFIG_NAME)
        with open(path + ".tmp", "w") as f:
            f.write(config_lib.to_json(config))
        os.replace(path + ".tmp", path)
