"""Orbax checkpoints of the train state: async, atomic (written aside, then renamed), keep-N.

Each checkpoint holds the whole train state (any pytree: step, params, optimizer and model state,
RNG) and a signature of the model (parameter shapes and the model config). The input pipeline
needs nothing else: its order is a function of (seed, step). Restoring uses the target shardings,
so a run may resume on a different device count.

What never happens: a state with a non-finite value is never saved (`nonfinite_leaves` is checked
first); an unreadable or non-finite checkpoint is never used: restoring falls back to the previous
one and moves the bad one aside (never deletes it); a read-only Checkpointer (`evaluate`) never
writes or cleans anything in the checkpoint folder.
"""
from __future__ import annotations

import datetime
import functools
import glob
import os
import re
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vision_jax.errors import CheckpointError

CORRUPT_FOLDER = "corrupt_checkpoints"  # in the workdir, beside checkpoints/


def model_signature(abstract_params: Any, model_config: dict, method: str = "") -> dict:
    """What a checkpoint says about the model it holds (the method name lets another run starting
    from it, `config.init`, tell what kind of run it was without its config.json)."""
    shapes = {jax.tree_util.keystr(path): list(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)}
    return {"model": model_config, "method": method, "param_shapes": shapes}


def nonfinite_leaves(state: Any) -> list[str]:
    """Paths of the floating-point leaves of `state` that hold a NaN or an infinity."""
    leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    if not leaves:
        return []
    # One flag per leaf, reduced on the devices; replicated, so every process can read it.
    sharding = leaves[0][1].sharding
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()) \
        if isinstance(sharding, jax.sharding.NamedSharding) else None
    flags = _finite_flags(replicated)([leaf for _, leaf in leaves])
    return [_path_name(path) for (path, _), finite in zip(leaves, np.asarray(flags)) if not finite]


@functools.lru_cache(maxsize=4)
def _finite_flags(out_sharding):
    return jax.jit(lambda leaves: jnp.stack([jnp.isfinite(x).all() for x in leaves]), out_shardings=out_sharding)


