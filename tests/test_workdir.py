"""The workdir's guards: one run at a time (a lock naming host and PID), folders that cannot be
used, and resuming with a changed config (a diff, accepted changes, a finished run, config.json
kept when a run is refused)."""
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO, checkpoint_steps, subprocess_env

from vision_jax import config as config_lib
from vision_jax import trainer, workdir
from vision_jax.errors import CheckpointError, ConfigError, WorkdirError

SMALL = ["data.image_size=16", "model.widths=(8,16,32,32)", "evaluators.linear_probe.epochs=3", "eval_baselines=()"]


def supervised_config(*overrides):
    return config_lib.load_config("configs/supervised_digits.py:runlocal", [*SMALL, *overrides])


def write_lock(folder, **holder):
    (folder / workdir.LOCK_NAME).write_text(json.dumps({"started": "2026-01-01 00:00:00", **holder}))


# ----------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------


def test_a_second_run_in_the_same_workdir_refuses_naming_the_first(tmp_path):
    holder = textwrap.dedent(f"""
        import sys, time
        from vision_jax import workdir
        with workdir.lock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(120)
        """)
    first = subprocess.Popen([sys.executable, "-c", holder], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirError, match=f"in use by another run: PID {first.pid} on host "
                                               f"{socket.gethostname()}"):
            trainer.train(supervised_config(), str(tmp_path))
        assert json.loads((tmp_path / workdir.LOCK_NAME).read_text())["pid"] == first.pid  # left as it was
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()
    finally:
        first.kill()
        first.wait()


