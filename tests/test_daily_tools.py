"""A researcher's daily tools: the console (quiet mode's lines, the bars), TensorBoard's pictures,
text and hparams, the run report, kNN retrieval examples and the installed commands. One tiny
SimCLR run, shared by the checks that read its workdir."""
import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import sysconfig

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY_SIMCLR, subprocess_env
from tensorboard.plugins.hparams import plugin_data_pb2

from vision_jax import config as config_lib
from vision_jax import console, evaluate, logs, parallel, report, trainer
from vision_jax.data.show_views import GAP
from vision_jax.data.sources import in_memory_source
from vision_jax.data.views import AUGMENTATIONS
from vision_jax.errors import MissingDataError
from vision_jax.evaluators.features import EvalData, Representation
from vision_jax.evaluators.retrieval import CELL_HEIGHT, retrieval_picture

STEPS, EVAL_EVERY = 10, 5
BAR_MARKS = ("\r", "%|", "█")  # what a tqdm bar writes; a log file must hold none of them


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 10-step SimCLR run in quiet mode, logging every step and evaluating at step 5 and the end:
    (workdir, its console output)."""
    workdir = tmp_path_factory.mktemp("tiny_simclr")
    overrides = [arg[len("--config."):] for arg in TINY_SIMCLR] + [f"eval_every={EVAL_EVERY}"]
    config = config_lib.load_config("configs/simclr_digits.py:runlocal", overrides)
    assert config.total_steps == STEPS and config.log_every == 1
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        patch.setenv(console.QUIET_ENV, "1")
        trainer.train(config, str(workdir))
    return workdir, output.getvalue()


def summaries(workdir) -> dict[str, dict[int, object]]:
    """{tag: {step: summary value}} of every event file in WORKDIR/tensorboard."""
    found = {}
    folder = workdir / "tensorboard"
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(str(folder / name)):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value
    return found


def picture_of(value) -> np.ndarray:
    """The first image of a TF2 image summary ([width, height, png, ...] strings)."""
    return tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy()


def test_quiet_mode_prints_one_line_per_log_step_and_no_bar(tiny_run):
    _, output = tiny_run
    steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/10  loss \S+  \S+ images/s  ETA \d+:\d\d:\d\d$",
                                                  output, re.MULTILINE)]
    assert steps == list(range(1, STEPS + 1))
    assert not [mark for mark in BAR_MARKS if mark in output]


def test_tensorboard_holds_views_retrieval_results_text_and_hparams(tiny_run):
    workdir, _ = tiny_run
    found = summaries(workdir)
    config = json.loads((workdir / "config.json").read_text())

    # The views: 8 rows (the first examples) of SimCLR's 2 views, each cell scaled to 96 px.
    views = picture_of(found["pictures/views"][0])
    assert views.shape == (GAP + 8 * (96 + GAP), GAP + 2 * (96 + GAP), 3)
    # kNN retrieval examples at the evaluation and at the end: 8 queries, each beside 8 neighbours.
    for step in (EVAL_EVERY, STEPS):
        retrieval = picture_of(found["pictures/knn_retrieval"][step])
        assert retrieval.shape == (GAP + 8 * (CELL_HEIGHT + GAP), GAP + 9 * (CELL_HEIGHT + GAP), 3)

    # The results table as text: the final table's numbers (results.json), and the evaluation's at step 5.
    final_text = tf.make_ndarray(found["results"][STEPS].tensor).item().decode()
    results = json.loads((workdir / "results.json").read_text())
    assert {"simclr", "random_init", "raw_pixels"} <= set(results)
    for row, scores in results.items():
        assert f"| {row} | " + " | ".join(f"{scores[c]:.2f}" for c in sorted(scores)) + " |" in final_text
    eval_text = tf.make_ndarray(found["results"][EVAL_EVERY].tensor).item().decode()
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluation = next(r for r in records if r["step"] == EVAL_EVERY and "eval/knn/top1" in r)
    assert f"| simclr | {evaluation['eval/knn/top1']:.2f} | {evaluation['eval/linear_probe/top1']:.2f} |" in eval_text

    # The config as hparams, flattened.
    plugin_data = found["_hparams_/session_start_info"][0].metadata.plugin_data
    assert plugin_data.plugin_name == "hparams"
    hparams = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content).session_start_info.hparams
    assert hparams["optimizer.lr"].number_value == pytest.approx(config["optimizer"]["lr"])
    assert hparams["method.name"].string_value == "simclr"
    assert hparams["total_steps"].number_value == STEPS
    assert hparams["model.widths"].string_value == str(tuple(config["model"]["widths"]))


def test_report_holds_results_curves_and_every_picture(tiny_run, tmp_path):
    workdir, _ = tiny_run
    out = tmp_path / "report.html"
    report.main([f"--workdir={workdir}", f"--out={out}"])
    page = out.read_text()
    results = json.loads((workdir / "results.json").read_text())
    for row, scores in results.items():
        cells = "".join(f"<td>{scores[c]:.2f}</td>" for c in sorted(scores))
        assert f"<tr><td>{row}</td>{cells}</tr>" in page
    assert '<img class="curve" alt="loss"' in page and '<img class="curve" alt="learning rate"' in page
    inlined = dict(re.findall(r'<img class="picture" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page))
    files = sorted(os.listdir(workdir / "pictures"))
    assert sorted(inlined) == files
    assert {"views_step000000.png", f"knn_retrieval_step{STEPS:06d}.png"} <= set(files)
    for name in files:
        assert base64.b64decode(inlined[name]) == (workdir / "pictures" / name).read_bytes()
    assert f'"total_steps": {STEPS}' in page  # the config


def test_restore_gives_the_final_state_whose_features_stay_readable_after_evaluating(tiny_run, tmp_path):
    """evaluate.restore and Run.eval_data, the notebooks' way into a workdir: the restored state is the
    final one and scores what the run saved in results.json, and the features the evaluators extracted
    stay readable from the EvalData passed in (t-SNE, retrieval, confusion matrices reuse them)."""
    workdir, _ = tiny_run
    config = config_lib.load_config(str(workdir / "config.json"))
    run, state = evaluate.restore(config, str(workdir))
    assert int(state["step"]) == STEPS
    data = run.eval_data()
    results, pictures = run.evaluate_and_draw(state, with_baselines=False, data=data)
    saved = json.loads((workdir / "results.json").read_text())
    assert results == {"simclr": pytest.approx(saved["simclr"], abs=1e-9)}
    assert set(pictures) == {"knn_retrieval"}
    (representation,) = run.representations("simclr", state, with_online_probe=False)
    features, labels = data.outputs(representation, "features", "test")
    assert features.shape == (run.eval_sources["test"].num_examples, 32) and labels.shape == features.shape[:1]
    assert data.outputs(representation, "features", "test")[0] is features  # extracted once, then cached
    with pytest.raises(MissingDataError, match="No checkpoint in"):
        evaluate.restore(config, str(tmp_path))


def test_report_of_a_folder_that_is_no_workdir_says_what_to_pass(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        report.main([f"--workdir={tmp_path}"])
    message = str(exit_.value.code)
    assert "\n" not in message and "not a run's workdir" in message and "--workdir=" in message
    assert not os.listdir(tmp_path)  # nothing written


def test_bar_on_a_terminal_moves_with_the_steps_and_lines_print_above_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(console.QUIET_ENV, "0")  # as on a terminal
    logger = logs.MetricLogger(str(tmp_path), total_steps=4)
    for step in range(1, 5):
        logger.advance(step)
        if step % 2 == 0:
            logger.progress(step, loss=1.0 / step, images_per_s=100.0, seconds_per_step=0.5)
    logger.end_progress()
    captured = capsys.readouterr()
    assert re.findall(r"^step (\d)/4  loss", captured.out, re.MULTILINE) == ["2", "4"]
    bar_states = re.findall(r"train: +(\d+)%\|[^|]*\| (\d)/4 \[[^,]+, ETA [^,\]]+, loss ([\d.]+)", captured.err)
    assert bar_states[-1] == ("100", "4", f"{1.0 / 4:.4f}")


def test_quiet_by_itself_when_output_is_not_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(console.QUIET_ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert not console.quiet()
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # piped to a log file
    assert console.quiet()
    monkeypatch.setenv(console.QUIET_ENV, "0")
    assert not console.quiet()


def test_retrieval_picture_shows_each_query_then_its_neighbours_nearest_first():
    # Image i is one grey level; the features put level v at angle v on a quarter circle, so
    # cosine similarity falls with the difference in level and the nearest neighbours are known.
    train_levels = np.array([0, 40, 80, 120, 160, 200, 240], np.uint8)
    test_levels = np.array([95, 10], np.uint8)

    def source(levels):
        images = np.broadcast_to(levels[:, None, None, None], (len(levels), 4, 4, 3)).copy()
        return in_memory_source(images, np.zeros(len(levels), np.int32), 1, "grey levels")

    def features(images):  # images in [-1, 1]
        angle = (images.mean(axis=(1, 2, 3)) + 1) / 2 * (jnp.pi / 2)
        return jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)

    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
    data = EvalData({"train": source(train_levels), "test": source(test_levels)}, AUGMENTATIONS.build("none"),
                    mesh, global_batch=4)
    picture = retrieval_picture(Representation("grey", {"features": features}), data, queries=2, neighbours=3)

    def cell(row, column):
        top, left = GAP + row * (CELL_HEIGHT + GAP), GAP + column * (CELL_HEIGHT + GAP)
        values = np.unique(picture[top:top + CELL_HEIGHT, left:left + CELL_HEIGHT])
        assert len(values) == 1
        return int(values[0])

    for row, query in enumerate(test_levels):
        by_distance = sorted(train_levels, key=lambda level: abs(int(level) - int(query)))
        assert [cell(row, c) for c in range(4)] == [query, *by_distance[:3]]
    assert picture.shape == (GAP + 2 * (CELL_HEIGHT + GAP), GAP + 4 * (CELL_HEIGHT + GAP), 3)


COMMANDS = {"vision-jax-train": "--workdir", "vision-jax-evaluate": "--config",
            "vision-jax-sample": "--interpolate", "vision-jax-report": "--out"}


def test_installed_commands_run():
    scripts = sysconfig.get_path("scripts")
    missing = [name for name in COMMANDS if not os.path.exists(os.path.join(scripts, name))]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed in {scripts}: install the package with pip install -e .")
    for name, flag in COMMANDS.items():
        result = subprocess.run([os.path.join(scripts, name), "--help"], env=subprocess_env(), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert flag in result.stdout, result.stdout


def test_flat_hparams_takes_what_tensorboard_takes():
    flat = logs.flat_hparams({"a": {"b": 1, "c": {"d": "x"}}, "widths": (8, 16), "none": None, "on": True,
                              "lr": 0.5, "groups": {}})
    assert flat == {"a.b": 1, "a.c.d": "x", "widths": "(8, 16)", "none": "None", "on": True, "lr": 0.5}
