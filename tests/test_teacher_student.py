"""The teacher-student machinery on real runs: followers updated by EMA after the optimizer step,
kept out of the optimizer, sharded like what they follow; DINO's frozen last layer, center and
teacher evaluation; the online probe and collapse monitor; gradient accumulation; mixup through the
trainer; bad input; 1 vs 8 devices; a killed run resumes bitwise."""
import json
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import REPO, checkpoint_steps, losses, run_cli, saved_state, subprocess_env
from jax.sharding import AbstractMesh

from vision_jax import config as config_lib
from vision_jax import optim, parallel, trainer
from vision_jax.data import pipeline
from vision_jax.errors import ConfigError
from vision_jax.logs import CollapseMonitor
from vision_jax.methods import METHODS
from vision_jax.methods.base import LossOutput, Method, MethodSetup, OnlineProbe, StepInfo
from vision_jax.models import MODELS
from vision_jax.schedules import RunLength

TINY = ["data.image_size=16", "model.widths=(8,16,32,32)", "batch_size=32"]
HEADS = {"byol": ["method.projection_hidden_dim=32", "method.prediction_hidden_dim=32"],
         "mocov3": ["method.hidden_dim=32"], "dino": ["method.hidden_dim=32", "method.out_dim=64"]}


def digits_run(tmp_path, method: str, *overrides: str) -> trainer.Run:
    config = config_lib.load_config(f"configs/ssl_digits.py:method={method},runlocal",
                                    [*TINY, *HEADS[method], *overrides])
    return trainer.Run(config, str(tmp_path))


def train_steps(run: trainer.Run, state, steps: int):
    batches = pipeline.train_batches(run.train_source, run.augment, global_batch=run.config.batch_size,
                                     seed=run.config.seed, start_step=int(state["step"]),
                                     batch_transform=run.batch_transform)
    step_fn = run.compile_step()
    for _ in range(steps):
        state, metrics = step_fn(state, parallel.to_global_batch(next(batches), parallel.batch_sharding(run.mesh)))
    return state, metrics


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def test_followers_are_an_ema_of_the_updated_params_and_stay_out_of_the_optimizer(tmp_path):
    run = digits_run(tmp_path, "byol", "optimizer.warmup_steps=0")  # the first step moves the params
    start = host(run.init_state())
    assert set(start["ema"]) == {"target_encoder", "target_projector"}
    assert "target_encoder" not in start["params"] and "predictor" in start["params"]
    # Followers start as copies of what they follow.
    jax.tree.map(np.testing.assert_array_equal, start["ema"]["target_encoder"], start["params"]["encoder"])
    # The optimizer state mirrors the trained params only.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(start["opt_state"])]
    assert any("predictor" in p for p in paths) and not any("target" in p for p in paths)

    after = host(train_steps(run, run.init_state(), 1)[0])
    m = 0.99  # the cosine schedule at step 0 is base_momentum
    for follower, online in (("target_encoder", "encoder"), ("target_projector", "projector")):
        jax.tree.map(lambda f, f0, p: np.testing.assert_allclose(f, m * f0 + (1 - m) * p, rtol=1e-5, atol=1e-7),
                     after["ema"][follower], start["ema"][follower], after["params"][online])
    moved = after["params"]["encoder"]["convs"][0]["kernel"] - start["params"]["encoder"]["convs"][0]["kernel"]
    assert np.abs(moved).max() > 0
    # The target ran in training mode: its BatchNorm statistics moved on their own.
    target_stats = after["model_state"]["target_encoder"]["norms"][0]["mean"]
    assert np.abs(target_stats).max() > 0


def test_each_methods_ema_momentum_is_the_cosine_from_base_to_one():
    total = 60
    setup = MethodSetup(lambda rngs: None, num_classes=10, length=RunLength(total, 6))
    for name, base in (("byol", 0.99), ("mocov3", 0.95), ("dino", 0.996)):
        method = METHODS.build(name, {"base_momentum": base}, setup=setup)
        for step in (0, 1, 17, 30, total - 1, total):
            # solo-learn MomentumUpdater.update_tau / moco-v3 adjust_moco_momentum / DINO's cosine_scheduler.
            expected = 1 - (1 - base) * (np.cos(np.pi * step / total) + 1) / 2
            np.testing.assert_allclose(float(method.ema_momentum(jnp.int32(step))), expected, rtol=1e-6,
                                       err_msg=f"{name} step {step}")


