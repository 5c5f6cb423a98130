"""Killing a run with SIGKILL and rerunning the same command ends bitwise where an uninterrupted
run ends: the checkpoint holds everything (params, optimizer, BatchNorm statistics, step, RNG) and
the input order is a function of (seed, step).

The recipe makes its SimCLR views on the device from the train state's RNG (`on_device`), so a
checkpoint that lost or altered the RNG would resume with other views and another loss curve.
(tests/test_checkpoint.py compares a restored state with the one in memory.)"""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, TINY_SIMCLR, checkpoint_steps, losses, run_cli, saved_state

pytestmark = pytest.mark.slow
CONFIG = "configs/simclr_digits.py:runlocal,on_device"
OVERRIDES = [*TINY_SIMCLR, "--config.total_steps=30", "--config.checkpoint.every_steps=4"]


def final_state(workdir, step=30):
    assert checkpoint_steps(workdir)[-1] == step
    return saved_state(workdir, step)


def kill_at_step(workdir, kill_step: int) -> None:
    """Starts training and SIGKILLs it as soon as it reports `kill_step` (log_every=1)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "vision_jax.train", f"--config={CONFIG}", f"--workdir={workdir}", *OVERRIDES]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith(f"step {kill_step}/"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def test_killed_run_resumes_bitwise(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run_cli("vision_jax.train", CONFIG, uninterrupted, *OVERRIDES)

    resumed = tmp_path / "resumed"
    kill_step = int(np.random.default_rng().integers(5, 22))  # after the first checkpoint, mid-run
    kill_at_step(resumed, kill_step)
    steps = checkpoint_steps(resumed)
    latest = steps[-1] if steps else None
    assert latest is not None and latest < 30, f"killed at step {kill_step}, latest checkpoint {latest}"
    second = run_cli("vision_jax.train", CONFIG, resumed, *OVERRIDES)
    assert f"resuming from step {latest}" in second.stdout
    # Steps between the checkpoint and the kill ran twice; the log keeps each step once, and
    # the resumed run's losses equal the uninterrupted run's.
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "train/loss" in r]
    assert logged == sorted(set(logged)) and logged[-1] == 30
    assert losses(resumed) == losses(uninterrupted)

    expected, actual = final_state(uninterrupted), final_state(resumed)
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(
            np.asarray(a), np.asarray(b), err_msg=f"{jax.tree_util.keystr(path)} (killed at {kill_step})"),
        expected, actual)

    # The same command on the finished workdir evaluates the latest checkpoint.
    evaluated = run_cli("vision_jax.evaluate", CONFIG, resumed, *OVERRIDES)
    for row in ("| simclr |", "| random_init |", "| raw_pixels |"):
        assert row in evaluated.stdout
