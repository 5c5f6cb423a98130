"""The launch scripts. launch/slurm.sbatch runs under a fake SLURM (srun starts 2 local processes
with SLURM's per-task environment; they join over gloo): the scheduler's SIGUSR1 to one process at
a random step makes both save the same step and exit 75, the script requeues the job, and the
requeued job ends bitwise where an uninterrupted one does; a SIGTERM to the other process stops
both at one step too. The TPU VM and multi-host GPU scripts are checked through the commands their
--dry_run prints."""
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, TINY_SIMCLR, checkpoint_steps, losses, saved_state

CONFIG = "configs/simclr_digits.py:runlocal"
OVERRIDES = [*TINY_SIMCLR, "--config.total_steps=30", "--config.checkpoint.every_steps=10",
             "--config.eval_baselines=()"]

# srun for tests: SLURM_NTASKS local tasks, each with the environment SLURM gives a task; their
# PIDs are appended to $FAKE_SLURM_PIDS. Like srun, exits with the highest exit code.
FAKE_SRUN = """#!/usr/bin/env bash
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=localhost SLURM_STEP_NUM_NODES=1 "$@" &
  pids+=($!)
  echo "$i $!" >> "$FAKE_SLURM_PIDS"
done
status=0
for pid in "${pids[@]}"; do wait "$pid"; code=$?; (( code > status )) && status=$code; done
exit $status
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$FAKE_SCONTROL_LOG"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _fake_slurm(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable, PYTHONPATH=str(REPO),
                JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2",
                FAKE_SLURM_PIDS=str(tmp_path / "pids"), FAKE_SCONTROL_LOG=str(tmp_path / "scontrol.log"))


def _sbatch(workdir, env, log) -> subprocess.Popen:
    env = dict(env, JAX_COORDINATOR_PORT=str(_free_port()))
    return subprocess.Popen(["bash", "launch/slurm.sbatch", CONFIG, str(workdir), *OVERRIDES], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=log, text=True)


def _stop_at_random_step(tmp_path, workdir, env, task: str, sig: signal.Signals) -> tuple[int, str, int]:
    """Runs the job and sends `sig` to process `task` once process 0 reports a random early step.
    Returns the job's exit code, its processes' stderr and the step the signal came at."""
    (tmp_path / "pids").unlink(missing_ok=True)
    stop_step = random.randint(3, 10)
    with open(tmp_path / "stderr.log", "w") as log:
        job = _sbatch(workdir, env, log)
        for line in job.stdout:
            if line.startswith(f"step {stop_step}/"):
                pids = dict(line.split() for line in (tmp_path / "pids").read_text().splitlines())
                os.kill(int(pids[task]), sig)
                break
        job.communicate(timeout=600)
    return job.returncode, (tmp_path / "stderr.log").read_text(), stop_step


def _stopped_at(stderr: str) -> tuple[list[str], int]:
    """Who stopped each process (its 'Stopped by ...' line), and the one step they all saved."""
    stopped = re.findall(r"Stopped by (.+) after step (\d+);", stderr)
    steps = {int(step) for _, step in stopped}
    assert len(stopped) == 2 and len(steps) == 1, stopped  # both processes, at the same step
    return sorted(who for who, _ in stopped), steps.pop()


@pytest.mark.slow
def test_slurm_job_stopped_by_the_scheduler_requeues_and_resumes_bitwise(tmp_path):
    env = _fake_slurm(tmp_path)
    with open(tmp_path / "stderr.log", "w") as log:
        uninterrupted = _sbatch(tmp_path / "uninterrupted", env, log)
        uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, (tmp_path / "stderr.log").read_text()[-3000:]

    # SLURM's --signal=USR1@90 signals every task; here only process 1 gets it, the harder case:
    # its handler forwards it to JAX's preemption service, through which process 0 learns of it.
    code, stderr, stop_step = _stop_at_random_step(tmp_path, tmp_path / "preempted", env, "1", signal.SIGUSR1)
    assert code == 75, stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    who, saved_step = _stopped_at(stderr)
    assert who == ["SIGUSR1", "a preemption notice"]  # process 1, process 0
    assert saved_step >= stop_step and checkpoint_steps(tmp_path / "preempted")[-1] == saved_step

    with open(tmp_path / "stderr.log", "w") as log:  # the requeued job: the same script again
        requeued = _sbatch(tmp_path / "preempted", env, log)
        out, _ = requeued.communicate(timeout=600)
    assert requeued.returncode == 0, (tmp_path / "stderr.log").read_text()[-3000:]
    assert f"resuming from step {saved_step}" in out
    assert losses(tmp_path / "preempted") == losses(tmp_path / "uninterrupted")
    expected, actual = saved_state(tmp_path / "uninterrupted", 30), saved_state(tmp_path / "preempted", 30)
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path)), expected, actual)


@pytest.mark.slow
def test_sigterm_to_the_coordinator_stops_every_process_at_the_same_step(tmp_path):
    # A preemption's SIGTERM goes straight to JAX's own handler (Python never sees it).
    code, stderr, stop_step = _stop_at_random_step(tmp_path, tmp_path / "run", _fake_slurm(tmp_path), "0",
                                                   signal.SIGTERM)
    assert code == 75, stderr[-3000:]
    who, saved_step = _stopped_at(stderr)
    assert who == ["a preemption notice"] * 2
    assert saved_step >= stop_step and checkpoint_steps(tmp_path / "run")[-1] == saved_step


def test_tpu_vm_dry_run_prints_one_gcloud_command_for_all_workers():
    override = "--config.model.widths=(8, 16)"  # a space and parentheses: survives two rounds of quoting
    result = subprocess.run(["bash", "launch/tpu_vm.sh", "--dry_run", "my-tpu", "us-central2-b",
                             "configs/simclr_cifar10.py", "/mnt/shared/run 1", override],
                            cwd=REPO, capture_output=True, text=True, check=True)
    words = shlex.split(result.stdout)
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--zone=us-central2-b" in words and "--worker=all" in words
    remote = shlex.split(next(w for w in words if w.startswith("--command=")).removeprefix("--command="))
    assert remote == ["cd", "vision_jax", "&&", "python", "-m", "vision_jax.train", "--config=configs/simclr_cifar10.py",
                      "--workdir=/mnt/shared/run 1", "--distributed", override]


def test_gpu_multihost_dry_run_prints_the_command_of_one_host():
    override = "--config.model.widths=(8, 16)"
    result = subprocess.run(["bash", "launch/gpu_multihost.sh", "--dry_run", "10.0.0.1:1234", "2", "1",
                             "configs/simclr_cifar10.py", "/shared/run", override],
                            cwd=REPO, capture_output=True, text=True, check=True, env=dict(os.environ, PYTHON="py3"))
    assert shlex.split(result.stdout) == [
        "py3", "-m", "vision_jax.train", "--config=configs/simclr_cifar10.py", "--workdir=/shared/run",
        "--coordinator_address=10.0.0.1:1234", "--num_processes=2", "--process_id=1", override]
