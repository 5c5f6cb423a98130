"""The same run on 1 device and on 8 (fake CPU) devices gives the same loss curve."""
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, TINY_SIMCLR, losses, run_cli

pytestmark = pytest.mark.slow
CONFIG = "configs/simclr_digits.py:runlocal"
TINY = [*TINY_SIMCLR, "--config.eval_baselines=()"]  # loss curves are compared: no baselines to evaluate


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    run_cli("vision_jax.train", CONFIG, workdir, *TINY, devices=1)
    return losses(workdir)


@pytest.mark.parametrize("sharding", ["replicate", "fsdp"])
def test_eight_devices_match_one_device(one_device_losses, tmp_path, sharding):
    # SimCLR exercises both cross-device paths: negatives from the whole global batch, and
    # BatchNorm statistics over the global batch.
    run_cli("vision_jax.train", CONFIG, tmp_path, *TINY, f"--config.sharding={sharding}", devices=8)
    eight = losses(tmp_path)
    assert sorted(eight) == sorted(one_device_losses) == list(range(1, 11))
    steps = sorted(eight)
    np.testing.assert_allclose([eight[s] for s in steps], [one_device_losses[s] for s in steps], rtol=2e-4)
    # The curve moved: agreement is not two flat lines.
    assert one_device_losses[10] < one_device_losses[1]


def test_batch_not_divisible_by_devices_is_refused(tmp_path):
    result = run_cli("vision_jax.train", CONFIG, tmp_path, *TINY, "--config.batch_size=12",
                     devices=8, check=False)
    assert result.returncode != 0
    assert "batch_size=12 is not divisible by the 8 devices" in result.stderr
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_two_processes_match_one_device(one_device_losses, tmp_path):
    # Two processes joined by jax.distributed (gloo CPU collectives): the multi-host code path.
    # Each feeds its half of every global batch; the global batch, and so the curve, is unchanged.
    python_first_path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # the script runs `python`
    result = subprocess.run(["bash", "launch/multiprocess_cpu.sh", "2", CONFIG, str(tmp_path), *TINY],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), PATH=python_first_path),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "mesh {'data': 2, 'model': 1}" in result.stdout
    two = losses(tmp_path)
    steps = sorted(one_device_losses)
    assert sorted(two) == steps
    np.testing.assert_allclose([two[s] for s in steps], [one_device_losses[s] for s in steps], rtol=2e-4)
