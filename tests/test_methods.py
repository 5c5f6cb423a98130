"""Method losses against independent references: loop-written formulas of the papers and references."""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vision_jax import config as config_lib
from vision_jax import parallel, trainer
from vision_jax.data import pipeline
from vision_jax.methods import METHODS
from vision_jax.methods.base import MethodSetup, StepInfo, classification_loss, embedding_spread
from vision_jax.methods.byol import regression_loss
from vision_jax.methods.dino import dino_loss
from vision_jax.methods.mocov3 import contrastive_loss
from vision_jax.methods.simclr import nt_xent
from vision_jax.schedules import RunLength


def reference_nt_xent(z1, z2, temperature):
    """NT-Xent written out example by example (Chen et al. 2020, eq. 1)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        similarities = np.array([z[i] @ z[k] / temperature for k in range(2 * n) if k != i])
        positive = z[i] @ z[j] / temperature
        total += -positive + np.log(np.exp(similarities).sum())
    return total / (2 * n)


def test_nt_xent_matches_reference():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    loss, _ = nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.5)
    np.testing.assert_allclose(float(loss), reference_nt_xent(z1, z2, 0.5), rtol=1e-5)


def test_nt_xent_rewards_aligned_pairs():
    z1 = jax.random.normal(jax.random.key(0), (8, 16))
    aligned_loss, aligned_accuracy = nt_xent(z1, z1 * 2.0, 0.1)  # scale does not matter after l2-norm
    random_loss, _ = nt_xent(z1, jax.random.normal(jax.random.key(1), (8, 16)), 0.1)
    assert float(aligned_accuracy) == 1.0
    assert float(aligned_loss) < float(random_loss)


def _normalized(x):
    return x / np.linalg.norm(x)


def test_byol_loss_matches_the_papers_formula_written_out():
    rng = np.random.default_rng(1)
    p1, p2, z1, z2 = (rng.normal(size=(5, 7)) for _ in range(4))
    # Grill et al. 2020, eq. 2 and the symmetrized loss: ||p/|p| - z/|z|||^2 summed over both directions.
    expected = np.mean([np.sum((_normalized(p1[i]) - _normalized(z2[i])) ** 2)
                        + np.sum((_normalized(p2[i]) - _normalized(z1[i])) ** 2) for i in range(5)])
    actual = jnp.mean(regression_loss(jnp.asarray(p1), jnp.asarray(z2)) + regression_loss(jnp.asarray(p2), jnp.asarray(z1)))
    np.testing.assert_allclose(float(actual), expected, rtol=1e-5)


def test_byol_loss_sends_no_gradient_into_the_target():
    p, z = jax.random.normal(jax.random.key(0), (2, 4, 8))
    grad_z = jax.grad(lambda z: regression_loss(p, z).sum())(z)
    assert float(jnp.abs(grad_z).max()) == 0.0


def reference_moco_loss(q, k, temperature):
    """moco-v3 builder.contrastive_loss, example by example: CE(q_i . k_j / T, target i) * 2T."""
    q = np.array([_normalized(x) for x in q])
    k = np.array([_normalized(x) for x in k])
    total = 0.0
    for i in range(len(q)):
        logits = np.array([q[i] @ k[j] / temperature for j in range(len(k))])
        total += -logits[i] + np.log(np.exp(logits).sum())
    return total / len(q) * 2 * temperature


def test_mocov3_loss_matches_reference():
    rng = np.random.default_rng(2)
    q1, q2, k1, k2 = (rng.normal(size=(6, 5)) for _ in range(4))
    actual = contrastive_loss(jnp.asarray(q1), jnp.asarray(k2), 0.2) + contrastive_loss(jnp.asarray(q2), jnp.asarray(k1), 0.2)
    expected = reference_moco_loss(q1, k2, 0.2) + reference_moco_loss(q2, k1, 0.2)
    np.testing.assert_allclose(float(actual), expected, rtol=1e-5)


def reference_dino_loss(student, teacher, center, student_temp, teacher_temp):
    """main_dino.py DINOLoss.forward, element by element (views x examples x prototypes)."""
    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    total, terms = 0.0, 0
    for iq, t_view in enumerate(teacher):
        for v, s_view in enumerate(student):
            if v == iq:
                continue
            per_example = []
            for t, s in zip(t_view, s_view):
                q = softmax((t - center) / teacher_temp)
                log_p = np.log(softmax(s / student_temp))
                per_example.append(-sum(q[c] * log_p[c] for c in range(len(q))))
            total += np.mean(per_example)
            terms += 1
    return total / terms


def test_dino_loss_matches_reference_with_local_views():
    rng = np.random.default_rng(3)
    student = [rng.normal(size=(4, 6)) for _ in range(5)]  # 2 global + 3 local views
    teacher = [rng.normal(size=(4, 6)) for _ in range(2)]
    center = rng.normal(size=6) * 0.1
    actual = dino_loss([jnp.asarray(s) for s in student], [jnp.asarray(t) for t in teacher], jnp.asarray(center),
                       0.1, jnp.asarray(0.04))
    np.testing.assert_allclose(float(actual), reference_dino_loss(student, teacher, center, 0.1, 0.04), rtol=1e-4)


def test_soft_label_cross_entropy_matches_formula():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 4))
    soft = rng.dirichlet(np.ones(4), size=3)
    expected = np.mean([-np.sum(soft[i] * (logits[i] - np.log(np.exp(logits[i]).sum()))) for i in range(3)])
    loss, _ = classification_loss(jnp.asarray(logits), jnp.asarray(soft))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Integer labels are the one-hot case; smoothing moves eps/C of the mass to every class.
    labels = np.array([0, 3, 1])
    smoothed = np.full((3, 4), 0.1 / 4) + 0.9 * np.eye(4)[labels]
    expected = np.mean([-np.sum(smoothed[i] * (logits[i] - np.log(np.exp(logits[i]).sum()))) for i in range(3)])
    loss, _ = classification_loss(jnp.asarray(logits), jnp.asarray(labels), smoothing=0.1)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_embedding_spread_is_one_for_spread_embeddings_and_zero_at_collapse():
    spread = embedding_spread(jax.random.normal(jax.random.key(0), (4096, 64)))
    assert 0.95 < float(spread["embedding_std_ratio"]) < 1.05  # std of a unit vector's coordinate: 1/sqrt(d)
    np.testing.assert_allclose(float(spread["embedding_std"]), float(spread["embedding_std_ratio"]) / 8, rtol=1e-6)
    collapsed = jnp.ones((256, 64)) + 1e-4 * jax.random.normal(jax.random.key(1), (256, 64))
    assert float(embedding_spread(collapsed)["embedding_std_ratio"]) < 0.01


def _digits_run(tmp_path, recipe, *overrides, **method_options):
    config = config_lib.load_config(recipe, ["data.image_size=16", "model.widths=(8,16,32,32)", *overrides])
    config.method.update(method_options)
    return trainer.Run(config, str(tmp_path))


def _first_batch(run):
    batch = next(pipeline.train_batches(run.train_source, run.augment, global_batch=run.config.batch_size,
                                        seed=0, start_step=0))
    return parallel.to_global_batch(batch, parallel.batch_sharding(run.mesh))


def _model(run, state):
    return nnx.merge(run.graphdef, {**state["params"], **state["ema"]}, state["model_state"])


def test_simclr_method_loss_is_nt_xent_of_its_projections_at_the_configured_temperature(tmp_path):
    run = _digits_run(tmp_path, "configs/simclr_digits.py:runlocal", "method.temperature=0.3")
    state, batch = run.init_state(), _first_batch(run)
    out = run.method.loss(_model(run, state), batch, StepInfo(jnp.int32(0), jax.random.key(0)))
    # The same projections, computed apart (train-mode BN over both views at once, as the method).
    model = _model(run, state)
    views = batch["views"]
    z = model.projection(model.encoder(jnp.concatenate([views[:, 0], views[:, 1]]), train=True), train=True)
    n = views.shape[0]
    expected = reference_nt_xent(np.asarray(z[:n]), np.asarray(z[n:]), 0.3)
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-4)


def test_supervised_method_loss_applies_its_label_smoothing(tmp_path):
    run = _digits_run(tmp_path, "configs/supervised_digits.py:runlocal", label_smoothing=0.2)
    state, batch = run.init_state(), _first_batch(run)
    out = run.method.loss(_model(run, state), batch, StepInfo(jnp.int32(0), jax.random.key(0)))
    logits = np.asarray(_model(run, state)(batch["image"], train=True), np.float64)
    labels = np.asarray(batch["label"])
    targets = np.full(logits.shape, 0.2 / 10) + 0.8 * np.eye(10)[labels]
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(out.loss), np.mean(-(targets * log_softmax).sum(-1)), rtol=1e-5)


def test_on_device_views_change_with_the_step(tmp_path):
    # The step's rng folds in the step: the same state and host batch at steps 0 and 1 must see
    # different on-device views, so different losses (before any update).
    run = _digits_run(tmp_path, "configs/simclr_digits.py:runlocal,on_device")
    state, batch = run.init_state(), _first_batch(run)
    step_fn = jax.jit(run.train_step)
    _, at_zero = step_fn(state, batch)
    _, at_one = step_fn({**state, "step": state["step"] + 1}, batch)
    assert float(at_zero["loss"]) != float(at_one["loss"])
    _, again = step_fn(state, batch)
    assert float(again["loss"]) == float(at_zero["loss"])  # and a pure function of (seed, step)


SSL_HEADS = {"byol": ["method.projection_hidden_dim=32", "method.prediction_hidden_dim=32"],
             "mocov3": ["method.hidden_dim=32"], "dino": ["method.hidden_dim=32", "method.out_dim=64"]}


def _ssl_loss(tmp_path, method):
    """(run, model before the loss, model the loss ran on, batch, LossOutput) at step 0 of the digits recipe."""
    run = _digits_run(tmp_path, f"configs/ssl_digits.py:method={method},runlocal", *SSL_HEADS[method])
    state, batch = run.init_state(), _first_batch(run)
    model = _model(run, state)
    out = run.method.loss(model, batch, StepInfo(jnp.int32(0), jax.random.key(0)))
    return run, _model(run, state), model, batch, out


def _f64(x):
    return np.asarray(x, np.float64)


def _online_predictions(model, views):
    """The online branch of BYOL and MoCo v3 for each of the two views: predictor(projector(encoder))."""
    return [_f64(model.predictor(model.projector(model.encoder(views[:, v], train=True), train=True), train=True))
            for v in range(2)]


def test_byol_method_loss_pairs_each_views_prediction_with_the_other_views_target(tmp_path):
    _, model, _, batch, out = _ssl_loss(tmp_path, "byol")
    views = batch["views"]
    p = _online_predictions(model, views)
    z = [_f64(model.target_projector(model.target_encoder(views[:, v], train=True), train=True)) for v in range(2)]
    # Grill et al. 2020: ||p1/|p1| - z2'/|z2'|||^2 + ||p2/|p2| - z1'/|z1'|||^2, averaged over the batch.
    expected = np.mean([np.sum((_normalized(p[0][i]) - _normalized(z[1][i])) ** 2)
                        + np.sum((_normalized(p[1][i]) - _normalized(z[0][i])) ** 2) for i in range(len(p[0]))])
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-4)


def test_mocov3_method_loss_is_symmetric_infonce_of_predictor_queries_and_momentum_keys(tmp_path):
    _, model, _, batch, out = _ssl_loss(tmp_path, "mocov3")
    views = batch["views"]
    q = _online_predictions(model, views)
    k = [_f64(model.momentum_projector(model.momentum_encoder(views[:, v], train=True), train=True)) for v in range(2)]
    expected = reference_moco_loss(q[0], k[1], 0.2) + reference_moco_loss(q[1], k[0], 0.2)
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-4)


def test_dino_method_loss_and_center_update_follow_main_dino(tmp_path):
    _, model, trained, batch, out = _ssl_loss(tmp_path, "dino")
    global_views, local_views = batch["global_views"], batch["local_views"]
    n, num_local = global_views.shape[0], local_views.shape[1]
    both_globals = jnp.concatenate([global_views[:, 0], global_views[:, 1]])
    student = [_f64(model.head(model.encoder(both_globals, train=True), train=True))]
    student.append(_f64(model.head(model.encoder(jnp.concatenate([local_views[:, i] for i in range(num_local)]),
                                                 train=True), train=True)))
    student = [s[i * n:(i + 1) * n] for s in student for i in range(len(s) // n)]  # 2 global + num_local views
    teacher = _f64(model.teacher_head(model.teacher_encoder(both_globals, train=True), train=True))
    center = _f64(model.center[...])
    assert len(student) == 2 + num_local
    # Teacher temperature at step 0: the start of its warmup (0.04); student temperature 0.1.
    expected = reference_dino_loss(student, [teacher[:n], teacher[n:]], center, 0.1, 0.04)
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-4)
    # DINOLoss.update_center: center * 0.9 + mean of the teacher's outputs over the batch * 0.1.
    np.testing.assert_allclose(_f64(trained.center[...]), 0.9 * center + 0.1 * teacher.mean(0), rtol=1e-4, atol=1e-7)
    assert np.abs(teacher.mean(0)).max() > 1e-3  # the update is visible


def test_dino_teacher_temperature_and_frozen_last_layer_follow_the_epochs():
    steps_per_epoch = 4
    setup = MethodSetup(lambda rngs: None, num_classes=10, length=RunLength(60, steps_per_epoch))
    dino = METHODS.build("dino", dict(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
                                      freeze_last_layer_epochs=1), setup=setup)
    # main_dino.py: np.linspace(0.04, 0.07, 3) for epochs 0-2, then 0.07; constant within an epoch.
    per_epoch = [0.04, 0.055, 0.07, 0.07, 0.07]
    for step in range(20):
        np.testing.assert_allclose(float(dino.teacher_temp(step)), per_epoch[step // steps_per_epoch], rtol=1e-6)
    # cancel_gradients_last_layer: the prototypes stay fixed for the whole first epoch.
    last_layer = [g for g in dino.param_groups() if re.search(g.pattern, "head/direction")]
    assert [(g.frozen, g.frozen_steps) for g in last_layer] == [(False, steps_per_epoch)]
