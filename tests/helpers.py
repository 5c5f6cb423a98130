"""Shared helpers for tests that drive the command-line entry points in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import orbax.checkpoint as ocp

REPO = Path(__file__).resolve().parents[1]

# A SimCLR digits run shrunk to seconds: tiny CNN on 16px images.
TINY_SIMCLR = [
    "--config.data.image_size=16", "--config.model.widths=(8,16,32,32)",
    "--config.method.projection_hidden_dim=32", "--config.method.projection_dim=16",
    "--config.evaluators.linear_probe.epochs=3", "--config.log_every=1",
]


# One persistent compilation cache for a test session: its processes (conftest.py; the pytest-xdist
# workers, which inherit the folder through the environment from the process that made it) and the
# training subprocesses. A run that is interrupted, resumed or repeated compiles its step once. The
# programs (and results) are the same with or without it.
if "VISION_JAX_TEST_JIT_CACHE" not in os.environ:
    _COMPILATION_CACHE = tempfile.TemporaryDirectory(prefix="vision_jax_test_jit_cache_")  # removed at exit
    os.environ["VISION_JAX_TEST_JIT_CACHE"] = _COMPILATION_CACHE.name
COMPILATION_CACHE_DIR = os.environ["VISION_JAX_TEST_JIT_CACHE"]
CACHE_MIN_COMPILE_SECONDS = "0.5"  # train steps and state inits, not the many tiny eager ops


def subprocess_env(devices: int = 1) -> dict[str, str]:
    """The environment of a training subprocess: this checkout, `devices` fake CPU devices."""
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE_DIR,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=CACHE_MIN_COMPILE_SECONDS,
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def run_cli(module: str, config: str, workdir, *overrides: str, devices: int = 1, timeout: int = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    env = subprocess_env(devices)
    command = [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}", *overrides]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def losses(workdir) -> dict[int, float]:
    """Per-step training loss from a workdir's metrics.jsonl (needs log_every=1)."""
    records = [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def checkpoint_steps(workdir) -> list[int]:
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    steps = sorted(manager.all_steps())
    manager.close()
    return steps


def saved_state(workdir, step: int) -> dict:
    """The train state saved at `step` in a workdir (by any number of devices or processes), as
    arrays on this process's first device."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                   "signature": ocp.JsonCheckpointHandler()})
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                          manager.item_metadata(step)["state"].tree)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    manager.close()
    return state
