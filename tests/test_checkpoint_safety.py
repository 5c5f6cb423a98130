"""What must never happen to checkpoints: a non-finite state saved as the last good one, a corrupt
one used or deleted, `evaluate` writing or cleaning up in checkpoints/, a full disk ending in pages
of tracebacks or leaving a half-written save behind; and a checkpoint saved with 8 devices under
fsdp restores on 1 and 2 devices and continues."""
import glob
import json
import resource
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import REPO, checkpoint_steps, run_cli, saved_state, subprocess_env

from vision_jax import checkpoint, evaluate, trainer
from vision_jax import config as config_lib
from vision_jax.errors import CheckpointError, TrainingDiverged

SMALL = ["data.image_size=16", "model.widths=(8,16,32,32)", "evaluators.linear_probe.epochs=3", "eval_baselines=()"]


def supervised_config(*overrides):
    return config_lib.load_config("configs/supervised_digits.py:runlocal", [*SMALL, *overrides])


def all_finite(state) -> bool:
    return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state)
               if np.issubdtype(np.asarray(leaf).dtype, np.inexact))


def overrides_in(message: str) -> list[str]:
    """The `--config.x=y` overrides a message suggests, as load_config takes them."""
    return [word.removeprefix("--config.").rstrip(",.") for word in message.split()
            if word.startswith("--config.")]


def test_a_non_finite_update_is_never_saved_and_the_advised_rerun_works(tmp_path):
    # The case: the loss and gradient of step 1 are finite (initial parameters), the update
    # with lr 1e39 is not. Before, step 1 was saved as "last good" with 14 non-finite arrays.
    config = supervised_config("optimizer.lr=1e39", "optimizer.warmup_steps=0", "checkpoint.use_async=false")
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 1 .*last good checkpoint: none was saved"
                       ) as error:
        trainer.train(config, str(tmp_path))
    assert checkpoint_steps(tmp_path) == []

    advised = overrides_in(str(error.value))
    assert advised == ["optimizer.lr=0.001", "allow_config_change=true", "optimizer.grad_clip_norm=1.0"]
    rerun = config_lib.load_config("configs/supervised_digits.py:runlocal",
                                   [*SMALL, "optimizer.lr=1e39", "optimizer.warmup_steps=0", *advised[:2]])
    trainer.train(rerun, str(tmp_path))
    assert checkpoint_steps(tmp_path)[-1] == 6 and all_finite(saved_state(tmp_path, 6))


def test_the_check_before_a_save_names_every_non_finite_array_of_any_part_of_the_state():
    # The step's own check sees the loss and the norms of gradients and parameters; an optimizer
    # moment or a BatchNorm statistic can overflow alone, and must not be saved either.
    state = {"step": jnp.asarray(3), "params": {"w": jnp.ones(4)},
             "opt_state": ({"mu": jnp.asarray([1.0, np.inf])}, {"count": jnp.asarray(3)}),
             "model_state": {"bn": {"var": jnp.asarray([np.nan, 1.0], jnp.bfloat16)}}}
    assert checkpoint.nonfinite_leaves(state) == ["model_state.bn.var", "opt_state.0.mu"]
    assert checkpoint.nonfinite_leaves({"step": jnp.asarray(3), "params": {"w": jnp.ones(4)}}) == []


