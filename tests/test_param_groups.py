"""Parameter groups: learning-rate and weight-decay scales, freezing for a run or its first steps,
per-parameter clipping and the bad-input messages, each checked against values worked out here."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vision_jax import config as config_lib
from vision_jax import optim
from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import MethodSetup
from vision_jax.models import MODELS
from vision_jax.schedules import RunLength

PARAMS = {"encoder": {"conv": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}},
          "head": {"direction": jnp.ones((2, 3)) * 2.0}, "online_probe": {"kernel": jnp.ones((2, 2)) * 3.0}}


def opt_config(**fields):
    c = config_lib.default_config().optimizer
    c.update(dict(warmup_steps=0, schedule="constant", weight_decay=0.0), **fields)
    return c


def run_steps(tx, params, grads, steps):
    state = tx.init(params)
    history = [params]
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history, state


def test_each_parameter_belongs_to_the_first_group_that_matches():
    groups = [optim.ParamGroup("probe", r"^online_probe/"), optim.ParamGroup("kernels", r"kernel$")]
    labels = optim.assign_groups(PARAMS, groups)
    assert labels == {"encoder": {"conv": {"kernel": "kernels", "bias": "default"}},
                      "head": {"direction": "default"}, "online_probe": {"kernel": "probe"}}


def test_lr_scale_and_wd_scale_change_the_sgd_step_as_written():
    # Plain SGD (no momentum): p <- p - lr * scale * (g + wd * wd_scale * p) on kernels.
    config = opt_config(name="sgd", momentum=0.0, lr=0.1, weight_decay=0.5)
    groups = [optim.ParamGroup("probe", r"^online_probe/", lr_scale=10.0, wd_scale=0.0)]
    tx = optim.make_optimizer(config, 10, groups, PARAMS).tx
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    history, _ = run_steps(tx, PARAMS, grads, 1)
    new = history[1]
    np.testing.assert_allclose(new["online_probe"]["kernel"], 3.0 - 0.1 * 10 * 1.0)  # no decay
    np.testing.assert_allclose(new["encoder"]["conv"]["kernel"], 1.0 - 0.1 * (1.0 + 0.5 * 1.0))
    np.testing.assert_allclose(new["encoder"]["conv"]["bias"], 1.0 - 0.1 * 1.0)  # biases are never decayed
    np.testing.assert_allclose(new["head"]["direction"], 2.0 - 0.1 * (1.0 + 0.5 * 2.0))


def test_a_group_frozen_for_its_first_steps_then_starts_as_a_fresh_adam():
    config = opt_config(name="adamw", lr=0.01, weight_decay=0.1)
    groups = [optim.ParamGroup("last_layer", r"^head/direction$", frozen_steps=3)]
    tx = optim.make_optimizer(config, 10, groups, PARAMS).tx
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
    history, _ = run_steps(tx, PARAMS, grads, 4)
    for step in range(1, 4):  # no update and no weight decay while frozen
        np.testing.assert_array_equal(history[step]["head"]["direction"], PARAMS["head"]["direction"])
    # The first unfrozen update is Adam's first step (its moments and count were held at zero):
    # m_hat / sqrt(v_hat) = g / |g| = 1, plus decoupled decay, times lr.
    expected = 2.0 - 0.01 * (1.0 + 0.1 * 2.0)
    np.testing.assert_allclose(history[4]["head"]["direction"], expected, rtol=1e-5)
    # Meanwhile the other parameters moved from the first step.
    assert not np.allclose(history[1]["encoder"]["conv"]["kernel"], PARAMS["encoder"]["conv"]["kernel"])


def test_a_frozen_groups_adam_moments_never_see_its_frozen_steps_gradients():
    # The gradients of the frozen steps (-3) differ from the first thawed one (0.5): moments that
    # had seen them would give a negative first update; held ones give Adam's first step, -lr * 1.
    config = opt_config(name="adamw", lr=0.01, weight_decay=0.0)
    tx = optim.make_optimizer(config, 10, [optim.ParamGroup("last_layer", r"^head/direction$", frozen_steps=3)],
                              PARAMS).tx
    params, state = PARAMS, tx.init(PARAMS)
    for gradient in (-3.0, -3.0, -3.0, 0.5):
        updates, state = tx.update(jax.tree.map(lambda p: jnp.full_like(p, gradient), PARAMS), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["head"]["direction"], 2.0 - 0.01, rtol=1e-5)


def test_a_frozen_group_never_moves():
    config = opt_config(name="lars", lr=1.0, weight_decay=1e-3)
    tx = optim.make_optimizer(config, 10, [optim.ParamGroup("encoder", r"^encoder/", frozen=True)], PARAMS).tx
    history, _ = run_steps(tx, PARAMS, jax.tree.map(jnp.ones_like, PARAMS), 3)
    jax.tree.map(np.testing.assert_array_equal, history[3]["encoder"], PARAMS["encoder"])
    assert not np.allclose(history[3]["head"]["direction"], PARAMS["head"]["direction"])


def test_per_parameter_clipping_is_dinos_clip_gradients():
    config = opt_config(name="sgd", momentum=0.0, lr=1.0, grad_clip_norm=1.0, grad_clip_mode="per_parameter")
    tx = optim.make_optimizer(config, 10).tx
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
    params = jax.tree.map(jnp.zeros_like, grads)
    updates, _ = tx.update(grads, tx.init(params), params)
    # dino utils.clip_gradients: coefficient clip / (norm + 1e-6) when below 1, per parameter.
    np.testing.assert_allclose(updates["a"], -np.array([3.0, 4.0]) * (1.0 / (5.0 + 1e-6)), rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -np.array([0.3, 0.4]), rtol=1e-6)  # norm 0.5: untouched


def test_weight_decay_follows_its_cosine():
    config = opt_config(name="sgd", momentum=0.0, lr=1.0, weight_decay=0.04, weight_decay_end=0.4)
    tx = optim.make_optimizer(config, 4).tx
    params = {"w": jnp.ones((2, 2))}
    history, _ = run_steps(tx, params, {"w": jnp.zeros((2, 2))}, 4)
    expected = 1.0
    for step in range(4):
        wd = 0.4 - (0.4 - 0.04) * (1 + np.cos(np.pi * step / 4)) / 2
        expected *= 1.0 - wd
        np.testing.assert_allclose(history[step + 1]["w"], expected, rtol=1e-5)


def test_group_config_errors_name_the_problem():
    config = opt_config()
    with pytest.raises(ConfigError, match=r"pattern '\^decoder/' selects no parameter; parameters look like "
                                          r"encoder/conv/bias, encoder/conv/kernel"):
        optim.make_optimizer(config, 10, [optim.ParamGroup("decoder", r"^decoder/")], PARAMS)
    with pytest.raises(ConfigError, match=r"belongs to an earlier group"):
        optim.make_optimizer(config, 10, [optim.ParamGroup("all", r"."), optim.ParamGroup("head", r"^head/")], PARAMS)
    with pytest.raises(ConfigError, match=r"freeze every parameter, so nothing would train"):
        optim.make_optimizer(config, 10, [optim.ParamGroup("all", r".", frozen=True)], PARAMS)
    with pytest.raises(ConfigError, match=r"is not a regex"):
        optim.make_optimizer(config, 10, [optim.ParamGroup("bad", r"(")], PARAMS)
    groups = config_lib.default_config().optimizer.groups
    groups.head = dict(pattern="^head/", lr_scal=2.0)
    with pytest.raises(ConfigError, match=r"groups.head has unknown option\(s\) \['lr_scal'\]"):
        optim.groups_from_config(groups)


def test_mocov3_keeps_a_vits_random_patch_projection_fixed_for_the_whole_run():
    # moco-v3 --stop-grad-conv1: the patch projection never moves; everything else does.
    setup = MethodSetup(lambda rngs: MODELS.build("vit", {"variant": "Ti", "patch_size": 4, "image_size": 8}, rngs=rngs),
                        num_classes=10, length=RunLength(10, 5), model_name="vit")
    method = METHODS.build("mocov3", {"freeze_patch_embedding": True, "hidden_dim": 16, "projection_dim": 8},
                           setup=setup)
    model = nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0)))
    abstract = {k: v for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items() if k not in method.followers}
    params = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), abstract)
    tx = method.make_optimizer(opt_config(name="sgd", momentum=0.9, lr=0.1, weight_decay=0.1), abstract).tx
    history, _ = jax.jit(lambda p: run_steps(tx, p, jax.tree.map(jnp.ones_like, p), 3))(params)
    jax.tree.map(np.testing.assert_array_equal, history[3]["encoder"]["patch_embed"], params["encoder"]["patch_embed"])
    assert not np.allclose(history[3]["encoder"]["cls_token"], params["encoder"]["cls_token"])