class Checkpointer:
    def __init__(self, workdir: str, every_steps: int, keep: int, use_async: bool = True,
                 read_only: bool = False):
        """`every_steps=0` saves only when asked with force=True (the end of training, a stop
        signal) and, as orbax does, the first step. `read_only` (for `evaluate`) never writes."""
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.read_only = read_only
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                                   cleanup_tmp_directories=False)
        else:
            # Temporary folders left by a killed save are this workdir's own (the lock guarantees a
            # single writer), so they are cleaned up.
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=every_steps or None,
                enable_async_checkpointing=use_async, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "signature": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True at the step all processes agreed to save at after a preemption notice (multi-process
        runs with JAX's preemption service; see vision_jax/preemption.py)."""
        return self.manager.reached_preemption(step)

    # --- saving ------------------------------------------------------------------------------

    def save(self, step: int, state: Any, signature: dict, force: bool = False) -> bool:
        if not force and not self.manager.should_save(step):
            return False
        self._check_free_space(step, state)
        try:
            return self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), signature=ocp.args.JsonSave(signature)), force=True)
        except Exception as error:  # noqa: BLE001 - a failed write (disk full, quota, permissions)
            raise self._save_failed(error) from error

    def _check_free_space(self, step: int, state: Any) -> None:
        """Refuses a save that cannot fit, before orbax starts writing: a write that fails midway
        leaves its background threads' tracebacks behind (the next checkpoint's size is known)."""
        needed = sum(shard.data.nbytes for leaf in jax.tree.leaves(state) for shard in leaf.addressable_shards
                     if shard.replica_id == 0)  # this process's share, each array once
        free = shutil.disk_usage(self.directory).free
        if not _all_processes_agree(needed < free):
            latest = self.manager.latest_step()
            resume = f"to resume from step {latest}" if latest is not None else "to start again"
            raise CheckpointError(
                f"Not enough free space in {self.directory} for the checkpoint of step {step}: it needs about "
                f"{needed / 2**20:.1f} MiB per process, {free / 2**20:.1f} MiB are free. Free some space "
                f"(df -h {self.directory}), then rerun the same command {resume}.")

    def wait(self) -> None:
        """Waits for an asynchronous save to be on disk; a failed one is reported like `save`'s."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            raise self._save_failed(error) from error

    def _save_failed(self, error: Exception) -> CheckpointError:
        # The half-written save is a temporary folder (renamed only once complete): remove it.
        if jax.process_index() == 0:
            for leftover in glob.glob(os.path.join(self.directory, f"*{ocp.utils.TMP_DIR_SUFFIX}*")):
                shutil.rmtree(leftover, ignore_errors=True)
        latest = self.manager.latest_step()
        resume = f"rerun the same command to resume from step {latest}" if latest is not None else \
            "rerun the same command to start again"
        return CheckpointError(f"Saving a checkpoint in {self.directory} failed ({_short(error)}). Check the free "
                               f"space and permissions there (df -h {self.directory}), then {resume}.")

    # --- restoring ---------------------------------------------------------------------------

    def restore_latest(self, target: Any, signature: dict) -> Any | None:
        """The newest usable checkpoint restored into `target` (ShapeDtypeStructs with shardings), or
        None if there is none. Unreadable or non-finite checkpoints are skipped with a warning (and
        moved aside unless read-only); one of a different model or state structure is an error."""
        skipped = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem, state = self._try_restore(step, target, signature)
            if _all_processes_agree(problem is None):
                if skipped:
                    warnings.warn(f"Resuming from step {step}: {'; '.join(skipped)}.")
                return state
            problem = problem or "unreadable on another process"
            skipped.append(f"skipped checkpoint {step} ({problem}){self._move_aside(step)}")
        if skipped:
            advice = "" if self.read_only else " Rerun the same command to start again from step 0."
            raise CheckpointError(f"No usable checkpoint in {self.directory}: {'; '.join(skipped)}.{advice}")
        return None

    def _try_restore(self, step: int, target: Any, signature: dict) -> tuple[str | None, Any]:
        """(None, state) on success, or (what is wrong, None) for a checkpoint to skip."""
        where = os.path.join(self.directory, str(step))
        try:
            saved_signature = self.manager.restore(
                step, args=ocp.args.Composite(signature=ocp.args.JsonRestore()))["signature"]
            saved_tree = self.manager.item_metadata(step)["state"].tree
        except Exception as error:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            return f"unreadable: {_short(error)}", None
        mismatch = _describe_mismatch(saved_signature, signature)
        if mismatch:
            saved_config = os.path.join(self.workdir, "config.json")
            resume = (f", or resume the saved run with --config={saved_config}" if os.path.exists(saved_config)
                      else "")
            raise CheckpointError(f"The workdir holds a checkpoint of a different model ({where}): {mismatch}. "
                                  f"Use a new --workdir for this config{resume}.")
        difference = _describe_structure_difference(saved_tree, target)
        if difference:
            raise StateStructureError(f"Checkpoint {where} holds a train state of another structure than this "
                                      f"config makes: {difference}")
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))["state"]
        except Exception as error:  # noqa: BLE001
            return f"unreadable: {_short(error)}", None
        bad = nonfinite_leaves(state)
        if bad:
            return f"{len(bad)} array(s) hold NaN or infinity, e.g. {bad[0]}", None
        return None, state

    def _move_aside(self, step: int) -> str:
        if self.read_only:
            return ""
        destination = os.path.join(self.workdir, CORRUPT_FOLDER,
                                   f"{step}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), destination)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"vision_jax: moved checkpoint {step} aside")
        self.manager.reload()
        return f", moved to {destination}"

    def close(self) -> None:
        self.manager.close()


class StateStructureError(CheckpointError):
    """The checkpoint's train state has other entries than this config's (e.g. another optimizer)."""


def _all_processes_agree(ok: bool) -> bool:
    """True only if `ok` on every process (a shard may be unreadable on one host only)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _short(error: BaseException) -> str:
    """The root cause in one short line: orbax wraps TensorStore errors that carry kilobytes of spec.

    An operating-system error anywhere in the chain is the cause the user can act on ("File too large",
    "No space left on device"). Orbax's writer threads fail together, and the error that reaches us can
    end its chain in an exception orbax handled on the way, so the deepest error is not always it."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    os_level = [(e, line) for e in chain for line in str(e).splitlines()
                if isinstance(e, OSError) or "os_error_code" in line or "[Errno" in line]
    if os_level:
        error, text = os_level[-1]
        text = text.strip()
    else:
        error = chain[-1]
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text.split(" See full TensorStore details")[0]
    text = re.sub(r'"[^"]{60,}"', '"..."', text)  # long quoted paths and specs
    if len(text) > 300:
        text = f"{text[:150]} ... {text[-140:]}"  # the cause is often at the end ("No space left on device")
    return f"{type(error).__name__}: {text}"


def _path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _describe_structure_difference(saved_tree: Any, target: Any) -> str:
    saved = {_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    wanted = {_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
    if saved == wanted:
        return ""
    only_saved, only_wanted = sorted(saved - wanted), sorted(wanted - saved)
    entries = sorted({p.split(".")[0] for p in only_saved + only_wanted})
    examples = ([f"checkpoint has {only_saved[0]}"] if only_saved else []) + \
        ([f"this config has {only_wanted[0]}"] if only_wanted else [])
    return f"{', '.join(entries)} {'differs' if len(entries) == 1 else 'differ'} ({'; '.join(examples)})."


def _describe_mismatch(saved: dict, current: dict) -> str:
    saved_shapes, current_shapes = saved.get("param_shapes", {}), current["param_shapes"]
    for name, shape in current_shapes.items():
        if name not in saved_shapes:
            return f"parameter {name} is not in the checkpoint (saved model: {saved.get('model')})"
        if list(saved_shapes[name]) != list(shape):
            return f"parameter {name} has shape {saved_shapes[name]} there but {shape} here"
    extra = sorted(set(saved_shapes) - set(current_shapes))
    if extra:
        return f"the checkpoint has parameters this model lacks, e.g. {extra[0]}"
    return ""