def test_zero_intervals_mean_off(tmp_path):
    trainer.train(supervised_config("log_every=0", "checkpoint.every_steps=0", "checkpoint.use_async=false"),
                  str(tmp_path))
    assert checkpoint_steps(tmp_path) == [1, 6]  # orbax's first-step save, and the end
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [6]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 6-step run with checkpoints at 1 (orbax saves the first step), 3 and 6."""
    folder = tmp_path_factory.mktemp("finished")
    trainer.train(supervised_config(), str(folder))
    assert checkpoint_steps(folder) == [1, 3, 6]
    return folder


@pytest.fixture
def run_dir(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


def corrupt(run_dir, step: int) -> None:
    for path in (run_dir / "checkpoints" / str(step) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")


def add_non_finite_checkpoint(run_dir, source_step: int, step: int) -> None:
    """Saves the state of `source_step` with one NaN as checkpoint `step`, as an older version could."""
    state = saved_state(run_dir, source_step)
    bias = state["params"]["classifier"]["linear"]["bias"]
    state["params"]["classifier"]["linear"]["bias"] = bias.at[0].set(np.nan)
    signature = json.loads((run_dir / "checkpoints" / str(source_step) / "signature" / "metadata").read_text())
    manager = ocp.CheckpointManager(run_dir / "checkpoints", item_names=("state", "signature"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               signature=ocp.args.JsonSave(signature)))
    manager.wait_until_finished()
    manager.close()


def test_unusable_checkpoints_are_skipped_with_a_short_warning_and_moved_aside(run_dir):
    add_non_finite_checkpoint(run_dir, 6, 7)
    corrupt(run_dir, 6)
    with pytest.warns(UserWarning) as warned:
        trainer.train(supervised_config("total_steps=8"), str(run_dir))
    message = str(next(w.message for w in warned if "Resuming from step 3" in str(w.message)))
    assert "skipped checkpoint 7 (1 array(s) hold NaN or infinity, e.g. params.classifier.linear.bias)" in message
    assert "skipped checkpoint 6 (unreadable: " in message
    assert len(message) < 800  # not kilobytes of TensorStore spec
    moved = sorted(p.split("/")[-1].split("-")[0] for p in glob.glob(f"{run_dir}/{checkpoint.CORRUPT_FOLDER}/*"))
    assert moved == ["6", "7"]  # kept, never deleted
    assert checkpoint_steps(run_dir)[-1] == 8


def test_when_no_checkpoint_is_usable_the_advised_rerun_starts_again(run_dir):
    for step in (1, 3, 6):
        corrupt(run_dir, step)
    config = supervised_config("total_steps=8")
    with pytest.raises(CheckpointError, match=r"No usable checkpoint .*skipped checkpoint 6 .*skipped checkpoint 1 "
                                              r".*Rerun the same command to start again from step 0\.$"):
        trainer.train(config, str(run_dir))
    assert trainer.train(config, str(run_dir))  # as advised: the same command
    assert checkpoint_steps(run_dir)[-1] == 8


def test_evaluate_only_reads(run_dir, monkeypatch):
    # A training run saving at this moment: its temporary folder and its lock must survive.
    in_flight = run_dir / "checkpoints" / f"9{ocp.utils.TMP_DIR_SUFFIX}-1234"
    in_flight.mkdir()
    (in_flight / "partial").write_text("half written")
    (run_dir / "lock").write_text('{"host": "elsewhere", "pid": 1}')
    corrupt(run_dir, 6)  # evaluate falls back to 3 without moving 6 aside

    def snapshot():
        return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}

    before = snapshot()
    with pytest.warns(UserWarning, match="Resuming from step 3: skipped checkpoint 6"):
        results = evaluate.evaluate(supervised_config(), str(run_dir))
    assert "supervised" in results
    after = snapshot()
    results_file = run_dir / "eval_results_step3_train_80pct-.json"  # the recipe's held-out train[80%:]
    assert {p for p in after if p not in before} == {str(results_file)}
    assert {p: after[p] for p in before} == before  # nothing in checkpoints/ (or anywhere) touched

    # Another split gets its own file: the first split's results are kept.
    other = evaluate.evaluate(supervised_config("data.eval_test_split=train[:100]"), str(run_dir))
    assert json.loads(results_file.read_text()) == results
    assert json.loads((run_dir / "eval_results_step3_train_-100.json").read_text()) == other


def test_a_disk_without_room_for_the_next_checkpoint_is_one_line_and_the_advised_rerun_works(tmp_path, monkeypatch):
    config = supervised_config("checkpoint.use_async=false")
    almost_full = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: almost_full)
    with pytest.raises(CheckpointError, match=r"^Not enough free space in .*/checkpoints for the checkpoint of step "
                                              r"1: it needs about 0\.\d MiB per process, 0\.0 MiB are free\. .*"
                                              r"then rerun the same command to start again\.$"):
        trainer.train(config, str(tmp_path))
    assert not glob.glob(f"{tmp_path}/checkpoints/*{ocp.utils.TMP_DIR_SUFFIX}*") and not (tmp_path / "lock").exists()
    monkeypatch.undo()  # space freed: the same command
    trainer.train(config, str(tmp_path))
    assert checkpoint_steps(tmp_path)[-1] == 6


def test_the_short_cause_is_the_operating_system_error_even_when_the_chain_ends_elsewhere():
    try:
        try:
            try:
                raise StopIteration(0)  # handled inside the writer, left as the deepest context
            except StopIteration:
                raise ValueError('OUT_OF_RANGE: Error writing "k/0" in OCDBT database at local file "'
                                 + "/tmp/x" * 20 + '": Failed to write 96414 bytes to file 19: File too large '
                                 "[os_error_code='27']") from None
        except ValueError as write_error:
            raise RuntimeError("Error saving the checkpoint.") from write_error
    except RuntimeError as error:
        short = checkpoint._short(error)
    assert short == ('ValueError: OUT_OF_RANGE: Error writing "k/0" in OCDBT database at local file "...": '
                     "Failed to write 96414 bytes to file 19: File too large [os_error_code='27']")
    assert checkpoint._short(RuntimeError("wrapped")) == "RuntimeError: wrapped"


@pytest.mark.slow
def test_a_write_failing_midway_ends_with_one_line_and_no_half_written_save(tmp_path):
    overrides = [f"--config.{o}" for o in SMALL] + ["--config.checkpoint.use_async=false"]
    run_cli("vision_jax.train", "configs/supervised_digits.py:runlocal", tmp_path, *overrides,
            "--config.total_steps=3")

    def files_up_to_16_kb():  # the checkpoint's data file cannot grow past it: the write fails midway
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    command = [sys.executable, "-m", "vision_jax.train", "--config=configs/supervised_digits.py:runlocal",
               f"--workdir={tmp_path}", *overrides]
    failed = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600,
                            preexec_fn=files_up_to_16_kb)
    stderr_tail = failed.stderr[-4000:]  # shown when an assertion fails
    assert failed.returncode == 1, stderr_tail
    # orbax's writer threads may report the same failure again while the interpreter shuts down,
    # before or after the message; the message runs to the end of its line, ending with its advice.
    # (a thread's unterminated output can precede it on its line: the message starts at 'error: ')
    start = f"error: Saving a checkpoint in {tmp_path}/checkpoints failed ("
    messages = [line[line.index(start):] for line in failed.stderr.splitlines() if start in line]
    assert len(messages) == 1, stderr_tail
    advice = "then rerun the same command to resume from step 3."
    assert "File too large" in messages[0] and messages[0].endswith(advice), messages[0]
    assert len(messages[0]) < 600  # not kilobytes of TensorStore spec
    assert not glob.glob(f"{tmp_path}/checkpoints/*{ocp.utils.TMP_DIR_SUFFIX}*") and not (tmp_path / "lock").exists()
    assert checkpoint_steps(tmp_path)[-1] == 3


@pytest.mark.slow
def test_a_checkpoint_saved_with_8_devices_under_fsdp_restores_on_1_and_2_and_continues(tmp_path):
    overrides = ["--config.sharding=fsdp", "--config.model.widths=(8,16,32,64)", "--config.data.image_size=16",
                 "--config.total_steps=4", "--config.checkpoint.every_steps=2", "--config.eval_baselines=()",
                 "--config.evaluators.linear_probe.epochs=1"]
    recipe = "configs/supervised_digits.py:runlocal"
    eight = tmp_path / "eight"
    run_cli("vision_jax.train", recipe, eight, *overrides, devices=8)
    metadata = ocp.StandardCheckpointHandler().metadata(eight / "checkpoints" / "2" / "state")
    kernel = metadata.tree["params"]["encoder"]["convs"]["3"]["kernel"]  # 3x3x32x64: large enough to split
    assert "data" in str(kernel.sharding), kernel.sharding

    for devices in (2, 1):
        resumed = tmp_path / f"on_{devices}"
        shutil.copytree(eight, resumed)
        shutil.rmtree(resumed / "checkpoints" / "4")
        if devices == 1:  # this process has one device
            config = config_lib.load_config(recipe, [o.removeprefix("--config.") for o in overrides])
            trainer.train(config, str(resumed))
        else:
            assert "resuming from step 2" in run_cli("vision_jax.train", recipe, resumed, *overrides,
                                                     devices=devices).stdout
        # Steps 3-4 on fewer devices give the 8-device run's state up to float summation order.
        jax.tree_util.tree_map_with_path(
            lambda path, a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{path} on {devices}"),
            saved_state(eight, 4), saved_state(resumed, 4))
