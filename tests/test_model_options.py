"""Every option of every registered model, built through the public factory
(`MODELS.build(name, options, rngs=..., dtype=..., param_dtype=...)`, as the trainer builds them),
has an effect a test checks: here, or in test_models.py / test_vit.py where `OPTION_TESTS` says.

Cheap on 2 cores: shapes and parameter counts come from `nnx.eval_shape`; what a forward pass does
comes from its traced jaxpr (no compilation); initial values come from jitting the constructor
and returning only the values looked at, so XLA drops every other initializer unevaluated.
"""
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax.models import MODELS

TESTS = Path(__file__).parent

# (model, option) -> (test file, test function) that checks the option's effect through MODELS.build.
OPTION_TESTS = {
    ("cnn", "widths"): ("test_model_options.py", "test_cnn_widths_set_each_stage_and_the_feature_size"),
    ("fast_cifar", "stem_width"): ("test_model_options.py", "test_fast_cifar_widths_set_the_stem_and_each_group"),
    ("fast_cifar", "widths"): ("test_model_options.py", "test_fast_cifar_widths_set_the_stem_and_each_group"),
    ("resnet", "depth"): ("test_models.py", "test_resnet_parameter_counts_match_torchvision"),
    ("resnet", "stem"): ("test_models.py", "test_cifar_stem_keeps_resolution_and_imagenet_stem_reduces_it"),
    ("resnet", "width_multiplier"): ("test_models.py", "test_wide_resnet50_matches_simclr_sizes"),
    ("resnet", "zero_init_last_bn"): ("test_model_options.py", "test_resnet_zero_init_last_bn_zeroes_the_last_bn_of_every_block"),
    ("resnet", "num_classes"): ("test_model_options.py", "test_num_classes_adds_a_classifier_of_that_size"),
    ("resnet", "remat"): ("test_models.py", "test_remat_gives_identical_outputs_batch_stats_and_gradients"),
    ("vit", "variant"): ("test_vit.py", "test_parameter_counts_equal_timm"),
    ("vit", "depth"): ("test_vit.py", "test_depth_option_builds_that_many_blocks"),
    ("vit", "patch_size"): ("test_vit.py", "test_patch_size_changes_only_patch_embedding_and_position_embedding"),
    ("vit", "image_size"): ("test_model_options.py", "test_vit_image_size_sets_the_position_embedding_grid"),
    ("vit", "pool"): ("test_model_options.py", "test_vit_pool_cls_takes_the_cls_token_and_gap_averages_patches"),
    ("vit", "posemb"): ("test_model_options.py", "test_vit_sincos_posemb_replaces_the_learned_embedding"),
    ("vit", "drop_path_rate"): ("test_model_options.py", "test_vit_drop_path_rate_draws_masks_in_training_only"),
    ("vit", "layer_scale_init"): ("test_model_options.py", "test_vit_layer_scale_init_sets_every_branch_scale"),
    ("vit", "num_classes"): ("test_model_options.py", "test_num_classes_adds_a_classifier_of_that_size"),
    ("vit", "remat"): ("test_model_options.py", "test_vit_remat_checkpoints_every_block"),
    ("vit", "attention_impl"): ("test_model_options.py", "test_vit_attention_impl_reaches_the_attention_call"),
    ("dcgan_generator", "latent_dim"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
    ("dcgan_generator", "image_size"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
    ("dcgan_generator", "base_width"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
    ("dcgan_generator", "channels"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
    ("dcgan_discriminator", "image_size"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
    ("dcgan_discriminator", "base_width"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
    ("dcgan_discriminator", "channels"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
    # Accepted so that one options dict builds both networks; it must change nothing.
    ("dcgan_discriminator", "latent_dim"): ("test_model_options.py", "test_dcgan_options_set_widths_sizes_and_channels"),
}
# Passed by the framework to every model (config.precision), tested for all of them at once.
FRAMEWORK_OPTIONS = ("dtype", "param_dtype")

# Small instances of each model and an input batch for them.
SMALL = {
    "cnn": ({"widths": (8, 16)}, (2, 8, 8, 3)),
    "fast_cifar": ({"stem_width": 4, "widths": (8, 8, 16)}, (2, 16, 16, 3)),
    "resnet": ({"depth": 18, "stem": "cifar"}, (2, 16, 16, 3)),
    "vit": ({"variant": "Ti", "patch_size": 8, "image_size": 16}, (2, 16, 16, 3)),
    "dcgan_generator": ({"image_size": 32, "base_width": 8}, (2, 100)),
    "dcgan_discriminator": ({"image_size": 32, "base_width": 8}, (2, 32, 32, 3)),
}
VIT = SMALL["vit"][0]  # ViT-Ti, 8x8 patches of 16x16 images: 4 patch tokens
VIT_DEPTH, VIT_WIDTH = 12, 192


def abstract(name: str, options: dict, **framework):
    return nnx.eval_shape(lambda: MODELS.build(name, options, rngs=nnx.Rngs(params=0, dropout=1), **framework))


def param_count(model) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def param_shapes(model) -> dict:
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def initial_values(name: str, options: dict, wanted) -> dict:
    """{path: initial value} of the parameters whose path satisfies `wanted`, from the real
    initializers (the constructor is jitted and only these values returned, so XLA never computes
    the others)."""
    def build():
        model = MODELS.build(name, options, rngs=nnx.Rngs(params=0, dropout=1))
        return {path: v[...] for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if wanted(path)}
    return jax.tree.map(np.asarray, jax.jit(build)())


def traced(model, input_shape, train: bool):
    """The forward pass `model(x, train)` traced to a ClosedJaxpr (nothing compiled or run)."""
    graphdef, state = nnx.split(model)
    fn = lambda state, x: nnx.merge(graphdef, state)(x, train=train)  # noqa: E731
    return jax.jit(fn).trace(state, jax.ShapeDtypeStruct(input_shape, jnp.float32)).jaxpr


def traced_equations(model, input_shape, train: bool) -> list:
    """Every equation of the traced forward pass, nested ones (remat, pjit) included."""
    equations = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            equations.append(eqn)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub.jaxpr)

    walk(traced(model, input_shape, train).jaxpr)
    return equations


def output_shape(model, method: str, *args, **kwargs) -> jax.ShapeDtypeStruct:
    """Shape and dtype of `model.method(*args, **kwargs)` (the model may be abstract)."""
    graphdef, state = nnx.split(model)
    return jax.eval_shape(lambda state: getattr(nnx.merge(graphdef, state), method)(*args, **kwargs), state)


def count(equations, primitive: str) -> int:
    return sum(eqn.primitive.name == primitive for eqn in equations)


def test_every_option_of_every_registered_model_has_a_test():
    options = {(name, option) for name in MODELS.names()
               for option in inspect.signature(MODELS.get(name)).parameters
               if option not in ("rngs", *FRAMEWORK_OPTIONS)}
    assert options == set(OPTION_TESTS), "add a test for each new option to OPTION_TESTS"
    for file, test in set(OPTION_TESTS.values()):
        assert f"def {test}(" in (TESTS / file).read_text(), f"{file} has no {test}"
    for name in MODELS.names():
        assert set(FRAMEWORK_OPTIONS) <= set(inspect.signature(MODELS.get(name)).parameters), name


# --- dtype and param_dtype, every model ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SMALL))
def test_param_dtype_stores_and_dtype_computes_in_the_given_precision(name):
    options, input_shape = SMALL[name]
    for compute, stored in ((jnp.float32, jnp.float32), (jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16)):
        model = abstract(name, options, dtype=compute, param_dtype=stored)
        assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(stored)}
        equations = traced_equations(model, input_shape, train=True)
        matmuls = [e for e in equations if e.primitive.name in ("conv_general_dilated", "dot_general")]
        assert matmuls and {v.aval.dtype for e in matmuls for v in e.invars} == {jnp.dtype(compute)}, (compute, stored)
        # Features, logits and generated images come out float32 whatever the compute dtype.
        assert output_shape(model, "__call__", jnp.zeros(input_shape), train=False).dtype == jnp.float32


# --- cnn -----------------------------------------------------------------------------------------

def test_cnn_widths_set_each_stage_and_the_feature_size():
    widths = (4, 8, 12)
    model = abstract("cnn", {"widths": widths})
    channels = (3, *widths)
    # 3x3 kernels without bias, then BatchNorm scale and bias per channel.
    assert param_count(model) == sum(9 * a * b + 2 * b for a, b in zip(channels[:-1], channels[1:]))
    assert output_shape(model, "__call__", jnp.zeros((2, 16, 16, 3)), train=False).shape == (2, 12)
    assert model.num_features == 12


def test_fast_cifar_widths_set_the_stem_and_each_group():
    model = abstract("fast_cifar", {"stem_width": 6, "widths": (4, 8, 12)})
    # airbench's layout: a 3x3 stem conv + BN, then per group two bias-free 3x3 convs, each with a BN.
    expected = 9 * 3 * 6 + 2 * 6
    for cin, cout in zip((6, 4, 8), (4, 8, 12)):
        expected += 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
    assert param_count(model) == expected
    assert model.num_features == 12
    # Each group halves the resolution (16 -> 2 after three); the features are a global max pool.
    assert output_shape(model, "__call__", jnp.zeros((2, 16, 16, 3)), train=False).shape == (2, 12)
    # Three 2x2 max pools (layers.max_pool: a max over the two tile axes of a reshape), then the global one.
    pools = [tuple(eqn.params["axes"]) for eqn in traced_equations(model, (2, 16, 16, 3), train=False)
             if eqn.primitive.name == "reduce_max"]
    assert pools == [(2, 4)] * 3 + [(1, 2)], pools


# --- resnet --------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,last_bn", [(18, "bn2"), (50, "bn3")])
def test_resnet_zero_init_last_bn_zeroes_the_last_bn_of_every_block(depth, last_bn):
    scales = lambda zero: initial_values(  # noqa: E731
        "resnet", {"depth": depth, "stem": "cifar", "zero_init_last_bn": zero}, lambda path: path[-1] == "scale")
    zeroed, default = scales(True), scales(False)
    num_blocks = 8 if depth == 18 else 16
    last = {path for path in zeroed if path[0] == "blocks" and path[2] == last_bn}
    assert len(last) == num_blocks
    for path, value in zeroed.items():
        # Only the residual branch's last BN starts at 0; the stem and shortcut projections do not.
        np.testing.assert_array_equal(value, 0.0 if path in last else 1.0, err_msg=str(path))
    assert all(np.all(value == 1.0) for value in default.values())


@pytest.mark.parametrize("name,options,features", [
    ("resnet", {"depth": 18, "stem": "cifar"}, 512), ("vit", VIT, VIT_WIDTH)])
def test_num_classes_adds_a_classifier_of_that_size(name, options, features):
    x = jnp.zeros((2, 16, 16, 3))
    plain, classifier = abstract(name, options), abstract(name, {**options, "num_classes": 7})
    assert param_count(classifier) - param_count(plain) == features * 7 + 7
    assert output_shape(classifier, "logits", x, train=False).shape == (2, 7)


# --- vit -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size", [16, 32, 48])
def test_vit_image_size_sets_the_position_embedding_grid(image_size):
    model = abstract("vit", {**VIT, "image_size": image_size})
    patches = (image_size // 8) ** 2
    assert model.pos_embedding.shape == (1, 1 + patches, VIT_WIDTH)  # a slot per patch and the cls token
    tokens = output_shape(model, "forward_tokens", jnp.zeros((2, image_size, image_size, 3)), False)
    assert tokens.shape == (2, 1 + patches, VIT_WIDTH)


def test_vit_pool_cls_takes_the_cls_token_and_gap_averages_patches():
    x = jnp.zeros((2, 16, 16, 3))
    cls, gap = abstract("vit", {**VIT, "pool": "cls"}), abstract("vit", {**VIT, "pool": "gap"})
    # gap has no cls token: one parameter vector and one token fewer.
    assert param_count(cls) - param_count(gap) == VIT_WIDTH + VIT_WIDTH  # the token and its position slot
    assert output_shape(cls, "forward_tokens", x, False).shape == (2, 5, VIT_WIDTH)
    assert output_shape(gap, "forward_tokens", x, False).shape == (2, 4, VIT_WIDTH)
    tokens = np.random.default_rng(0).normal(size=(2, 5, VIT_WIDTH)).astype(np.float32)
    np.testing.assert_array_equal(cls.pool_tokens(jnp.asarray(tokens)), tokens[:, 0])
    np.testing.assert_allclose(gap.pool_tokens(jnp.asarray(tokens[:, 1:])), tokens[:, 1:].mean(1), rtol=1e-6)


def test_vit_sincos_posemb_replaces_the_learned_embedding():
    learned, sincos = abstract("vit", VIT), abstract("vit", {**VIT, "posemb": "sincos2d"})
    assert sincos.pos_embedding is None
    assert param_count(learned) - param_count(sincos) == (1 + 4) * VIT_WIDTH
    # The fixed embedding is a constant of the forward pass: for the patch at (row 1, column 1)
    # of the 2x2 grid, sin(1 * omega_0) = sin(1) opens the x quarter and the y quarter (MoCo v3).
    grids = [np.asarray(c).reshape(4, VIT_WIDTH) for c in traced(sincos, (2, 16, 16, 3), train=False).consts
             if np.size(c) == 4 * VIT_WIDTH]
    quarter = VIT_WIDTH // 4
    assert any(np.allclose(c[3, [0, quarter, 2 * quarter, 3 * quarter]], [np.sin(1), np.cos(1)] * 2, atol=1e-6)
               for c in grids)


def test_vit_drop_path_rate_draws_masks_in_training_only():
    dropping = abstract("vit", {**VIT, "drop_path_rate": 0.2})
    # Stochastic depth grows linearly from 0 at the first block to the rate at the last (DeiT).
    np.testing.assert_allclose([b.drop_path.rate for b in dropping.blocks], np.linspace(0, 0.2, VIT_DEPTH))
    # Each block after the first draws a mask for each of its two branches in training mode.
    draws = lambda model, train: count(traced_equations(model, (2, 16, 16, 3), train), "random_bits")  # noqa: E731
    assert draws(dropping, train=True) == 2 * (VIT_DEPTH - 1)
    assert draws(dropping, train=False) == 0
    assert draws(abstract("vit", VIT), train=True) == 0


def test_vit_layer_scale_init_sets_every_branch_scale():
    gammas = initial_values("vit", {**VIT, "layer_scale_init": 0.25}, lambda path: path[-1] == "gamma")
    assert len(gammas) == 2 * VIT_DEPTH  # ls1 and ls2 in every block
    for path, value in gammas.items():
        np.testing.assert_array_equal(value, np.full(VIT_WIDTH, 0.25), err_msg=str(path))
    assert param_count(abstract("vit", VIT)) == param_count(abstract("vit", {**VIT, "layer_scale_init": 0.25})) \
        - 2 * VIT_DEPTH * VIT_WIDTH  # None (the default): no scales at all


def test_vit_remat_checkpoints_every_block():
    for remat, checkpoints in ((True, VIT_DEPTH), (False, 0)):
        equations = traced_equations(abstract("vit", {**VIT, "remat": remat}), (2, 16, 16, 3), train=True)
        assert count(equations, "remat2") == checkpoints  # jax.checkpoint's primitive


def test_vit_attention_impl_reaches_the_attention_call():
    def trace(impl):
        try:
            return sorted(e.primitive.name for e in traced_equations(
                abstract("vit", {**VIT, "attention_impl": impl}), (2, 16, 16, 3), train=False))
        except RuntimeError as error:  # cuDNN asked for where there is none: the option got through
            return str(error)

    assert trace("auto") == trace("xla")  # float32 never uses cuDNN (it has no float32 kernel)
    assert trace("cudnn") != trace("xla")


# --- dcgan ---------------------------------------------------------------------------------------

def test_dcgan_options_set_widths_sizes_and_channels():
    def generator_params(latent, base, channels):  # 32 px: 4x4 -> 8 -> 16 -> 32
        widths = [latent, 4 * base, 2 * base, base, channels]
        kernels = sum(16 * a * b for a, b in zip(widths[:-1], widths[1:]))
        return kernels + 2 * (4 * base + 2 * base + base)  # BN scale and bias but on the output layer

    def discriminator_params(base, channels):  # 32 px: 32 -> 16 -> 8 -> 4, then a 4x4 conv to 1
        widths = [channels, base, 2 * base, 4 * base, 1]
        kernels = sum(16 * a * b for a, b in zip(widths[:-1], widths[1:]))
        return kernels + 2 * (2 * base + 4 * base)  # no BN on the first layer

    for latent, base, channels in ((100, 8, 3), (16, 4, 1)):
        options = {"latent_dim": latent, "image_size": 32, "base_width": base, "channels": channels}
        generator, discriminator = abstract("dcgan_generator", options), abstract("dcgan_discriminator", options)
        assert param_count(generator) == generator_params(latent, base, channels)
        assert param_count(discriminator) == discriminator_params(base, channels)
        assert output_shape(generator, "__call__", jnp.zeros((2, latent)), train=False).shape == (2, 32, 32, channels)
        assert output_shape(discriminator, "__call__", jnp.zeros((2, 32, 32, channels)), train=False).shape == (2,)

    # image_size adds one doubling (and one layer each) from 32 to 64 px.
    big = {"image_size": 64, "base_width": 8}
    assert output_shape(abstract("dcgan_generator", big), "__call__", jnp.zeros((2, 100)), train=False).shape == \
        (2, 64, 64, 3)
    assert len(abstract("dcgan_generator", big).convs) == len(abstract("dcgan_discriminator", big).convs) == 5
    # The discriminator accepts latent_dim and ignores it.
    assert param_shapes(abstract("dcgan_discriminator", {**big, "latent_dim": 7})) == \
        param_shapes(abstract("dcgan_discriminator", big))