def test_followers_are_built_without_drop_path():
    setup = MethodSetup(lambda rngs: MODELS.build("vit", {"variant": "Ti", "patch_size": 4, "image_size": 8,
                                                          "drop_path_rate": 0.2}, rngs=rngs),
                        num_classes=10, length=RunLength(10, 5), model_name="vit")
    model = nnx.eval_shape(lambda: METHODS.build("byol", {}, setup=setup).init_model(nnx.Rngs(0)))
    rates = lambda module: [m.rate for _, m in nnx.iter_modules(module) if isinstance(m, nnx.Dropout)]
    assert max(rates(model.encoder)) == pytest.approx(0.2) and set(rates(model.target_encoder)) == {0.0}


def test_online_probe_learns_at_its_own_rate_without_weight_decay(tmp_path):
    probe_lr, lr, wd = 0.01, 2e-3, 0.5
    run = digits_run(tmp_path, "mocov3", f"online_probe.lr={probe_lr}", f"optimizer.lr={lr}",
                     f"optimizer.weight_decay={wd}", "optimizer.warmup_steps=0", "optimizer.grad_clip_norm=0")
    state = run.init_state()
    # The trainer's optimizer on a gradient of ones: AdamW's first update is -lr * (1 + wd * p) on
    # kernels (m_hat / sqrt(v_hat) = 1); the probe's is -probe_lr, with no decay.
    ones = jax.tree.map(jnp.ones_like, state["params"])
    updates = host(jax.jit(run.optimizer.tx.update)(ones, state["opt_state"], state["params"])[0])
    np.testing.assert_allclose(updates["online_probe"]["linear"]["kernel"], -probe_lr, rtol=1e-5)
    kernel = host(state["params"])["projector"]["hidden"][0]["kernel"]
    np.testing.assert_allclose(updates["projector"]["hidden"][0]["kernel"], -lr * (1 + wd * kernel), rtol=1e-5)


class _Linear(nnx.Module):
    num_features = 3

    def __init__(self, rngs):
        self.layer = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x, train):
        return self.layer(x)


class _ProbeOnly(Method):
    """A method whose own loss is 0: every gradient its objective has comes from the online probe."""

    def build_model(self, rngs):
        model = nnx.Module()
        model.encoder = self.make_encoder(rngs)
        return model

    def loss(self, model, batch, step):
        features = model.encoder(batch["image"], train=True)
        return LossOutput(0.0 * jnp.sum(features), {}, probe_features=features)


def test_online_probe_gradient_stops_at_the_features():
    setup = MethodSetup(_Linear, num_classes=2, length=RunLength(10, 5), online_probe=OnlineProbe(enabled=True))
    method = _ProbeOnly(setup)
    graphdef, params = nnx.split(method.init_model(nnx.Rngs(0)))
    batch = {"image": jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32),
             "label": jnp.asarray([0, 1, 1, 0, 1, 0])}
    step = StepInfo(jnp.int32(0), jax.random.key(0))
    grads = jax.grad(lambda p: method.objective(nnx.merge(graphdef, p), batch, step)[0])(params)
    grads = host(nnx.to_pure_dict(grads))
    assert np.abs(grads["online_probe"]["linear"]["kernel"]).max() > 0  # the probe learns
    jax.tree.map(lambda g: np.testing.assert_array_equal(g, 0.0), grads["encoder"])  # the encoder does not


def test_followers_are_sharded_by_the_rules_of_what_they_follow():
    setup = MethodSetup(lambda rngs: MODELS.build("resnet", {"depth": 18, "stem": "cifar"}, rngs=rngs),
                        num_classes=10, length=RunLength(100, 10), model_name="resnet")
    method = METHODS.build("byol", {}, setup=setup)
    model = nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    names = nnx.to_pure_dict(nnx.get_partition_spec(params))
    params = nnx.to_pure_dict(params)
    trained = {k: v for k, v in params.items() if k not in method.followers}
    state = {"params": trained, "ema": {k: params[k] for k in method.followers}, "model_state": {},
             "opt_state": optim.make_optimizer(config_lib.default_config().optimizer, 100).tx.init(trained)}
    shardings = parallel.state_shardings(jax.eval_shape(lambda: state), names, AbstractMesh((8, 1), ("data", "model")),
                                         "fsdp")
    conv = shardings["ema"]["target_encoder"]["blocks"][4]["conv2"]["kernel"].spec
    assert conv == jax.sharding.PartitionSpec(None, None, None, "data")
    specs = lambda tree: jax.tree.map(lambda s: s.spec, tree)
    assert specs(shardings["ema"]["target_encoder"]) == specs(shardings["params"]["encoder"])
    assert specs(shardings["ema"]["target_projector"]) == specs(shardings["params"]["projector"])


