"""ViT: published sizes and FLOPs, attention correctness, the MAE and DINO entry points, precision.

Kept cheap for 2-core CI: big models only through nnx.eval_shape; tiny models built once and
shared (initialization compiles one random kernel per parameter shape), forwards jitted.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import MODELS
from vision_jax.models.flops import model_flops
from vision_jax.models.vit import (
    Dense,
    EncoderBlock,
    MAEDecoder,
    ParamKeys,
    VisionTransformer,
    _run_block,
    attention_implementation,
    patchify,
    posemb_sincos_2d,
    random_masking,
    resize_posemb,
    unpatchify,
)

TINY = {"width": 32, "depth": 2, "heads": 2, "mlp_dim": 128, "patch_size": 4, "image_size": 16}


def tiny(**options) -> VisionTransformer:
    """A fresh tiny ViT (for tests that change it)."""
    return VisionTransformer(**{**TINY, **options}, rngs=nnx.Rngs(params=0, dropout=1))


@functools.cache
def shared(**options) -> VisionTransformer:
    """A tiny ViT built once per option set; tests must not change it."""
    return tiny(**options)


@functools.partial(nnx.jit, static_argnums=2)
def forward(model, x, train=False):
    return model(x, train=train)


def images(batch: int = 2, size: int = 16, seed: int = 1) -> jax.Array:
    return normal((batch, size, size, 3), seed)


def normal(shape, seed: int = 0) -> jax.Array:
    # NumPy, not jax.random: each new shape would compile a random kernel (seconds on 2 cores).
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


masking = jax.jit(random_masking, static_argnums=(1, 2, 3))
PERMUTATION = np.stack([np.random.default_rng(i).permutation(16) for i in range(2)])


@functools.cache
def probe(**options) -> dict:
    """Everything the pooling and masking tests look at, from one compiled pass of a shared model."""

    @nnx.jit
    def run(model, x, permutation):
        keep, _, _ = random_masking(jax.random.key(0), 2, 16, 0.75)
        return {"features": model(x, train=False), "tokens": model.forward_tokens(x, False),
                "permuted": model.forward_tokens(x, False, keep_indices=permutation),
                "masked": model.forward_tokens(x, False, keep_indices=keep)}

    return jax.tree.map(np.asarray, run(shared(**options), images(), jnp.asarray(PERMUTATION)))


@functools.cache
def abstract_vit(**options) -> VisionTransformer:
    return nnx.eval_shape(lambda: MODELS.build("vit", options, rngs=nnx.Rngs(0)))


def param_shapes(model) -> dict:
    state = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {path: tuple(v.shape) for path, v in state}


def param_count(model) -> int:
    return sum(int(np.prod(s)) for s in param_shapes(model).values())


# --- sizes and cost ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant,patch,timm_count", [
    ("Ti", 16, 5_717_416), ("S", 16, 22_050_664), ("B", 16, 86_567_656), ("L", 16, 304_326_632),
    ("H", 14, 632_045_800)])
def test_parameter_counts_equal_timm(variant, patch, timm_count):
    # timm's vit_{tiny,small,base,large}_patch16_224 / vit_huge_patch14_224 with the 1000-class
    # head, counted by timm 1.0.31: learned position embedding with a cls slot, plus the cls token.
    # (The ViT paper's 86M / 307M / 632M round the same convention.)
    assert param_count(abstract_vit(variant=variant, patch_size=patch, num_classes=1000)) == timm_count


@pytest.mark.parametrize("patch", [4, 8, 14, 32])
def test_patch_size_changes_only_patch_embedding_and_position_embedding(patch):
    width = 192
    base = param_shapes(abstract_vit(variant="Ti", patch_size=16))
    other = param_shapes(abstract_vit(variant="Ti", patch_size=patch))
    changed = {path for path in base if base[path] != other[path]}
    assert changed == {("patch_embed", "kernel"), ("pos_embedding",)}
    delta = param_count_of(other) - param_count_of(base)
    assert delta == (patch**2 - 16**2) * 3 * width + ((224 // patch) ** 2 - 14**2) * width


def param_count_of(shapes: dict) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


def test_depth_option_builds_that_many_blocks():
    # One ViT-S block, counted by hand: 2 LayerNorms (2 x 2 x 384), qkv (384 x 1152 + 1152),
    # projection (384 x 384 + 384), MLP (384 x 1536 + 1536 and 1536 x 384 + 384).
    per_block = 2 * 2 * 384 + (384 * 1152 + 1152) + (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384)
    six = abstract_vit(variant="S", depth=6)
    assert len(six.blocks) == 6
    assert param_count(abstract_vit(variant="S")) - param_count(six) == 6 * per_block
    with pytest.raises(ConfigError, match="depth"):
        MODELS.build("vit", {"variant": "S", "depth": -1}, rngs=nnx.Rngs(0))


def test_every_parameter_has_one_logical_name_per_dimension():
    model = nnx.eval_shape(lambda: tiny(num_classes=10, layer_scale_init=0.1))
    decoder = nnx.eval_shape(lambda: MAEDecoder(32, (4, 4), 4, decoder_width=16, decoder_depth=1, decoder_heads=2,
                                                rngs=nnx.Rngs(0)))
    for module in (model, decoder):
        for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Param)):
            names = variable.get_metadata().get("out_sharding")
            assert names is not None and len(names) == variable.ndim, (path, names)
    names = {path: v.get_metadata()["out_sharding"] for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert names[("blocks", 0, "attn", "query", "kernel")] == ("embed", "heads", "head_dim")
    assert names[("blocks", 0, "attn", "out", "kernel")] == ("heads", "head_dim", "embed")
    assert names[("blocks", 0, "mlp", "fc1", "kernel")] == ("embed", "mlp")
    assert names[("patch_embed", "kernel")] == (None, None, "conv_in", "embed")


def test_vit_b16_forward_flops_match_the_published_17_6_gmacs():
    # timm / fvcore report 17.58 G multiply-adds for ViT-B/16 at 224; XLA counts 2 FLOPs per
    # multiply-add, plus softmax/GELU/LayerNorm element-wise work (about 1.5% here).
    model = abstract_vit(variant="B")
    flops = model_flops(model, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32), train=False, compile=True)
    assert abs(flops / 2 - 17.58e9) / 17.58e9 < 0.05, flops


# --- layers ------------------------------------------------------------------------------------

def test_attention_equals_naive_softmax_reference():
    attn = shared().blocks[0].attn  # width 32, 2 heads of 16
    x = normal((2, 5, 32), 1)

    @nnx.jit
    def both(attn, x):
        q, k, v = attn.query(x), attn.key(x), attn.value(x)  # [B, N, heads, head_dim]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(16)
        reference = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        return attn(x), attn.out(reference)

    np.testing.assert_allclose(*both(attn, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("in_shape, out_shape", [((12,), (3, 4)), ((3, 4), (12,)), ((12,), (20,))])
def test_dense_and_its_gradients_equal_a_float64_contraction(in_shape, out_shape):
    dense = Dense(in_shape, out_shape, (None,) * (len(in_shape) + len(out_shape)), dtype=jnp.float32,
                  param_dtype=jnp.float32, keys=ParamKeys(jax.random.key(0)))
    dense.bias[...] = normal(out_shape, 2)
    x, dy = normal((2, 5, *in_shape), 3), normal((2, 5, *out_shape), 4)
    kernel, bias = (np.asarray(v[...], np.float64) for v in (dense.kernel, dense.bias))

    def loss(dense, x):
        return jnp.sum(dense(x) * dy)

    y = nnx.jit(lambda dense, x: dense(x))(dense, x)
    grads, dx = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(dense, x)
    # y[b, n, o] = sum_i x[b, n, i] W[i, o] + b[o] over the flattened in/out dims, in float64.
    x2, w2 = np.asarray(x, np.float64).reshape(10, -1), kernel.reshape(int(np.prod(in_shape)), -1)
    dy2 = np.asarray(dy, np.float64).reshape(10, -1)
    np.testing.assert_allclose(y, (x2 @ w2).reshape(2, 5, *out_shape) + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, (dy2 @ w2.T).reshape(x.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads.kernel[...], (x2.T @ dy2).reshape(kernel.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads.bias[...], dy2.sum(0).reshape(out_shape), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's compiled kernel gradient")
def test_dense_kernel_gradient_reads_the_activations_without_copying_them_on_cpu():
    """XLA:CPU's matmul takes 2-D operands contracted over their rows as they lie; a contraction
    over [B, N] (a tensordot of the 3-D activation) copies one of them transposed first."""
    dense = Dense((64,), (96,), (None, None), dtype=jnp.float32, param_dtype=jnp.float32,
                  keys=ParamKeys(jax.random.key(0)))
    graphdef, params = nnx.split(dense)
    kernel_grad = jax.jit(jax.grad(lambda params, x, dy: jnp.sum(nnx.merge(graphdef, params)(x) * dy)))
    hlo = kernel_grad.lower(params, jnp.ones((8, 16, 64)), jnp.ones((8, 16, 96))).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    assert " dot(" in entry
    copies = [line.strip()[:120] for line in entry.splitlines() if re.search(r"%\S*(copy|transpose)\S* = ", line)]
    assert not copies, copies


def test_auto_attention_uses_cudnn_only_for_half_precision_on_gpu():
    assert attention_implementation("xla", jnp.bfloat16, 64) == "xla"
    expected_bf16 = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert attention_implementation("auto", jnp.bfloat16, 64) == expected_bf16
    assert attention_implementation("auto", jnp.float32, 64) == "xla"  # cuDNN has no float32 kernel
    assert attention_implementation("auto", jnp.bfloat16, 12) == "xla"  # head dim not a multiple of 8


def test_patch_embedding_is_a_linear_map_of_patchified_pixels():
    # patchify's (row, column, channel) order is the kernel's: MAE targets and the timm
    # converter rely on it.
    embed, x = shared().patch_embed, images()
    expected = patchify(x, 4) @ embed.kernel[...].reshape(-1, 32) + embed.bias[...]
    np.testing.assert_allclose(nnx.jit(lambda e, x: e(x))(embed, x).reshape(2, 16, 32), expected,
                               atol=1e-5, rtol=1e-5)


def test_patchify_unpatchify_roundtrip():
    x = images(size=16)
    patches = patchify(x, 4)
    assert patches.shape == (2, 16, 48)
    np.testing.assert_array_equal(patches[:, 1], x[:, 0:4, 4:8].reshape(2, 48))  # patch (row 0, col 1)
    np.testing.assert_array_equal(unpatchify(patches, 4), x)
    rect = normal((1, 8, 12, 3), 2)
    np.testing.assert_array_equal(unpatchify(patchify(rect, 4), 4, grid=(2, 3)), rect)


# --- pooling, stochastic depth, layer scale ----------------------------------------------------

def test_cls_and_gap_pooling():
    cls, gap = probe(), probe(pool="gap")
    assert cls["features"].shape == gap["features"].shape == (2, 32)
    assert cls["features"].dtype == np.float32
    assert not np.allclose(cls["features"], gap["features"], atol=1e-3)
    assert gap["tokens"].shape == (2, 16, 32) and cls["tokens"].shape == (2, 17, 32)  # cls token first
    np.testing.assert_allclose(gap["features"], gap["tokens"].mean(1), atol=1e-6)
    np.testing.assert_allclose(cls["features"], cls["tokens"][:, 0], atol=1e-6)


def test_drop_path_is_identity_in_eval_and_random_per_step_in_train():
    x = images(batch=8)
    plain, dropping = shared(), tiny(drop_path_rate=0.3)  # same parameters: same 'params' seed
    np.testing.assert_array_equal(forward(dropping, x), forward(plain, x))

    # As the trainer runs it: pure arrays in, the non-Param state (the dropout streams' counters)
    # carried from one step to the next.
    graphdef, params, model_state = nnx.split(dropping, nnx.Param, ...)
    params, model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)

    @jax.jit
    def train_forward(params, model_state):
        model = nnx.merge(graphdef, params, model_state)
        out = model(x, train=True)
        return out, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    first, next_state = train_forward(params, model_state)
    again, _ = train_forward(params, model_state)
    second, _ = train_forward(params, next_state)
    np.testing.assert_array_equal(first, again)  # a pure function of the carried state
    assert not np.allclose(first, forward(plain, x), atol=1e-3)  # branches were dropped
    assert not np.allclose(first, second, atol=1e-3)  # new masks at the next step


def test_drop_path_without_a_dropout_stream_is_a_clear_error():
    with pytest.raises(ConfigError, match="'dropout' stream"):
        nnx.eval_shape(lambda: VisionTransformer(**TINY, drop_path_rate=0.1, rngs=nnx.Rngs(params=0)))


def test_layer_scale_makes_each_block_start_near_identity():
    x = normal((2, 5, 32), 3)
    run_block = nnx.jit(lambda block, x: block(x, train=False))
    for model, near_identity in ((tiny(layer_scale_init=1e-4), True), (shared(), False)):
        change = float(jnp.abs(run_block(model.blocks[0], x) - x).max() / jnp.abs(x).max())
        assert (change < 1e-3) == near_identity, change


def test_remat_gives_identical_outputs_and_gradients():
    # One block in training mode with stochastic depth (the recomputation must draw the same
    # masks), through the function the encoder runs its blocks with; a whole-model gradient
    # would cost several seconds more to compile for the same check.
    x = normal((2, 5, 32), 4)

    def block():
        return EncoderBlock(32, 2, 128, drop_path=0.3, dtype=jnp.float32, param_dtype=jnp.float32,
                            keys=ParamKeys(jax.random.key(0)), rngs=nnx.Rngs(dropout=1))

    @functools.partial(nnx.jit, static_argnums=1)
    def value_and_grad(block, remat):
        return nnx.value_and_grad(lambda b: jnp.sum(jnp.sin(_run_block(b, x, True, remat))))(block)

    (value, grads), (value_remat, grads_remat) = value_and_grad(block(), False), value_and_grad(block(), True)
    # Equal up to float32 rounding (XLA fuses the recomputed block differently: ~1e-6 relative);
    # a different drop-path mask would change them by O(1).
    np.testing.assert_allclose(value, value_remat, atol=1e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 nnx.to_pure_dict(grads), nnx.to_pure_dict(grads_remat))


def test_remat_option_checkpoints_every_block():
    def checkpoints(remat: bool) -> int:
        graphdef, state = nnx.split(tiny(remat=remat))
        jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(images(), train=False))(state)
        return sum(eqn.primitive.name == "remat2" for eqn in jaxpr.jaxpr.eqns)  # jax.checkpoint's primitive

    assert checkpoints(remat=True) == TINY["depth"]
    assert checkpoints(remat=False) == 0


def test_bfloat16_compute_returns_float32_close_to_float32():
    x = images()
    bf16 = VisionTransformer(**TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(params=0))  # same weights as shared()
    out32, out16 = forward(shared(), x), forward(bf16, x)
    assert out16.dtype == jnp.float32
    assert bf16.blocks[0].attn.query.kernel[...].dtype == jnp.float32  # parameters stay float32
    np.testing.assert_allclose(out16, out32, atol=0.1, rtol=0.05)
    assert float(jnp.abs(out16 - out32).max()) > 0  # it did compute in bfloat16


def test_logits_need_a_head():
    x = images()
    assert nnx.eval_shape(lambda: tiny(num_classes=7).logits(x, train=False)).shape == (2, 7)
    with pytest.raises(ValueError, match="num_classes=0"):
        shared().logits(x, train=False)


# --- position embeddings at other resolutions --------------------------------------------------

def test_other_input_size_resamples_the_learned_position_embedding():
    # A 16-px model on 8-px images (as DINO's local crops) equals an 8-px model whose embedding
    # was resampled explicitly with resize_posemb.
    small, large = images(size=8), images(size=24)
    model = shared()
    explicit = tiny(image_size=8)
    explicit.pos_embedding[...] = jax.jit(resize_posemb, static_argnums=1)(model.pos_embedding[...], (2, 2))
    on_small, on_large = nnx.jit(lambda m: (m(small, train=False), m(large, train=False)))(model)
    np.testing.assert_allclose(on_small, forward(explicit, small), atol=1e-6)
    assert on_large.shape == (2, 32)  # larger works too


def test_resize_posemb_keeps_the_cls_slot_and_the_axes():
    g, width = 8, 4
    rows, cols = np.mgrid[:g, :g].astype(np.float32)
    patches = np.stack([rows.ravel(), cols.ravel(), np.zeros(g * g), np.ones(g * g)], axis=1)
    posemb = jnp.asarray(np.concatenate([np.full((1, width), 7.0), patches])[None], jnp.float32)
    np.testing.assert_allclose(resize_posemb(posemb, (g, g)), posemb, atol=1e-5)  # same grid: identity
    resized = resize_posemb(posemb, (4, 6))
    assert resized.shape == (1, 1 + 24, width)
    np.testing.assert_array_equal(resized[0, 0], posemb[0, 0])
    grid = np.asarray(resized[0, 1:]).reshape(4, 6, width)
    # Channel 0 (the row index) varies down the rows only, channel 1 across the columns only.
    np.testing.assert_allclose(grid[:, :, 0], np.repeat(grid[:, :1, 0], 6, axis=1), atol=1e-5)
    np.testing.assert_allclose(grid[:, :, 1], np.repeat(grid[:1, :, 1], 4, axis=0), atol=1e-5)
    assert np.all(np.diff(grid[:, 0, 0]) > 0) and np.all(np.diff(grid[0, :, 1]) > 0)


def test_sincos_position_embedding_is_fixed_and_follows_the_input_grid():
    fixed = nnx.eval_shape(lambda: tiny(posemb="sincos2d"))
    assert param_count(nnx.eval_shape(tiny)) - param_count(fixed) == (1 + 16) * 32  # no position parameters
    pe = posemb_sincos_2d((2, 3), 8)
    assert pe.shape == (1, 6, 8)
    # Token (row 1, col 2): first quarter sin(col * omega), third quarter sin(row * omega).
    np.testing.assert_allclose(pe[0, 5, 0:2], np.sin(2.0 * np.array([1.0, 1e-4])), atol=1e-6)
    np.testing.assert_allclose(pe[0, 5, 4:6], np.sin(1.0 * np.array([1.0, 1e-4])), atol=1e-6)
    out = nnx.eval_shape(lambda: tiny(posemb="sincos2d")(jnp.zeros((2, 8, 8, 3)), train=False))
    assert out.shape == (2, 32)


# --- MAE ---------------------------------------------------------------------------------------

def test_random_masking_keeps_the_right_patches():
    keep, mask, restore = jax.tree.map(np.asarray, masking(jax.random.key(0), 3, 16, 0.75))
    assert keep.shape == (3, 4) and mask.shape == (3, 16) and restore.shape == (3, 16)
    np.testing.assert_array_equal(mask.sum(1), [12, 12, 12])
    for b in range(3):
        assert set(keep[b]) == set(np.flatnonzero(mask[b] == 0))
        # restore_indices undo the keep-first shuffle: kept patches come back to their places.
        np.testing.assert_array_equal(restore[b][keep[b]], np.arange(4))
    assert not np.array_equal(keep[0], keep[1])  # per-example choice
    with pytest.raises(ConfigError, match="mask_ratio"):
        random_masking(jax.random.key(0), 1, 16, 1.0)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_encoder_on_kept_tokens_gathers_after_the_position_embedding(pool):
    result = probe(pool=pool)
    prefix = 1 if pool == "cls" else 0
    # Keeping every patch in a shuffled order: attention is permutation-equivariant, so the
    # outputs are the unmasked forward's, shuffled alike (the identity order is a special case),
    # provided each token carries its own position (added before the gather); the cls token's
    # output does not change at all.
    expected = np.take_along_axis(result["tokens"][:, prefix:], PERMUTATION[:, :, None], axis=1)
    np.testing.assert_allclose(result["permuted"][:, prefix:], expected, atol=1e-5)
    np.testing.assert_allclose(result["permuted"][:, :prefix], result["tokens"][:, :prefix], atol=1e-5)
    assert result["masked"].shape == (2, 4 + prefix, 32)


def test_mae_decoder_predicts_every_patch():
    model, x = shared(), images()
    decoder = MAEDecoder(model.num_features, model.grid_size, model.patch_size, model.num_prefix_tokens,
                         decoder_width=32, decoder_depth=1, decoder_heads=2, rngs=nnx.Rngs(1))

    @nnx.jit
    def encode_decode(model, decoder, x):
        keep, _, restore = random_masking(jax.random.key(0), 2, 16, 0.75)
        return decoder(model.forward_tokens(x, True, keep_indices=keep), restore)

    prediction = encode_decode(model, decoder, x)
    assert prediction.shape == patchify(x, 4).shape == (2, 16, 48)
    assert prediction.dtype == jnp.float32


def test_mae_decoder_defaults_are_he_et_al():
    decoder = nnx.eval_shape(lambda: MAEDecoder(768, (14, 14), 16, rngs=nnx.Rngs(0)))
    assert len(decoder.blocks) == 8
    assert decoder.embed.kernel.shape == (768, 512)
    assert decoder.blocks[0].attn.query.kernel.shape == (512, 16, 32)
    assert decoder.predict.kernel.shape == (512, 16 * 16 * 3)


# --- configuration errors ----------------------------------------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"variant": "XL"}, "variant 'XL' is unknown"),
    ({"patch_size": 16, "image_size": 100}, "image_size=100 is not a multiple of patch_size=16"),
    ({"pool": "mean"}, "pool='mean' is unknown"),
    ({"posemb": "rope"}, "posemb='rope' is unknown"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        abstract_vit(**options)


def test_input_not_a_multiple_of_the_patch_size_is_a_clear_error():
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        jax.eval_shape(lambda: shared()(jnp.zeros((2, 10, 10, 3)), train=False))
