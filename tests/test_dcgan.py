"""DCGAN: its losses against formulas written out, one step against a hand-sequenced PyTorch-style
step, and a tiny digits run end to end (pictures, logged metrics, bitwise resume, FID table with
its floor and protocol, the sample CLI, and the errors of bad input)."""
import functools
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx
from helpers import saved_state
from PIL import Image

from vision_jax import config as config_lib
from vision_jax import checkpoint, evaluate, parallel, sample, trainer, workdir
from vision_jax.data import pipeline
from vision_jax.errors import ConfigError
from vision_jax.methods.dcgan import discriminator_loss, generator_loss

RECIPE = "configs/dcgan_digits.py:runlocal"  # 16 px digits, base width 8, batch 16, 4 steps


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_losses_are_the_formulas_written_out():
    real, fake = [0.3, -1.2, 2.0, 0.0], [-0.5, 0.7, -2.5, 1.5]
    mean = lambda values: sum(values) / len(values)
    for smoothing in (0.0, 0.1):  # one-sided: the real target is 1 - s, the fake one stays 0
        target = 1.0 - smoothing
        expected = (mean([-(target * math.log(sigmoid(r)) + (1 - target) * math.log(1 - sigmoid(r))) for r in real])
                    + mean([-math.log(1 - sigmoid(f)) for f in fake]))
        got = discriminator_loss(jnp.array(real), jnp.array(fake), "non_saturating", smoothing)
        assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(generator_loss(jnp.array(fake))) == pytest.approx(mean([-math.log(sigmoid(f)) for f in fake]),
                                                                   rel=1e-6)
    hinge_d = mean([max(0.0, 1 - r) for r in real]) + mean([max(0.0, 1 + f) for f in fake])
    assert float(discriminator_loss(jnp.array(real), jnp.array(fake), "hinge")) == pytest.approx(hinge_d, rel=1e-6)
    assert float(generator_loss(jnp.array(fake), "hinge")) == pytest.approx(-mean(fake), rel=1e-6)


def first_batch(run: trainer.Run) -> dict:
    batches = pipeline.train_batches(run.train_source, run.augment, global_batch=run.config.batch_size,
                                     seed=run.config.seed, start_step=0)
    return parallel.to_global_batch(next(batches), parallel.batch_sharding(run.mesh))


