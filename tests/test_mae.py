"""MAE against references written out here: the masking, patchify and the loss as NumPy loops or
formulas of facebookresearch/mae (`models_mae.py`), its decoder position embedding
(`util/pos_embed.py`), the decoder's assembly of visible and mask tokens; then one tiny run on
digits that trains, evaluates the unmasked encoder and writes its pictures."""
import glob

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from helpers import losses
from PIL import Image

from vision_jax import config as config_lib
from vision_jax import optim, trainer
from vision_jax.data.sources import build_source
from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import MethodSetup
from vision_jax.methods.mae import reconstruction_loss
from vision_jax.models import MODELS
from vision_jax.models.vit import MAEDecoder, patchify, posemb_sincos_2d, random_masking, unpatchify
from vision_jax.schedules import RunLength


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- masking -----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_patches, ratio", [(16, 0.75), (196, 0.75), (10, 0.6)])
def test_random_masking_equals_a_numpy_loop_over_the_same_noise(num_patches, ratio):
    batch, key = 3, jax.random.key(num_patches)
    keep, mask, restore = jax.tree.map(np.asarray, random_masking(key, batch, num_patches, ratio))
    noise = np.asarray(jax.random.uniform(key, (batch, num_patches)))  # the draw random_masking makes
    num_keep = int(num_patches * (1 - ratio))  # the reference's len_keep
    tokens = rng().standard_normal((batch, num_patches, 2))
    for b in range(batch):
        order = sorted(range(num_patches), key=lambda j: noise[b, j])  # ascending noise: the first are kept
        kept = order[:num_keep]
        np.testing.assert_array_equal(keep[b], kept)
        np.testing.assert_array_equal(mask[b], [0.0 if j in kept else 1.0 for j in range(num_patches)])
        # Tokens in kept-then-masked order, gathered by restore_indices, are back in patch order.
        shuffled = tokens[b][order]
        np.testing.assert_array_equal(shuffled[restore[b]], tokens[b])
    assert (mask.sum(axis=1) == num_patches - num_keep).all()


# --- patches -----------------------------------------------------------------------------------