def test_dino_freezes_its_last_layer_in_epoch_one_moves_its_center_and_evaluates_the_teacher(tmp_path):
    run = digits_run(tmp_path, "dino")
    assert run.length.steps_per_epoch == 1437 // 32
    start = host(run.init_state())
    state, metrics = train_steps(run, run.init_state(), 2)
    after = host(state)
    np.testing.assert_array_equal(after["params"]["head"]["direction"], start["params"]["head"]["direction"])
    assert not np.allclose(after["params"]["head"]["bottleneck"]["kernel"], start["params"]["head"]["bottleneck"]["kernel"])
    assert np.abs(after["model_state"]["center"]).max() > 0
    assert float(metrics["teacher_temp"]) == pytest.approx(0.04)  # epoch 0 of the warmup
    # Evaluation sees the teacher, which now differs from the student.
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    features = run.representations("dino", state, with_online_probe=False)[0].outputs["features"](images)
    model = nnx.merge(run.graphdef, {**state["params"], **state["ema"]}, state["model_state"])
    np.testing.assert_allclose(features, model.teacher_encoder(images, train=False), rtol=1e-5, atol=1e-6)
    assert not np.allclose(features, model.encoder(images, train=False), atol=1e-4)


def test_online_probe_row_metrics_and_collapse_metric_in_a_run(tmp_path):
    config = config_lib.load_config("configs/ssl_digits.py:method=mocov3,runlocal",
                                    [*TINY, *HEADS["mocov3"], "eval_baselines=()", "log_every=1", "total_steps=4",
                                     "evaluators.linear_probe.epochs=1"])
    results = trainer.train(config, str(tmp_path))
    assert set(results) == {"mocov3", "mocov3 (online probe)"}
    assert set(results["mocov3 (online probe)"]) == {"classification/top1", "classification/top5"}  # the probe's own classifier
    assert "classification/top1" not in results["mocov3"]  # offline probes only in the method's row
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("train/online_probe/train_accuracy", "train/embedding_std", "train/ema_momentum",
                "train/update_norm"):
        assert key in record
    assert 0 < record["train/embedding_std_ratio"] < 2


def test_collapse_monitor_warns_once(capsys):
    class Logger:
        def info(self, message):
            print(message)

    monitor = CollapseMonitor(Logger(), threshold=0.1)
    monitor.observe(10, {"train/embedding_std_ratio": 0.8})
    monitor.observe(20, {"train/embedding_std_ratio": 0.02})
    monitor.observe(30, {"train/embedding_std_ratio": 0.01})
    out = capsys.readouterr().out
    assert out.count("collapsing") == 1 and "step 20" in out


def test_gradient_accumulation_equals_the_full_batch_update_without_batchnorm(tmp_path):
    # A ViT (LayerNorm, no BatchNorm) under a mean loss: 4 microbatches give the full-batch gradient.
    def one_step(accumulate: int):
        config = config_lib.load_config("configs/supervised_digits.py:runlocal", [
            "model.name=vit", "data.image_size=8", "batch_size=16", f"grad_accum_steps={accumulate}"])
        config.model = dict(name="vit", variant="Ti", depth=2, patch_size=4, image_size=8)
        run = trainer.Run(config, str(tmp_path / str(accumulate)))
        state, metrics = train_steps(run, run.init_state(), 1)
        return host(state["params"]), float(metrics["loss"]), float(metrics["grad_norm"])

    full, full_loss, full_grad_norm = one_step(1)
    accumulated, accumulated_loss, accumulated_grad_norm = one_step(4)
    np.testing.assert_allclose(accumulated_loss, full_loss, rtol=1e-5)
    # The mean of the microbatch gradients is the full-batch gradient (AdamW alone would hide its scale).
    np.testing.assert_allclose(accumulated_grad_norm, full_grad_norm, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accumulated, full)


def test_accumulation_that_does_not_split_the_batch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"grad_accum_steps=3 must be >= 1 and split the batch"):
        digits_run(tmp_path, "byol", "grad_accum_steps=3")