@pytest.mark.parametrize("n_disc", [1, 2])
def test_one_step_updates_d_then_g_through_the_updated_d(tmp_path, n_disc):
    overrides = [f"method.n_disc={n_disc}"] if n_disc > 1 else []
    run = trainer.Run(config_lib.load_config(RECIPE, overrides), str(tmp_path))
    state, batch = run.init_state(), first_batch(run)
    params, model_state = jax.tree.map(jnp.copy, (state["params"], state["model_state"]))  # the step donates its input
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0)  # the trainer's key for step 0
    new_state, metrics = run.compile_step()(state, batch)  # n_disc=1: the program the run of the next test compiles

    @jax.jit
    def by_hand(params, model_state, images):
        """The PyTorch example's step: Adam(2e-4, betas (0.5, 0.999)) for each network; n_disc times
        D on its own real batch (rows k, k + n_disc, ...) and on G(z_k) detached; then G's
        non-saturating loss on the last fakes, through the updated D. Also G's step through the D of
        before its updates, which the method must not take."""
        bce_real = lambda logits: jnp.mean(jax.nn.softplus(-logits))  # -log sigmoid
        bce_fake = lambda logits: jnp.mean(jax.nn.softplus(logits))  # -log (1 - sigmoid)
        adam = optax.adam(2e-4, b1=0.5, b2=0.999)
        per_update = images.shape[0] // n_disc
        zs = [jax.random.normal(jax.random.fold_in(rng, k), (per_update, run.method.latent_dim))
              for k in range(n_disc)]

        def networks(d_params=None):
            model = nnx.merge(run.graphdef, params, model_state)
            if d_params is not None:
                nnx.update(model.discriminator, d_params)
            return model.discriminator, model.generator

        def adam_step(module, grads, moments=None):
            weights = nnx.state(module, nnx.Param)
            updates, moments = adam.update(grads, moments or adam.init(weights), weights)
            nnx.update(module, optax.apply_updates(weights, updates))
            return nnx.to_pure_dict(nnx.state(module, nnx.Param)), moments

        def g_loss(generator, discriminator):
            return bce_real(discriminator(generator(zs[-1], train=True), train=True))

        d_params, d_moments = None, None
        for k in range(n_disc):
            discriminator, generator = networks(d_params)
            real = images[k::n_disc]
            fake = jax.lax.stop_gradient(generator(zs[k], train=True))
            if k == n_disc - 1:
                d_real = jnp.mean(jax.nn.sigmoid(discriminator(real, train=True)))
            d_params, d_moments = adam_step(discriminator, nnx.grad(
                lambda d: bce_real(d(real, train=True)) + bce_fake(d(fake, train=True)))(discriminator), d_moments)
        discriminator, generator = networks(d_params)
        g_params, _ = adam_step(generator, nnx.grad(g_loss)(generator, discriminator))
        stale_discriminator, stale_generator = networks()
        stale_g_params, _ = adam_step(stale_generator, nnx.grad(g_loss)(stale_generator, stale_discriminator))
        return d_params, g_params, stale_g_params, d_real

    d_params, g_params, stale_g_params, d_real = by_hand(params, model_state, batch["image"])
    # Adam divides by sqrt(nu): float rounding in the gradient shows up to ~1e-7 in an update of 2e-4.
    close = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6)
    jax.tree.map(close, new_state["params"]["discriminator"], d_params)
    jax.tree.map(close, new_state["params"]["generator"], g_params)
    stale_gap = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                                 new_state["params"]["generator"], stale_g_params)))
    assert stale_gap > 1e-5  # through the old D, G would have moved elsewhere
    assert float(metrics["d_real"]) == pytest.approx(float(d_real), rel=1e-5)
    # n_disc Adam steps for D, one for G: each update left the other network's moments and count alone.
    assert [int(new_state["opt_state"][net][0].count) for net in ("discriminator", "generator")] == [n_disc, 1]


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_a_tiny_run_end_to_end(tmp_path, capsys):
    """Pictures, logged metrics, bitwise resume, the FID table with its floor and protocol, the
    sample CLI, and a linear probe refused by `evaluate`."""
    # The FID features: a supervised digits CNN's workdir, saved at initialization (training it changes nothing here).
    classifier = tmp_path / "classifier"
    features_config = config_lib.load_config("configs/supervised_digits.py:runlocal")
    checkpointer = checkpoint.Checkpointer(str(classifier), every_steps=0, keep=1, use_async=False)
    features_run = trainer.Run(features_config, str(classifier))
    checkpointer.save(1, features_run.init_state(), features_run.signature, force=True)
    checkpointer.close()
    workdir.write_config(features_config, str(classifier))

    gan = tmp_path / "gan"
    config = config_lib.load_config(f"{RECIPE},fid_features=checkpoint:{classifier}")
    few_samples = pytest.warns(UserWarning, match="FID: 100 samples of 128-d features, fewer than the dimension")
    with few_samples:  # runlocal's FID: 100 samples
        results = trainer.train(config, str(gan))
    out = capsys.readouterr().out

    # Pictures: 64 samples of 16 px, 8 per row, 2 px apart and around: 8 * (16 + 2) + 2 pixels a side.
    for step in (2, 4):
        assert read_png(gan / "pictures" / f"samples_step{step:06d}.png").shape == (146, 146, 3)
    events = [e for f in (gan / "tensorboard").iterdir() for e in tf.compat.v1.train.summary_iterator(str(f))]
    assert {(e.step, v.tag) for e in events for v in e.summary.value if v.tag == "pictures/samples"} == {
        (2, "pictures/samples"), (4, "pictures/samples")}
    records = [json.loads(line) for line in (gan / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "train/loss" in r][-1]
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_fake_after", "diversity_ratio"):
        assert np.isfinite(last[f"train/{key}"])
    assert last["train/loss"] == pytest.approx(last["train/d_loss"] + last["train/g_loss"], rel=1e-5)

    # FID/KID rows: the trained and the untrained generator, and the floor of real against real.
    fid = "fid/FID (vision_jax classifier features)"
    floor = "real data (two halves of digits[train[80%:]])"
    assert set(results) == {"dcgan", "random_init", floor}
    assert all(fid in row and "fid/KID x1000 (vision_jax classifier features)" in row for row in results.values())
    assert results[floor][fid] < min(results["dcgan"][fid], results["random_init"][fid])
    assert ("100 generated images against the 360 real images of digits[train[80%:]], in the pooled 'features' "
            f"output of supervised/cnn at step 1 in {classifier}") in out

    # Resume: without the last checkpoint, the same command resumes at step 2 and ends bitwise equal.
    final = saved_state(gan, 4)
    shutil.rmtree(gan / "checkpoints" / "4")
    (gan / "results.json").unlink()
    with few_samples:
        assert trainer.train(config, str(gan)) == results
    assert "resuming from step 2" in capsys.readouterr().out
    jax.tree.map(np.testing.assert_array_equal, saved_state(gan, 4), final)

    # The sample CLI: 64 images are the run's own last grid; --interpolate draws 10 // 5 rows of 5,
    # each walking from the latent of seed 2r to that of seed 2r + 1, endpoints included.
    sample.main([f"--workdir={gan}", "--num=64", f"--out={tmp_path / 'grid.png'}"])
    last_grid = read_png(gan / "pictures" / "samples_step000004.png")
    np.testing.assert_array_equal(read_png(tmp_path / "grid.png"), last_grid)
    sample.main([f"--workdir={gan}", "--num=10", "--steps=5", "--interpolate", f"--out={tmp_path / 'walk.png'}"])
    assert read_png(tmp_path / "walk.png").shape == (2 * 18 + 2, 5 * 18 + 2, 3)
    generator = sample.Generator(str(gan))
    walks = generator.interpolations(np.array([0, 2]), np.array([1, 3]), steps=5)
    np.testing.assert_allclose(walks[:, 0], generator.samples(np.array([0, 2])), atol=1e-6)
    np.testing.assert_allclose(walks[:, -1], generator.samples(np.array([1, 3])), atol=1e-6)
    assert (np.abs(walks[:, 2] - walks[:, 0]).max(axis=(1, 2, 3)) > 100 * 1e-6).all()  # the middle is another image

    # A linear probe on a GAN has no features to read: `evaluate` says which evaluator fits.
    probe = config_lib.load_config(RECIPE)
    probe.evaluators.linear_probe = dict(epochs=2)
    with pytest.raises(ConfigError, match=r"Evaluator 'linear_probe' reads the 'features' output, which method "
                                          r"'dcgan' does not give \(it gives samples; evaluators that read what it "
                                          r"gives: fid\)"):
        evaluate.evaluate(probe, str(gan))


def test_a_generator_that_does_not_make_the_datas_size_is_refused(tmp_path):
    run = trainer.Run(config_lib.load_config(RECIPE, ["model.image_size=32"]), str(tmp_path))
    with pytest.raises(ConfigError, match=r"The generator makes 32x32x3 images but the data are 16x16x3: set "
                                          r"--config.model.image_size=16"):
        run.method.validate_batch({"image": first_batch(run)["image"].shape})  # what the trainer checks first


def test_collapse_and_a_winning_discriminator_are_warned_once_training_is_under_way(tmp_path):
    method = trainer.Run(config_lib.load_config(RECIPE, ["total_steps=1000"]), str(tmp_path)).method
    healthy = {"train/diversity_ratio": 0.8, "train/d_real": 0.7, "train/d_fake": 0.3}
    collapsed = {**healthy, "train/diversity_ratio": 0.05}
    assert method.training_warnings(300, collapsed) == {}  # young generators make nearly one image
    assert list(method.training_warnings(500, collapsed)) == ["collapse"]
    assert method.training_warnings(500, healthy) == {}
    winning = {**healthy, "train/d_real": 0.995, "train/d_fake": 0.004}
    assert list(method.training_warnings(10, winning)) == ["discriminator_wins"]