def test_a_lock_whose_process_has_ended_is_taken_over_with_a_warning(tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    write_lock(tmp_path, host=socket.gethostname(), pid=ended.pid)
    with pytest.warns(UserWarning, match=f"PID {ended.pid} on this host has ended"):
        with workdir.lock(str(tmp_path)):
            assert json.loads((tmp_path / workdir.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / workdir.LOCK_NAME).exists()  # released at the end


def test_a_lock_on_another_host_is_respected_unless_left_by_the_same_slurm_job(tmp_path, monkeypatch):
    write_lock(tmp_path, host="node-7", pid=1234, slurm_job_id="77")
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued onto this node
    with pytest.warns(UserWarning, match="an earlier run of SLURM job 77, on node-7"):
        with workdir.lock(str(tmp_path)):
            pass

    write_lock(tmp_path, host="node-7", pid=1234, slurm_job_id="76")
    with pytest.raises(WorkdirError, match="PID 1234 on host node-7") as refused:
        with workdir.lock(str(tmp_path)):
            pass
    # As advised, when that run is known to be gone: delete the lock and rerun.
    os.remove(re.search(r"delete (\S+) and rerun", str(refused.value)).group(1))
    with workdir.lock(str(tmp_path)):
        assert json.loads((tmp_path / workdir.LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_workdir_that_is_a_file_or_not_writable_gets_one_line(tmp_path, monkeypatch):
    a_file = tmp_path / "run"
    a_file.write_text("")
    with pytest.raises(WorkdirError, match=r"^--workdir=.*/run is a file, not a folder; choose another --workdir\.$"):
        trainer.train(supervised_config(), str(a_file))

    def read_only_file_system(path, flags, mode=0o777):  # what a read-only mount answers, even to root
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    config = supervised_config()
    monkeypatch.setattr(os, "open", read_only_file_system)
    with pytest.raises(WorkdirError, match=r"is not writable \(Read-only file system\); choose another --workdir\.$"):
        trainer.train(config, str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Resuming with a changed config
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 6-step run (checkpoints at 3 and 6, results.json)."""
    folder = tmp_path_factory.mktemp("finished")
    trainer.train(supervised_config(), str(folder))
    return folder


@pytest.fixture
def run_dir(finished_run, tmp_path):
    """A private copy of the finished run."""
    return shutil.copytree(finished_run, tmp_path / "run")


def test_a_changed_config_is_refused_with_a_diff_and_config_json_is_kept(run_dir):
    saved = (run_dir / "config.json").read_text()
    with pytest.raises(ConfigError, match=r": optimizer\.lr 0\.002 -> 0\.01\. To continue"):
        trainer.train(supervised_config("optimizer.lr=0.01", "total_steps=8"), str(run_dir))
    # The case: another model in the same workdir; refused even when changes are allowed.
    vit = config_lib.load_config("configs/supervised_digits.py:runlocal,vit", ["eval_baselines=()"])
    with pytest.raises(ConfigError, match=r"model\.name \"cnn\" -> \"vit\""):
        trainer.train(vit, str(run_dir))
    vit.allow_config_change = True
    with pytest.raises(CheckpointError, match="checkpoint of a different model"):
        trainer.train(vit, str(run_dir))
    assert (run_dir / "config.json").read_text() == saved


def test_extending_total_steps_and_changing_intervals_resume_without_asking(run_dir, capsys):
    trainer.train(supervised_config("total_steps=8", "log_every=2", "checkpoint.every_steps=4", "eval_every=4"),
                  str(run_dir))
    out = capsys.readouterr().out
    assert "note: total_steps 6 -> 8: the run now ends at step 8" in out and "resuming from step 6" in out
    assert json.loads((run_dir / "config.json").read_text())["total_steps"] == 8


def test_total_steps_below_the_checkpoint_is_an_error(run_dir):
    with pytest.raises(ConfigError, match=r"at step 6, past config\.total_steps=4: use --config\.total_steps=6"):
        trainer.train(supervised_config("total_steps=4"), str(run_dir))


def test_rerunning_a_finished_run_prints_its_results_without_evaluating(run_dir, capsys, monkeypatch):
    metrics = (run_dir / "metrics.jsonl").read_text()
    saved_results = json.loads((run_dir / "results.json").read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not be built, trained or evaluated again")

    monkeypatch.setattr(trainer.Run, "__init__", refuse)
    assert trainer.train(supervised_config(), str(run_dir)) == saved_results
    out = capsys.readouterr().out
    assert "is finished (step 6); nothing was trained or evaluated again" in out
    assert f"| supervised | {saved_results['supervised']['classification/top1']:.2f} |" in out
    assert (run_dir / "metrics.jsonl").read_text() == metrics


def test_turning_on_gradient_clipping_at_resume_names_the_optimizer_state(run_dir):
    config = supervised_config("total_steps=8", "optimizer.grad_clip_norm=1.0")
    with pytest.raises(ConfigError, match=r"optimizer\.grad_clip_norm 0\.0 -> 1\.0"):
        trainer.train(config, str(run_dir))
    config.allow_config_change = True
    with pytest.raises(CheckpointError, match=r"another structure than this config makes: opt_state differs "
                                              r"\(checkpoint has opt_state\.0\..*this config has opt_state\.1\.0\..*"
                                              r"Changed since it was saved: optimizer\.grad_clip_norm 0\.0 -> 1\.0\."):
        trainer.train(config, str(run_dir))


def test_the_commands_a_refused_resume_suggests_work(run_dir, capsys):
    changed = ["optimizer.lr=0.01", "total_steps=8"]
    with pytest.raises(ConfigError) as refused:
        trainer.train(supervised_config(*changed), str(run_dir))
    # To resume unchanged: the saved config, as typed (the run is finished: its results, nothing redone).
    saved_config = re.search(r"--config=(\S+config\.json);", str(refused.value)).group(1)
    trainer.train(config_lib.load_config(saved_config), str(run_dir))
    assert "is finished (step 6)" in capsys.readouterr().out
    # To continue with the changes, deliberately.
    allow = [w.removeprefix("--config.").rstrip(";") for w in str(refused.value).split()
             if w.startswith("--config.allow")]
    trainer.train(supervised_config(*changed, *allow), str(run_dir))
    assert "resuming from step 6" in capsys.readouterr().out and checkpoint_steps(run_dir)[-1] == 8

    with pytest.raises(ConfigError) as too_short:
        trainer.train(supervised_config("optimizer.lr=0.01", "total_steps=4"), str(run_dir))
    advice = re.search(r"use --config\.(total_steps=\d+)", str(too_short.value)).group(1)
    trainer.train(supervised_config("optimizer.lr=0.01", advice), str(run_dir))
    assert "is finished (step 8)" in capsys.readouterr().out
