"""Orbax checkpoints of the train state: async, atomic (written aside, then renamed), keep-N.

Each checkpoint holds the whole train state (step, params, model state such as BatchNorm
statistics, optimizer state, RNG) and a signature of the model (parameter shapes and the model
config). The input pipeline needs nothing else: its order is a function of (seed, step).
Restoring uses the target shardings, so a run may resume on a different device count.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from vision_jax.errors import CheckpointError


def model_signature(abstract_params: Any, model_config: dict) -> dict:
    shapes = {jax.tree_util.keystr(path): list(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)}
    return {"model": model_config, "param_shapes": shapes}


class Checkpointer:
    def __init__(self, workdir: str, every_steps: int, keep: int, use_async: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, enable_async_checkpointing=use_async,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "signature"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, signature: dict, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), signature=ocp.args.JsonSave(signature)), force=force)

    def restore(self, step: int, abstract_state: Any, signature: dict) -> Any:
        """Restores `step` into arrays laid out like `abstract_state` (ShapeDtypeStructs with shardings)."""
        where = os.path.join(self.directory, str(step))
        try:
            saved_signature = self.manager.restore(
                step, args=ocp.args.Composite(signature=ocp.args.JsonRestore()))["signature"]
        except Exception as error:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            raise CheckpointError(
                f"Checkpoint {where} cannot be read ({type(error).__name__}: {error}). It may be corrupt: "
                f"move it aside to resume from an earlier step, or use a new --workdir.") from error
        mismatch = _describe_mismatch(saved_signature, signature)
        if mismatch:
            raise CheckpointError(
                f"The workdir holds a checkpoint of a different model ({where}): {mismatch}. Use a new "
                f"--workdir for this config, or rerun with the config saved in the workdir (config.json).")
        try:
            return self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))["state"]
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(
                f"Checkpoint {where} cannot be restored ({type(error).__name__}: {error}). It may be "
                f"corrupt or incomplete: move it aside to resume from an earlier step.") from error

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


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
