"""config.init: a run's encoder starts from another run's checkpoint (online encoder or EMA
teacher, latest or a given step), read-only and without the source's config.json; heads start
fresh; ViT position embeddings are resampled; every bad source is a one-line error."""
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import checkpoint, init_from
from vision_jax import config as config_lib
from vision_jax.errors import ConfigError, MissingDataError
from vision_jax.trainer import Run

TINY_CNN = ["data.image_size=16", "model.widths=(8,16,16,16)", "batch_size=8"]
BYOL_HEADS = ["method.projection_hidden_dim=16", "method.prediction_hidden_dim=16"]


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def save(run: Run, state, step: int) -> None:
    checkpointer = checkpoint.Checkpointer(run.workdir, every_steps=0, keep=5, use_async=False)
    checkpointer.save(step, state, run.signature, force=True)
    checkpointer.close()


def shifted(tree, amount: float):
    return jax.tree.map(lambda x: x + amount, tree)


def fine_tune_run(workdir, source: str, *overrides: str) -> Run:
    config = config_lib.load_config("configs/supervised_digits.py:runlocal",
                                    [*TINY_CNN, f"init.source={source}", *overrides])
    return Run(config, str(workdir))


@pytest.fixture(scope="module")
def byol_source(tmp_path_factory):
    """A BYOL workdir with checkpoints at steps 1 and 2 whose online encoder, EMA target and BatchNorm
    statistics all differ; no config.json; read-only."""
    workdir = tmp_path_factory.mktemp("byol_source")
    run = Run(config_lib.load_config("configs/ssl_digits.py:method=byol,runlocal", [*TINY_CNN, *BYOL_HEADS]),
              str(workdir))
    state = run.init_state()
    states = {}
    for step in (1, 2):
        state = {**state, "step": jnp.asarray(step, jnp.int32),
                 "params": shifted(state["params"], 0.5), "ema": shifted(state["ema"], -0.25),
                 "model_state": shifted(state["model_state"], 0.125)}
        save(run, state, step)
        states[step] = host(state)
    os.chmod(workdir / "checkpoints", stat.S_IRUSR | stat.S_IXUSR)
    yield workdir, states
    os.chmod(workdir / "checkpoints", stat.S_IRWXU)


def test_init_takes_the_chosen_network_bitwise_and_starts_the_heads_fresh(tmp_path, byol_source):
    source, saved = byol_source
    assert not (source / "config.json").exists()
    cases = {  # overrides -> (step, network whose weights the new encoder must hold)
        (): (2, "encoder"),
        ("init.network=target_encoder",): (2, "target_encoder"),
        ("init.step=1",): (1, "encoder"),
    }
    for overrides, (step, network) in cases.items():
        run = fine_tune_run(tmp_path, str(source), *overrides)
        state = host(run.init_state())
        group = "params" if network == "encoder" else "ema"
        jax.tree.map(np.testing.assert_array_equal, state["params"]["encoder"], saved[step][group][network])
        jax.tree.map(np.testing.assert_array_equal, state["model_state"]["encoder"],
                     saved[step]["model_state"][network])
        assert run.origin == init_from.Origin(str(source), step, "byol", network)
        assert f"from the {network} of byol run {source} at step {step}" in run.results_caption(step)
    # The classifier is the new run's own fresh one, as without init.
    fresh = host(run.init_state(from_init=False))
    jax.tree.map(np.testing.assert_array_equal, state["params"]["classifier"], fresh["params"]["classifier"])
    # A single checkpoint folder is a source too.
    run = fine_tune_run(tmp_path, str(source / "checkpoints" / "1"))
    jax.tree.map(np.testing.assert_array_equal, host(run.init_state())["params"]["encoder"],
                 saved[1]["params"]["encoder"])


def keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The Keys cubic convolution kernel (PyTorch's and PIL's bicubic, a = -0.5)."""
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def resample_matrix(old: int, new: int) -> np.ndarray:
    """[new, old] weights of antialiased bicubic upsampling as timm's resample_abs_pos_embed calls it
    (F.interpolate(mode='bicubic', antialias=True)): half-pixel centers, taps outside the grid dropped
    and the rest renormalized (PIL's convention)."""
    centers = (np.arange(new) + 0.5) * old / new - 0.5
    weights = keys_cubic(np.arange(old)[None, :] - centers[:, None])
    return weights / weights.sum(axis=1, keepdims=True)


def test_vit_position_embedding_is_resampled_to_the_new_grid(tmp_path):
    vit = ["model.name=vit", "model.variant=Ti", "model.patch_size=4", "model.pool=cls",
           "model.depth=1", "batch_size=8"]
    source_run = Run(config_lib.load_config("configs/supervised_digits.py:runlocal",
                                            [*vit, "data.image_size=8", "model.image_size=8"]), str(tmp_path / "src"))
    source_state = source_run.init_state()
    save(source_run, source_state, 1)
    run = Run(config_lib.load_config("configs/supervised_digits.py:runlocal",
                                     [*vit, "data.image_size=16", "model.image_size=16",
                                      f"init.source={tmp_path / 'src'}"]), str(tmp_path / "new"))
    old = np.asarray(source_state["params"]["encoder"]["pos_embedding"])[0]  # [1 + 2*2, width]
    encoder = run.init_state()["params"]["encoder"]
    new = np.asarray(encoder["pos_embedding"])[0]  # [1 + 4*4, width]
    m = resample_matrix(2, 4)
    grid = old[1:].reshape(2, 2, -1)
    expected = np.einsum("yi,xj,ijd->yxd", m, m, grid).reshape(16, -1)
    np.testing.assert_array_equal(new[0], old[0])  # the cls token's slot is kept
    np.testing.assert_allclose(new[1:], expected, rtol=1e-5, atol=1e-6)
    # Everything else of the encoder is taken as it was.
    np.testing.assert_array_equal(np.asarray(encoder["patch_embed"]["kernel"]),
                                  np.asarray(source_state["params"]["encoder"]["patch_embed"]["kernel"]))


def test_bad_sources_are_one_line_errors(tmp_path, byol_source):
    source, _ = byol_source
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained_too" / "checkpoints").mkdir(parents=True)
    gan = tmp_path / "gan"
    gan_run_state = {"params": {"generator": {"kernel": jnp.ones((2, 2))}, "discriminator": {"kernel": jnp.ones(2)}}}
    for workdir, method in ((gan, "dcgan"), (tmp_path / "gan_unnamed", "")):
        checkpointer = checkpoint.Checkpointer(str(workdir), every_steps=0, keep=1, use_async=False)
        checkpointer.save(1, gan_run_state, {"model": {"name": "dcgan_discriminator"}, "method": method,
                                             "param_shapes": {}}, force=True)
        checkpointer.close()
    cases = [
        (tmp_path / "nowhere", MissingDataError,
         r"config\.init\.source=.*nowhere.* does not exist; give a vision_jax workdir"),
        (tmp_path / "untrained", MissingDataError,
         r"holds no checkpoint \(no .*/checkpoints folder\): train that run first"),
        (tmp_path / "untrained_too", MissingDataError, r"holds no checkpoint \(.*checkpoints is empty\)"),
        (gan, ConfigError, r"is a dcgan run: its networks \(discriminator, generator\) generate images"),
        (tmp_path / "gan_unnamed", ConfigError, r"is a GAN run"),
    ]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            fine_tune_run(tmp_path / "new", str(path)).init_state()
    with pytest.raises(ConfigError, match=r"parameter convs/0/kernel has shape \(3, 3, 3, 8\) there but "
                                          r"\(3, 3, 3, 4\) in this model \(cnn\)"):
        fine_tune_run(tmp_path / "new", str(source), "model.widths=(4,16,16,16)").init_state()
    with pytest.raises(ConfigError, match=r"has no parameter convs/4/kernel"):
        fine_tune_run(tmp_path / "new", str(source), "model.widths=(8,16,16,16,16)").init_state()
    with pytest.raises(ConfigError, match=r"config\.init\.network='teacher': .* has no such network; it has "
                                          r"encoder, online_probe, predictor, projector, target_encoder"):
        fine_tune_run(tmp_path / "new", str(source), "init.network=teacher").init_state()
    with pytest.raises(MissingDataError, match=r"config\.init\.step=7: .* it has steps 1, 2"):
        fine_tune_run(tmp_path / "new", str(source), "init.step=7").init_state()


def test_pretrained_is_the_former_name_of_init_source():
    config = config_lib.load_config("configs/supervised_digits.py:runlocal", ["pretrained=/w/model.safetensors"])
    assert (config.init.source, config.pretrained) == ("/w/model.safetensors", "")
    with pytest.raises(ConfigError, match=r"both name a source; keep only --config\.init\.source"):
        config_lib.load_config("configs/supervised_digits.py:runlocal", ["pretrained=/w/a.safetensors",
                                                                          "init.source=/w/b"])
