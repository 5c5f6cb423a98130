"""Shared helpers for tests that drive the command-line entry points in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orbax.checkpoint as ocp

REPO = Path(__file__).resolve().parents[1]

# A SimCLR digits run shrunk to seconds: tiny CNN on 16px images.
TINY_SIMCLR = [
    "--config.data.image_size=16", "--config.model.widths=(8,16,32,32)",
    "--config.method.projection_hidden_dim=32", "--config.method.projection_dim=16",
    "--config.evaluators.linear_probe.epochs=3", "--config.log_every=1",
]


def run_cli(module: str, config: str, workdir, *overrides: str, devices: int = 1, timeout: int = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
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
    """The train state saved at `step` in a workdir, as host arrays."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "signature"))
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return state
