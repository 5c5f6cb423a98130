"""A run killed with SIGKILL, or stopped by SIGTERM, and rerun ends bitwise where an uninterrupted
run ends: the checkpoint holds everything (params, optimizer, BatchNorm statistics, step, RNG) and
the input order is a function of (seed, step). SIGTERM saves the step it stops at, exits with
code 75 and prints the command that resumes; a second signal exits at once.

The recipe makes its SimCLR views on the device from the train state's RNG (`on_device`), so a
checkpoint that lost or altered the RNG would resume with other views and another loss curve.
(tests/test_checkpoint.py compares a restored state with the one in memory.)"""
import json
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, TINY_SIMCLR, checkpoint_steps, losses, run_cli, saved_state, subprocess_env

pytestmark = pytest.mark.slow
CONFIG = "configs/simclr_digits.py:runlocal,on_device"
RUN = [*TINY_SIMCLR, "--config.total_steps=30", "--config.checkpoint.every_steps=4"]
# The training runs' own final evaluation leaves out the baselines (nothing here reads it); the
# evaluate command at the end scores the checkpoint with the recipe's baselines.
OVERRIDES = [*RUN, "--config.eval_baselines=()"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_cli("vision_jax.train", CONFIG, workdir, *OVERRIDES)
    return workdir


def interrupt_at_step(workdir, step: int, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Starts training and sends `sig` as soon as it reports `step` (log_every=1)."""
    command = [sys.executable, "-m", "vision_jax.train", f"--config={CONFIG}", f"--workdir={workdir}", *OVERRIDES]
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith(f"step {step}/"):
            process.send_signal(sig)
            break
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def assert_same_final_state(expected_workdir, actual_workdir, what: str) -> None:
    assert checkpoint_steps(expected_workdir)[-1] == checkpoint_steps(actual_workdir)[-1] == 30
    expected, actual = saved_state(expected_workdir, 30), saved_state(actual_workdir, 30)
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(
            np.asarray(a), np.asarray(b), err_msg=f"{jax.tree_util.keystr(path)} ({what})"),
        expected, actual)


def test_killed_run_resumes_bitwise(tmp_path, uninterrupted):
    resumed = tmp_path / "resumed"
    kill_step = int(np.random.default_rng().integers(5, 22))  # after the first checkpoint, mid-run
    killed = interrupt_at_step(resumed, kill_step, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    steps = checkpoint_steps(resumed)
    latest = steps[-1] if steps else None
    assert latest is not None and latest < 30, f"killed at step {kill_step}, latest checkpoint {latest}"
    second = run_cli("vision_jax.train", CONFIG, resumed, *OVERRIDES)
    assert f"resuming from step {latest}" in second.stdout
    assert "Taking over the lock of a run that is gone" in second.stderr  # SIGKILL left its lock behind
    # Steps between the checkpoint and the kill ran twice; the log keeps each step once, and
    # the resumed run's losses equal the uninterrupted run's.
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "train/loss" in r]
    assert logged == sorted(set(logged)) and logged[-1] == 30
    assert losses(resumed) == losses(uninterrupted)
    assert_same_final_state(uninterrupted, resumed, f"killed at {kill_step}")

    # The evaluate command on the finished workdir scores the latest checkpoint, with the baselines.
    evaluated = run_cli("vision_jax.evaluate", CONFIG, resumed, *RUN)
    for row in ("| simclr |", "| random_init |", "| raw_pixels |"):
        assert row in evaluated.stdout


def test_sigterm_saves_the_step_and_the_printed_command_resumes_bitwise(tmp_path, uninterrupted):
    workdir = tmp_path / "stopped"
    stop_step = int(np.random.default_rng().integers(1, 20))
    stopped = interrupt_at_step(workdir, stop_step, signal.SIGTERM)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    saved = checkpoint_steps(workdir)[-1]
    # The step in flight when the signal came is finished and saved (not the last periodic save).
    assert stop_step <= saved < 30
    assert f"Stopped by SIGTERM after step {saved}; its state is saved" in stopped.stderr
    command = stopped.stderr.split("Resume with:\n")[1].strip().splitlines()[0]
    resumed = subprocess.run(["bash", "-c", command], env=subprocess_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {saved}" in resumed.stdout
    assert losses(workdir) == losses(uninterrupted)
    assert_same_final_state(uninterrupted, workdir, f"SIGTERM at {stop_step}")


SECOND_SIGNAL = """
import os, signal, threading, time
import jax, jax.numpy as jnp
from vision_jax.preemption import StopSignals

# Minutes of device work, like a long compile or save: the main thread waits in C++, where no
# Python signal handler runs.
busy = jax.jit(lambda x: jax.lax.fori_loop(0, 10**6, lambda i, y: jnp.tanh(y @ y), x))
x = jnp.ones((256, 256))
busy = busy.lower(x).compile()
with StopSignals("SIGUSR1", reached_sync_point=lambda step: False) as stop:
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.5)
    print("first signal noted:", stop.received, stop.should_stop(1), flush=True)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    busy(x).block_until_ready()
    print("still running", flush=True)
"""


def test_a_second_signal_exits_at_once_while_the_main_thread_is_busy():
    result = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert "first signal noted: SIGUSR1 True" in result.stdout
    assert "Received SIGUSR1: stopping once the current step is saved" in result.stderr
    assert "Received SIGTERM again: exiting at once, without saving." in result.stderr
    assert "still running" not in result.stdout and result.returncode == 128 + signal.SIGTERM
