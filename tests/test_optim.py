"""Learning rates, momentum, weight decay and clipping, measured on the updates the optimizer makes
(and on the value the trainer logs) and compared with the formulas written out here.

The pattern for every schedule: write the formula in the test, apply the optimizer to a known
gradient, and compare the update at steps 0, 1, the end of warmup and the last step (here: all).
"""
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vision_jax import config as config_lib
from vision_jax import optim, trainer
from vision_jax.errors import ConfigError

TOTAL, WARMUP, PEAK = 10, 3, 0.4
STEPS = range(TOTAL)  # 0, 1, the end of warmup (3) and the last step (9) among them


def warmup_cosine(step: int, peak: float = PEAK, warmup: int = WARMUP, total: int = TOTAL) -> float:
    """Linear warmup from 0 to `peak` over `warmup` steps, then a cosine from `peak` down to 0 at `total`."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def warmup_constant(step: int, peak: float = PEAK, warmup: int = WARMUP) -> float:
    return peak * min(step / warmup, 1.0)


def optimizer_config(**fields) -> ml_collections.ConfigDict:
    opt = config_lib.default_config().optimizer
    opt.update(dict(lr=PEAK, warmup_steps=WARMUP, weight_decay=0.0, momentum=0.0, grad_clip_norm=0.0))
    opt.update(fields)
    return opt


# A 2-D kernel (decayed, LARS-adapted) and a bias (neither), with fixed gradients of norm ~1.
PARAMS = {"kernel": jnp.asarray([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]), "bias": jnp.asarray([0.3, -0.2, 0.1])}
GRADS = {"kernel": jnp.asarray([[0.6, -0.2, 0.1], [-0.4, 0.3, 0.5]]), "bias": jnp.asarray([1.0, -0.5, 0.25])}


def updates_per_step(opt_config, grads=GRADS, steps: int = TOTAL):
    """[(params the optimizer saw, update it returned)] for `steps` steps with the same gradient."""
    tx = optim.make_optimizer(opt_config, TOTAL).tx
    update = jax.jit(tx.update)
    params, state, history = PARAMS, tx.init(PARAMS), []
    for _ in range(steps):
        updates, state = update(grads, state, params)
        history.append((jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, updates)))
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return history


def assert_close(actual, expected, step, rtol=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-7, err_msg=f"step {step}")


@pytest.mark.parametrize("schedule,formula", [("cosine", warmup_cosine), ("constant", warmup_constant)])
def test_sgd_update_is_minus_the_scheduled_lr_times_the_gradient(schedule, formula):
    for step, (_, updates) in enumerate(updates_per_step(optimizer_config(name="sgd", schedule=schedule))):
        for name in PARAMS:
            assert_close(updates[name], -formula(step) * np.asarray(GRADS[name]), step)


def test_adamw_update_magnitude_is_the_scheduled_lr():
    # With a constant gradient Adam's bias-corrected moments are m = g and v = g^2, so every update
    # is -lr * g / (|g| + eps) = -lr * sign(g) (float32 bias corrections leave ~1e-5 relative).
    for step, (_, updates) in enumerate(updates_per_step(optimizer_config(name="adamw"))):
        for name in PARAMS:
            assert_close(updates[name], -warmup_cosine(step) * np.sign(GRADS[name]), step, rtol=1e-4)


def test_adamw_betas_set_the_moment_decays_as_pytorch_adamw_writes_them():
    # MAE's betas (0.9, 0.95), gradients that change sign: m_t = b1 m + (1 - b1) g, v_t = b2 v +
    # (1 - b2) g^2, update -lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + 1e-8).
    b1, b2 = 0.9, 0.95
    grads = [jax.tree.map(lambda g, s=step: g * (-1.0) ** s * (1 + 0.1 * s), GRADS) for step in range(TOTAL)]
    tx = optim.make_optimizer(optimizer_config(name="adamw", betas=(b1, b2)), TOTAL).tx
    update, state, m, v = jax.jit(tx.update), tx.init(PARAMS), 0.0, 0.0
    for step in range(TOTAL):
        updates, state = update(grads[step], state, PARAMS)
        g = np.asarray(grads[step]["bias"], np.float64)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        expected = -warmup_cosine(step) * (m / (1 - b1 ** (step + 1))) / (np.sqrt(v / (1 - b2 ** (step + 1))) + 1e-8)
        assert_close(updates["bias"], expected, step, rtol=1e-4)
    with pytest.raises(ConfigError, match="betas"):
        optim.make_optimizer(optimizer_config(name="adamw", betas=(0.9, 1.5)), TOTAL)


def test_sgd_momentum_accumulates_gradients_before_the_learning_rate():
    # optax.sgd: trace then scale: u_t = -lr(t) * sum_{j<=t} 0.9^(t-j) g = -lr(t) g (1 - 0.9^(t+1)) / 0.1.
    for step, (_, updates) in enumerate(updates_per_step(optimizer_config(name="sgd", momentum=0.9))):
        gain = (1 - 0.9 ** (step + 1)) / (1 - 0.9)
        assert_close(updates["bias"], -warmup_cosine(step) * gain * np.asarray(GRADS["bias"]), step)


def test_lars_momentum_accumulates_learning_rate_scaled_steps_and_spares_biases():
    # optax.lars scales by lr before the momentum trace: u_t = -sum_{j<=t} 0.9^(t-j) lr(j) g.
    # Biases get neither weight decay nor the trust ratio (SimCLR, BYOL), so this is their update.
    config = optimizer_config(name="lars", momentum=0.9, weight_decay=0.1)
    for step, (_, updates) in enumerate(updates_per_step(config)):
        accumulated = sum(0.9 ** (step - j) * warmup_cosine(j) for j in range(step + 1))
        assert_close(updates["bias"], -accumulated * np.asarray(GRADS["bias"]), step)


def test_lars_scales_kernel_updates_by_the_layer_trust_ratio():
    # You et al. 2017 as SimCLR implements it: g' = g + wd w, then
    # u = -lr * 0.001 * |w| / |g'| * g' (norms over the whole kernel).
    wd = 0.1
    for step, (params, updates) in enumerate(updates_per_step(optimizer_config(name="lars", weight_decay=wd))):
        w = params["kernel"]
        decayed = np.asarray(GRADS["kernel"]) + wd * w
        trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(decayed)
        assert_close(updates["kernel"], -warmup_cosine(step) * trust * decayed, step)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_shrinks_kernels_by_lr_times_wd_and_leaves_biases(name):
    # Zero gradients isolate the decay: decoupled (AdamW) or added to the gradient (SGD), either
    # way the kernel moves by -lr(t) * wd * w and the bias does not move.
    wd = 0.25
    zero = jax.tree.map(jnp.zeros_like, GRADS)
    for step, (params, updates) in enumerate(updates_per_step(optimizer_config(name=name, weight_decay=wd), zero)):
        assert_close(updates["kernel"], -warmup_cosine(step) * wd * params["kernel"], step)
        np.testing.assert_array_equal(updates["bias"], 0.0)


def test_gradient_clipping_rescales_the_global_norm():
    norm = math.sqrt(sum(float(jnp.sum(g ** 2)) for g in GRADS.values()))
    clip = norm / 4  # the gradients are 4 times too large: each is divided by 4
    for step, (_, updates) in enumerate(updates_per_step(optimizer_config(name="sgd", grad_clip_norm=clip))):
        for name in PARAMS:
            assert_close(updates[name], -warmup_cosine(step) * np.asarray(GRADS[name]) / 4, step)
    # Below the threshold nothing changes.
    unclipped = updates_per_step(optimizer_config(name="sgd", grad_clip_norm=2 * norm), steps=WARMUP + 1)[-1][1]
    assert_close(unclipped["bias"], -PEAK * np.asarray(GRADS["bias"]), WARMUP)


def test_trainer_logs_the_learning_rate_each_update_used(tmp_path):
    # The record for step s (s updates done) reports the rate of update s - 1 (0-based).
    config = config_lib.load_config("configs/supervised_digits.py:runlocal", [
        "data.image_size=16", "model.widths=(8,16,32,32)", f"total_steps={TOTAL}", "log_every=1",
        f"optimizer.lr={PEAK}", f"optimizer.warmup_steps={WARMUP}", "optimizer.schedule=cosine",
        "checkpoint.every_steps=100", "eval_baselines=()"])
    config.evaluators = ml_collections.ConfigDict()
    trainer.train(config, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["train/learning_rate"] for r in records if "train/learning_rate" in r}
    assert sorted(logged) == list(range(1, TOTAL + 1))
    for step, value in logged.items():
        # float32 schedule against the float64 formula: 1 + cos(pi p) loses digits as p nears 1.
        assert value == pytest.approx(warmup_cosine(step - 1), rel=1e-5, abs=1e-9), step
