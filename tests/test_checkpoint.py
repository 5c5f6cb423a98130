"""Checkpoints: what is saved is what comes back, leaf by leaf, and keep-N / every-N hold.

The resume test (test_resume.py) compares two runs that both went through a save and a restore,
so a bug on the save side can cancel out there; these tests compare with the state in memory.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import checkpoint, trainer
from vision_jax import config as config_lib

CONFIGS = {
    # Small CNN: params, BatchNorm statistics, Adam moments and counts, step, rng.
    "cnn": ("configs/supervised_digits.py:runlocal", ["data.image_size=16", "model.widths=(8,16,32,32)"]),
    # ViT-Ti with drop path: model_state also holds the drop-path RNG streams (typed keys, counters).
    "vit_drop_path": ("configs/supervised_digits.py:runlocal,vit", []),
}


def distinct_values(abstract_state, shardings):
    """A state shaped like the train state in which every leaf holds its own random values: a save
    that drops, zeroes, swaps or reorders any leaf cannot come back equal. (Built from numpy, not by
    running the model's initializers: the round trip does not care how the values were made.)"""
    rng = np.random.default_rng(0)

    def fill(leaf, sharding):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            value = jax.random.wrap_key_data(rng.integers(1, 2**32, leaf.shape + (2,), dtype=np.uint32))
        elif jnp.issubdtype(leaf.dtype, jnp.integer):
            value = rng.integers(1, 2**31 - 1, leaf.shape).astype(leaf.dtype)
        else:
            value = rng.normal(size=leaf.shape).astype(leaf.dtype)
        return jax.device_put(value, sharding)

    return jax.tree.map(fill, abstract_state, shardings)


def as_numpy(leaf) -> np.ndarray:
    return np.asarray(jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_restored_state_equals_the_saved_one_leaf_by_leaf(tmp_path, name):
    config = config_lib.load_config(*CONFIGS[name])
    run = trainer.Run(config, str(tmp_path))
    state = distinct_values(run.abstract_state, run.state_shardings)
    assert int(state["step"]) != 0 and np.any(as_numpy(state["rng"]))
    checkpointer = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=1)
    checkpointer.save(int(state["step"]), state, run.signature, force=True)
    checkpointer.wait()
    checkpointer.close()

    # A new Run on the same workdir resumes from it, as a rerun of the same command does.
    restored = trainer.Run(config, str(tmp_path)).restore_or_init(checkpoint.Checkpointer(str(tmp_path), 1, 1))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    flat_saved = jax.tree_util.tree_leaves_with_path(state)
    for (path, saved), loaded in zip(flat_saved, jax.tree.leaves(restored)):
        where = jax.tree_util.keystr(path)
        assert loaded.dtype == saved.dtype and loaded.shape == saved.shape, where
        assert loaded.sharding.is_equivalent_to(saved.sharding, saved.ndim), where
        np.testing.assert_array_equal(as_numpy(loaded), as_numpy(saved), err_msg=where)


def tiny_state(step: int) -> dict:
    return {"step": jnp.asarray(step, jnp.int32), "params": {"w": jnp.full((3,), float(step))}}


def test_saves_every_n_steps_and_keeps_the_latest_n(tmp_path):
    checkpointer = checkpoint.Checkpointer(str(tmp_path), every_steps=3, keep=2, use_async=False)
    signature = {"model": {}, "param_shapes": {"['w']": [3]}}
    saved = []
    for step in range(1, 11):
        if checkpointer.should_save(step):
            checkpointer.save(step, tiny_state(step), signature)
            saved.append(step)
    # Orbax also saves the first step of a fresh run (its InitialSavePolicy), then every 3rd.
    assert saved == [1, 3, 6, 9]
    assert sorted(checkpointer.manager.all_steps()) == [6, 9]
    assert checkpointer.latest_step() == 9
    target = jax.eval_shape(lambda: tiny_state(0))
    restored = checkpointer.restore_latest(target, signature)
    np.testing.assert_array_equal(restored["params"]["w"], np.full(3, 9.0))
    checkpointer.close()