def test_patchify_equals_a_loop_over_patches_and_unpatchify_inverts_it():
    images = rng(1).standard_normal((2, 8, 12, 3)).astype(np.float32)  # a 2 x 3 grid of 4 px patches
    p = 4
    expected = np.stack([[images[b, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(-1)  # row, column, channel
                          for i in range(2) for j in range(3)] for b in range(2)])
    patches = np.asarray(patchify(jnp.asarray(images), p))
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(unpatchify(patches, p, grid=(2, 3)), images)
    with pytest.raises(ValueError, match="not a multiple of the patch size 5"):
        patchify(jnp.asarray(images), 5)


# --- loss --------------------------------------------------------------------------------------

def reference_loss(predictions, patches, mask, norm_pix_loss):
    """models_mae.py `forward_loss`, in NumPy (torch's var is the unbiased one)."""
    target = patches
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / (var + 1.e-6) ** .5
    loss = ((predictions - target) ** 2).mean(axis=-1)
    return (loss * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_is_the_mean_over_masked_patches_of_the_per_patch_mse(norm_pix_loss):
    predictions, patches = rng(2).standard_normal((2, 2, 16, 12))
    mask = (rng(3).uniform(size=(2, 16)) < 0.75).astype(np.float64)
    actual = reconstruction_loss(jnp.asarray(predictions, jnp.float32), jnp.asarray(patches, jnp.float32),
                                 jnp.asarray(mask, jnp.float32), norm_pix_loss)
    np.testing.assert_allclose(actual, reference_loss(predictions, patches, mask, norm_pix_loss), rtol=1e-5)
    # Visible patches do not count: changing their predictions leaves the loss as it was.
    moved = np.where(mask[..., None] == 0, predictions + 5.0, predictions)
    np.testing.assert_allclose(reconstruction_loss(jnp.asarray(moved, jnp.float32), jnp.asarray(patches, jnp.float32),
                                                   jnp.asarray(mask, jnp.float32), norm_pix_loss), actual, rtol=1e-6)


def test_loss_of_a_hand_computed_case():
    # One image, two patches of two pixels: patch 0 visible (ignored), patch 1 masked with
    # prediction (0, 0) and target (1, 3): MSE (1 + 9) / 2 = 5. With norm_pix_loss the target is
    # (1 - 2, 3 - 2) / sqrt(var + 1e-6), var = ((-1)^2 + 1^2) / (2 - 1) = 2: MSE = 1 / (2 + 1e-6).
    predictions = jnp.zeros((1, 2, 2))
    patches = jnp.asarray([[[7.0, -7.0], [1.0, 3.0]]])
    mask = jnp.asarray([[0.0, 1.0]])
    np.testing.assert_allclose(reconstruction_loss(predictions, patches, mask), 5.0, rtol=1e-6)
    np.testing.assert_allclose(reconstruction_loss(predictions, patches, mask, True), 1 / (2 + 1e-6), rtol=1e-6)


# --- decoder -----------------------------------------------------------------------------------

def get_2d_sincos_pos_embed(embed_dim, grid_size):
    """facebookresearch/mae util/pos_embed.py (without the cls slot, which is zero)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.)
        omega = 1. / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid, width", [(4, 16), (14, 512)])
def test_decoder_position_embedding_is_maes_get_2d_sincos_pos_embed(grid, width):
    np.testing.assert_allclose(posemb_sincos_2d((grid, grid), width, endpoint=False)[0],
                               get_2d_sincos_pos_embed(width, grid), atol=1e-6)


def test_decoder_puts_mask_tokens_at_the_masked_patches_and_adds_the_position_embedding():
    # A decoder of one block on a 3x3 grid, checked against its assembly written out in NumPy:
    # embed, [visible, mask tokens] unshuffled to patch order, + MAE's sin-cos, cls token first.
    decoder = MAEDecoder(8, (3, 3), 2, 1, decoder_width=8, decoder_depth=1, decoder_heads=2, rngs=nnx.Rngs(0))
    decoder.mask_token[...] = jnp.asarray(rng(4).standard_normal((1, 1, 8)), jnp.float32)
    keep, mask, restore = jax.jit(random_masking, static_argnums=(1, 2, 3))(jax.random.key(1), 2, 9, 2 / 3)
    tokens = jnp.asarray(rng(5).standard_normal((2, 1 + 3, 8)), jnp.float32)  # cls + 3 visible, encoded

    @nnx.jit
    def decode(decoder, tokens, restore, assembled):
        tail = lambda x: decoder.predict(decoder.norm(decoder.blocks[0](x, False)))[:, 1:]
        return decoder(tokens, restore, train=False), decoder.embed(tokens), tail(assembled)

    embedded = np.asarray(decode(decoder, tokens, restore, jnp.zeros((2, 10, 8)))[1])
    sequence = np.zeros((2, 9, 8), np.float32)
    for b in range(2):
        for slot, patch in enumerate(np.asarray(keep[b])):
            sequence[b, patch] = embedded[b, 1 + slot]
        sequence[b, np.asarray(mask[b]) == 1] = np.asarray(decoder.mask_token[...])[0, 0]
    sequence = sequence + get_2d_sincos_pos_embed(8, 3).astype(np.float32)
    assembled = jnp.asarray(np.concatenate([embedded[:, :1], sequence], axis=1))
    actual, _, expected = decode(decoder, tokens, restore, assembled)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


# --- the method in a run -----------------------------------------------------------------------

TINY_MAE = ["model.depth=1", "method.decoder_width=32", "method.decoder_depth=1", "method.decoder_heads=2",
            "batch_size=32", "total_steps=8", "eval_every=4", "log_every=1", "num_pictures=3",
            "optimizer.warmup_steps=2", "optimizer.lr=0.002", "eval_baselines=()", "checkpoint.every_steps=0",
            "online_probe.enabled=False"]


def test_tiny_mae_trains_on_digits_evaluates_the_unmasked_encoder_and_draws_its_reconstructions(tmp_path):
    config = config_lib.load_config("configs/ssl_digits.py:method=mae,runlocal", TINY_MAE)
    config.evaluators = ml_collections.ConfigDict({"knn": {"k": 20, "temperature": 0.07}})
    results = trainer.train(config, str(tmp_path))

    curve = list(losses(tmp_path).values())
    assert len(curve) == 8 and np.mean(curve[-3:]) < 0.8 * np.mean(curve[:3]), curve
    assert results["mae"]["knn/top1"] > 30  # 10 classes: chance is 10%

    # Pictures at the evaluation point and at the end, as PNGs and as TensorBoard images.
    # (The kNN evaluator adds its retrieval grids and the start its views; those have their own tests.)
    drawn = sorted(p.name for p in (tmp_path / "pictures").iterdir() if p.name.startswith("reconstruction"))
    assert drawn == ["reconstruction_step000004.png", "reconstruction_step000008.png"]
    events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    tags = [value.tag for path in events for record in tf.data.TFRecordDataset(path)
            for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value]
    assert tags.count("pictures/reconstruction") == 2
    picture = np.asarray(Image.open(tmp_path / "pictures" / "reconstruction_step000008.png"))
    assert picture.shape == (3 * 16, 4 * 16, 3)  # 3 held-out digits; original, masked, prediction, pasted
    original, masked, _, pasted = picture.reshape(3, 16, 4, 16, 3).transpose(2, 0, 1, 3, 4)
    held_out = build_source(config.data.source, config.data.eval_test_split, config.data.image_size)
    first_three = np.stack([held_out.load(tf.constant(i, tf.int64))["image"].numpy() for i in range(3)])
    assert np.abs(original.astype(int) - first_three).max() <= 1  # [-1, 1] back to uint8
    # 12 of the 16 patches of each digit are hidden: shown at 0 in [-1, 1], gray 128.
    hidden = np.asarray(patchify(jnp.asarray(masked == 128), 4)).all(axis=-1)
    assert (hidden.sum(axis=1) == 12).all(), hidden.sum(axis=1)
    # The last column pastes the visible patches of the original around the predicted ones.
    np.testing.assert_array_equal(np.asarray(patchify(jnp.asarray(pasted), 4))[~hidden],
                                  np.asarray(patchify(jnp.asarray(original), 4))[~hidden])


# --- parameter groups and bad input ------------------------------------------------------------

def mae_setup(model_name: str = "vit") -> MethodSetup:
    def make_encoder(rngs):
        return MODELS.build("vit", dict(variant="Ti", depth=1, patch_size=4, image_size=16), rngs=rngs)

    return MethodSetup(make_encoder, 10, RunLength(10, 5), model_name)


def test_tokens_are_out_of_weight_decay_and_bad_input_gets_a_clear_message():
    method = METHODS.build("mae", dict(decoder_width=16, decoder_depth=1, decoder_heads=2), setup=mae_setup())
    _, params, _ = nnx.split(nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0))), nnx.Param, ...)
    labels = optim.assign_groups(nnx.to_pure_dict(params), method.param_groups())
    assert labels["encoder"]["cls_token"] == labels["decoder"]["mask_token"] == "tokens"
    assert labels["encoder"]["blocks"][0]["attn"]["query"]["kernel"] == "default"
    assert labels["decoder"]["embed"]["kernel"] == "default"

    method.validate_batch({"image": (8, 16, 16, 3)})  # the encoder's size: accepted
    with pytest.raises(ConfigError, match="augment.name=mae"):
        method.validate_batch({"views": (8, 2, 16, 16, 3)})
    with pytest.raises(ConfigError, match="augment.size=16"):
        method.validate_batch({"image": (8, 32, 32, 3)})
    with pytest.raises(ConfigError, match="model.name=vit"):
        METHODS.build("mae", {}, setup=mae_setup("cnn"))
    with pytest.raises(ConfigError, match=r"mask_ratio=1.0 must be in \[0, 1\)"):
        METHODS.build("mae", {"mask_ratio": 1.0}, setup=mae_setup())
    with pytest.raises(ConfigError, match="keeps none of the encoder's 16 patches"):
        nnx.eval_shape(lambda: METHODS.build("mae", {"mask_ratio": 0.95}, setup=mae_setup()).init_model(nnx.Rngs(0)))