def test_mixup_trains_end_to_end_with_soft_labels(tmp_path):
    config = config_lib.load_config("configs/supervised_digits.py:runlocal", [
        "data.image_size=16", "model.widths=(8,16,32,32)", "data.batch_pp=mixup(0.4)", "eval_baselines=()"])
    run = trainer.Run(config, str(tmp_path / "peek"))
    batch = next(pipeline.train_batches(run.train_source, run.augment, global_batch=config.batch_size, seed=0,
                                        start_step=0, batch_transform=run.batch_transform))
    labels = batch["label"]
    assert labels.shape == (config.batch_size, 10)
    np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=1e-6)
    assert (labels.max(-1) < 1).any()  # mixed, not one-hot
    results = trainer.train(config, str(tmp_path / "run"))
    assert 0 <= results["supervised"]["classification/top1"] <= 100


def test_bad_teacher_student_input_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ConfigError, match=r"method.base_momentum=1.5 is not an EMA momentum"):
        digits_run(tmp_path, "byol", "method.base_momentum=1.5")
    config = config_lib.load_config("configs/ssl_digits.py:method=mocov3,runlocal", TINY)
    config.method.freeze_patch_embedding = True
    with pytest.raises(ConfigError, match=r"freeze_patch_embedding needs a ViT encoder.*'cnn'"):
        trainer.Run(config, str(tmp_path))
    config = config_lib.load_config("configs/ssl_digits.py:method=byol,runlocal", TINY)
    config.optimizer.groups.decoder = dict(pattern="^decoder/", lr_scale=0.1)
    with pytest.raises(ConfigError, match=r"pattern '\^decoder/' selects no parameter; parameters look like encoder/"):
        trainer.Run(config, str(tmp_path))
    # Multi-crop views for an encoder that cannot take the local crops' size (ViT, patch 4, 6 px crops).
    setup = MethodSetup(lambda rngs: MODELS.build("vit", {"variant": "Ti", "patch_size": 4, "image_size": 16},
                                                  rngs=rngs), 10, RunLength(10, 5), model_name="vit")
    dino = METHODS.build("dino", {}, setup=setup)
    with pytest.raises(ConfigError, match=r"'vit' encoder cannot take DINO's 6x6 crops"):
        dino.validate_batch({"global_views": (8, 2, 16, 16, 3), "local_views": (8, 4, 6, 6, 3)})
    dino.validate_batch({"global_views": (8, 2, 16, 16, 3), "local_views": (8, 4, 8, 8, 3)})
    with pytest.raises(ConfigError, match=r"augment.name='dino'"):
        dino.validate_batch({"views": (8, 2, 16, 16, 3)})


@pytest.mark.slow
def test_each_method_gives_the_same_losses_on_one_and_eight_devices():
    # MAE is left out: a plain gradient step like these, and its ViT takes minutes to compile for 8 devices.
    methods = ("byol", "mocov3", "dino", "dcgan")  # the recipes of tests/method_losses.py

    def curves(devices, sharding):
        result = subprocess.run([sys.executable, "tests/method_losses.py", sharding, *methods],
                                cwd=REPO, env=subprocess_env(devices), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    one, eight = curves(1, "replicate"), curves(8, "fsdp")
    assert (one["devices"], eight["devices"]) == (1, 8)
    for method in methods:
        np.testing.assert_allclose(eight[method], one[method], rtol=2e-4, err_msg=method)
        assert len(set(one[method])) > 1  # the losses move: agreement is not two constants


@pytest.mark.slow
def test_a_killed_byol_run_resumes_bitwise(tmp_path):
    config = "configs/ssl_digits.py:method=byol,runlocal"
    overrides = [f"--config.{o}" for o in [*TINY, *HEADS["byol"]]] + [
        "--config.total_steps=16", "--config.checkpoint.every_steps=4", "--config.log_every=1",
        "--config.evaluators.linear_probe.epochs=1", "--config.eval_baselines=()"]
    run_cli("vision_jax.train", config, tmp_path / "uninterrupted", *overrides)

    resumed = tmp_path / "resumed"
    kill_step = int(np.random.default_rng().integers(5, 14))
    # subprocess_env: the compilation cache, where the uninterrupted run left the train step.
    process = subprocess.Popen([sys.executable, "-m", "vision_jax.train", f"--config={config}",
                                f"--workdir={resumed}", *overrides], cwd=REPO, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith(f"step {kill_step}/"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert checkpoint_steps(resumed)[-1] < 16
    run_cli("vision_jax.train", config, resumed, *overrides)

    assert losses(resumed) == losses(tmp_path / "uninterrupted")
    expected, actual = saved_state(tmp_path / "uninterrupted", 16), saved_state(resumed, 16)
    assert set(expected["ema"]) == {"target_encoder", "target_projector"}
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                                         err_msg=f"{jax.tree_util.keystr(path)} (killed at {kill_step})"),
        expected, actual)
