"""The train loop's guards: non-finite losses, incompatible checkpoints (corrupt ones and their
fallback: test_checkpoint_safety.py); and the supervised path end to end (its classifier beats
chance on held-out digits)."""
import json
import os

import jax
import numpy as np
import pytest
from helpers import checkpoint_steps, saved_state

from vision_jax import checkpoint, evaluate, trainer
from vision_jax import config as config_lib

SMALL = ["data.image_size=16", "model.widths=(8,16,32,32)", "evaluators.linear_probe.epochs=3"]


def supervised_config(*overrides):
    return config_lib.load_config("configs/supervised_digits.py:runlocal", [*SMALL, *overrides])


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    config = supervised_config("optimizer.name=sgd", "optimizer.lr=1e30", "optimizer.warmup_steps=0",
                               "total_steps=20", "checkpoint.every_steps=1", "log_every=1",
                               "checkpoint.use_async=false")
    with pytest.raises(trainer.TrainingDiverged, match=r"non-finite at step (\d+)") as error:
        trainer.train(config, str(tmp_path))
    message = str(error.value)
    bad_step = int(message.split("non-finite at step ")[1].split(" ")[0])
    saved = checkpoint_steps(tmp_path)
    assert all(step < bad_step for step in saved)
    if not saved:
        assert "none was saved" in message
        return
    assert f"last good checkpoint: step {max(saved)}" in message
    state = saved_state(tmp_path, max(saved))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state["params"]))


def test_workdir_of_another_model_is_refused(tmp_path):
    trainer.train(supervised_config(), str(tmp_path))
    wider = supervised_config("model.widths=(8,16,32,64)", "allow_config_change=true")  # past the config diff
    with pytest.raises(checkpoint.CheckpointError, match="different model.*shape"):
        trainer.train(wider, str(tmp_path))


def test_supervised_classifier_beats_chance_on_held_out_digits(tmp_path):
    config = supervised_config("total_steps=60", "batch_size=64", "eval_baselines=()")
    results = trainer.train(config, str(tmp_path))
    assert results["supervised"]["classification/top1"] > 50  # chance is 10%
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/images_per_s", "train/learning_rate"} <= set(records[0])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    assert json.loads((tmp_path / "config.json").read_text())["method"]["name"] == "supervised"


def test_final_results_reproduce_in_evaluate_after_mid_run_evaluations(tmp_path):
    # The mid-run evaluation at step 2 must not leak (e.g. cached features) into the final table:
    # evaluating the final checkpoint afresh gives the same numbers, for every row.
    config = supervised_config("eval_every=2", "total_steps=6")
    trained = trainer.train(config, str(tmp_path))
    assert trained == evaluate.evaluate(supervised_config("eval_every=2", "total_steps=6"), str(tmp_path))
    assert set(trained) == {"supervised", "random_init", "raw_pixels"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["step"] == 2 and "eval/knn/top1" in r for r in records)


def test_start_up_report_counts_parameters_and_flops_of_the_small_cnn(tmp_path, capsys):
    trainer.train(supervised_config("total_steps=2", "eval_baselines=()"), str(tmp_path))
    out = capsys.readouterr().out
    # Counted by hand: 3x3 convs (padding 1) 3->8 at stride 1 on 16x16, then 8->16, 16->32, 32->32
    # at stride 2. XLA counts the products with real (not zero-padding) inputs: per dimension, the
    # output positions times the taps that land inside the input.
    def taps_inside(n_in, stride):
        return sum(0 <= o * stride + k < n_in for o in range(n_in // stride) for k in (-1, 0, 1))

    convs = [(3, 8, 16, 1), (8, 16, 16, 2), (16, 32, 8, 2), (32, 32, 4, 2)]
    conv_flops = sum(2 * cin * cout * taps_inside(n, stride) ** 2 for cin, cout, n, stride in convs)
    reported = float(out.split("encoder forward ")[1].split(" GFLOPs")[0]) * 1e9
    assert 1 <= reported / conv_flops < 1.05  # BN, ReLU and pooling add a few percent
    params = sum(9 * cin * cout + 2 * cout for cin, cout, _, _ in convs) + 32 * 10 + 10  # convs, BN, classifier
    assert f"supervised / cnn: {params:,} parameters" in out
