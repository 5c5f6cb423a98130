"""Models match their published sizes and behave as their options say.

Speed (2 CPU cores): building a model eagerly compiles one XLA program per initializer shape
(about 5 s for a ResNet-18), so most tests build models abstractly (`nnx.eval_shape`, no
compilation) and either stop at shapes or fill the parameters from numpy (`materialize`). Only
the tests about initial values run the real initializers, on small models.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import MODELS, DINOHead, LinearClassifier, MLPHead, ProjectionHead, axes
from vision_jax.models.flops import model_flops
from vision_jax.models.layers import BatchNorm, conv_init
from vision_jax.models.resnet import BasicBlock, BottleneckBlock

F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)


def randn(*shape, seed: int = 0) -> jax.Array:
    # From numpy: XLA:CPU takes seconds to compile a multi-dimensional jax.random.normal.
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def count_params(model) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract(name, **options):
    """The model registered as `name`, with shapes but no values (nothing allocated or compiled)."""
    return nnx.eval_shape(lambda: MODELS.build(name, options, rngs=nnx.Rngs(0)))


def param_count(name, **options) -> int:
    return count_params(abstract(name, **options))


def materialize(model, seed: int = 0):
    """Gives an abstract model values from numpy: weights N(0, 2/fan_in), BN scales 1 and shifts 0,
    running statistics at their initial 0 (mean) and 1 (var). In place; returns the model."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if len(leaf.shape) >= 2:
            value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        else:
            value = np.ones(leaf.shape) if name in ("scale", "var", "gain") else np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
    nnx.update(model, state)
    return model


def abstract_forward(model, x, method="__call__", **kwargs):
    """Output shapes/dtypes of `model.method(x, **kwargs)` without computing (model may be abstract)."""
    graphdef, state = nnx.split(model)
    return jax.eval_shape(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x, **kwargs), state, x)


# ---------------------------------------------------------------------------------------------
# ResNet


@pytest.mark.parametrize("depth,published", [
    (18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160), (152, 60_192_808),
    # Not in torchvision: timm 1.0.31 `resnet200` (pretrained=False) counts 64,673,832.
    (200, 64_673_832)])
def test_resnet_parameter_counts_match_torchvision(depth, published):
    # torchvision's counts include the 1000-class fc.
    assert param_count("resnet", depth=depth, stem="imagenet", num_classes=1000) == published


@pytest.mark.parametrize("width,published_millions", [(2, 94), (4, 375)])
def test_wide_resnet50_matches_simclr_sizes(width, published_millions):
    # SimCLR (Chen et al. 2020, Fig. 7 / README): ResNet-50 (2x) 94M, (4x) 375M parameters, and
    # ResNet-50 (1x) 24M. Those are encoder sizes: ours are 23.5M, 93.9M and 375.4M without the fc
    # (25.6M, 98.0M, 383.6M with a 1000-class fc).
    wide = abstract("resnet", depth=50, width_multiplier=width)
    assert round(count_params(wide) / 1e6) == published_millions
    # The stem and every stage are `width` times wider (64, 128, 256, 512 at 1x).
    assert wide.stem_conv.kernel.shape == (7, 7, 3, 64 * width)
    assert sorted({b.conv2.kernel.shape[-1] for b in wide.blocks}) == [64 * width * 2**s for s in range(4)]
    assert wide.num_features == 2048 * width


def test_cifar_stem_keeps_resolution_and_imagenet_stem_reduces_it():
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    cifar, imagenet = abstract("resnet", depth=18, stem="cifar"), abstract("resnet", depth=18, stem="imagenet")
    # Same parameters but the stem conv (3x3 vs 7x7 kernel).
    assert count_params(imagenet) - count_params(cifar) == (49 - 9) * 3 * 64
    assert abstract_forward(cifar.stem_conv, x).shape == (2, 32, 32, 64)
    assert abstract_forward(imagenet.stem_conv, x).shape == (2, 16, 16, 64)
    # Stride 1 and no max-pool: the three stride-2 stages leave 32/8 = 4; the ImageNet stem's
    # stride-2 conv and max-pool divide by 4 more.
    assert abstract_forward(cifar, x, "forward_features", train=False)["feature_map"].shape == (2, 4, 4, 512)
    assert abstract_forward(imagenet, x, "forward_features", train=False)["feature_map"].shape == (2, 1, 1, 512)
    assert abstract_forward(imagenet, x, train=False).shape == (2, 512)


@pytest.fixture(scope="module")
def resnet18_cifar():
    return materialize(abstract("resnet", depth=18, stem="cifar"))


def test_forward_features_pooled_is_the_mean_of_the_feature_map_and_the_encoder_output(resnet18_cifar):
    x = randn(2, 16, 16, 3, seed=0)
    both = nnx.jit(lambda m, x: (m.forward_features(x, train=False), m(x, train=False)))
    out, pooled = both(resnet18_cifar, x)
    assert out["feature_map"].shape == (2, 2, 2, 512) and out["feature_map"].dtype == jnp.float32
    np.testing.assert_allclose(out["pooled"], out["feature_map"].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pooled, out["pooled"], rtol=1e-6)
    assert pooled.dtype == jnp.float32 and float(pooled.std()) > 0


def test_conv_init_is_he_fan_out_normal():
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), std sqrt(2 / (3 * 3 * 64)).
    kernel = np.asarray(conv_init(jax.random.key(0), (3, 3, 32, 64)))
    assert kernel.shape == (3, 3, 32, 64)
    assert abs(kernel.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.03 and abs(kernel.mean()) < 3e-3
    # Not truncated: a normal sample of 18k has values beyond 3 std.
    assert np.abs(kernel).max() > 3 * np.sqrt(2 / (9 * 64))
    # The flat draw gives flax's variance_scaling values exactly (threefry_partitionable draws
    # depend on the flat index only), so checkpoints and runs made before the change still match.
    reference = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")(
        jax.random.key(0), (3, 3, 32, 64))
    np.testing.assert_array_equal(kernel, np.asarray(reference))


def test_zero_init_last_bn_makes_every_residual_block_start_as_identity():
    # Blocks with no projection on the shortcut (same width in and out, stride 1).
    x = randn(2, 4, 4, 8, seed=0)
    basic = BasicBlock(8, 8, 1, zero_init_last_bn=True, rngs=nnx.Rngs(0), **F32)
    bottleneck = BottleneckBlock(8, 2, 1, zero_init_last_bn=True, rngs=nnx.Rngs(0), **F32)
    default = BasicBlock(8, 8, 1, zero_init_last_bn=False, rngs=nnx.Rngs(0), **F32)
    assert float(jnp.abs(basic.bn2.scale[...]).max()) == float(jnp.abs(bottleneck.bn3.scale[...]).max()) == 0
    assert float(default.bn2.scale[...].min()) == 1.0
    outputs = nnx.jit(lambda blocks, x: [b(x, train=False) for b in blocks])([basic, bottleneck, default], x)
    np.testing.assert_allclose(outputs[0], nnx.relu(x), atol=1e-6)
    np.testing.assert_allclose(outputs[1], nnx.relu(x), atol=1e-6)
    assert not np.allclose(outputs[2], nnx.relu(x), atol=1e-3)


def test_remat_gives_identical_outputs_batch_stats_and_gradients(resnet18_cifar):
    x = randn(2, 16, 16, 3, seed=1)
    _, state = nnx.split(resnet18_cifar)

    def run(remat: bool):
        graphdef, _ = nnx.split(abstract("resnet", depth=18, stem="cifar", remat=remat))
        params, rest = state.split(nnx.Param, ...)  # the same values in both models

        def loss(params, rest):
            model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, rest))  # fresh BatchStats
            return jnp.mean(model(x, train=True) ** 2), nnx.state(model, nnx.BatchStat)

        # Unoptimized XLA (-O0) compiles the ResNet-18 gradient in half the time; both variants
        # compile alike, so the comparison is unaffected.
        step = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params, rest).compile(
            compiler_options={"xla_backend_optimization_level": 0})
        (loss_value, stats), grads = step(params, rest)
        model = nnx.merge(graphdef, state)
        primitives = [e.primitive.name for e in jax.make_jaxpr(lambda m: m(x, train=False))(model).jaxpr.eqns]
        return loss_value, nnx.to_pure_dict(grads), nnx.to_pure_dict(stats), primitives

    plain, remat = run(False), run(True)
    # The option really checkpoints: one jax.checkpoint ('remat2') per residual block, none without.
    assert remat[3].count("remat2") == 8 and "remat2" not in plain[3]
    np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # noqa: E731
    jax.tree.map(close, plain[1], remat[1])
    jax.tree.map(close, plain[2], remat[2])
    assert float(jnp.abs(plain[1]["stem_conv"]["kernel"]).max()) > 0  # gradients reach the stem


def test_resnet50_forward_flops_match_the_published_count():
    # torchvision lists ResNet-50 at 4.09 "GFLOPS", which are multiply-adds; XLA counts 2 FLOPs per
    # multiply-add. Measured: 7.94e9 from the lowered HLO (3.97 G multiply-adds, -2.9%: XLA skips
    # the products with zero padding that fvcore-style counters include); 7.99e9 after compiling.
    flops = model_flops(abstract("resnet", depth=50), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
                        train=False)
    assert abs(flops / (2 * 4.09e9) - 1) < 0.05


def test_timm_weights_must_come_as_an_existing_safetensors_file(tmp_path):
    from vision_jax.errors import MissingDataError
    from vision_jax.models.pretrained import load_timm_weights

    model = abstract("resnet", depth=18)
    with pytest.raises(ConfigError, match="not a .safetensors file.*safetensors.torch.save_file"):
        load_timm_weights(tmp_path / "resnet18.pth", model)
    with pytest.raises(MissingDataError, match="No pretrained weights at"):
        load_timm_weights(tmp_path / "model.safetensors", model)


def test_unsupported_resnet_options_are_clear_errors():
    with pytest.raises(ValueError, match="depth 19.*18, 34, 50"):
        MODELS.build("resnet", {"depth": 19}, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="stem 'tiny'.*'imagenet'.*'cifar'"):
        MODELS.build("resnet", {"stem": "tiny"}, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="width_multiplier.*positive integer.*0"):
        MODELS.build("resnet", {"width_multiplier": 0}, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="no classifier.*num_classes > 0"):
        abstract("resnet", depth=18).logits(jnp.ones((1, 8, 8, 3)), train=False)


# ---------------------------------------------------------------------------------------------
# Small CNN, precision


def test_train_mode_updates_batch_norm_statistics_and_eval_mode_does_not():
    model = materialize(abstract("cnn", widths=(8, 16)))
    x = randn(4, 8, 8, 3, seed=1) * 3 + 1
    before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    forward = nnx.jit(lambda m, x, train: m(x, train=train), static_argnames="train")
    forward(model, x, train=False)
    unchanged = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    forward(model, x, train=True)
    after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, unchanged)
    assert not np.allclose(before["norms"][0]["mean"], after["norms"][0]["mean"])


def test_batch_norm_follows_pytorch_momentum_and_epsilon():
    # PyTorch's BatchNorm defaults, written out: momentum 0.1 (running = 0.9 running + 0.1 batch)
    # and eps 1e-5. Channel 1 varies by 1e-3 so that eps shows: 1e-3 / sqrt(1e-6 + 1e-5) = 0.3015.
    # (Flax keeps the biased batch variance in the running one; PyTorch the unbiased, n/(n-1)
    # larger: negligible over the batch x height x width positions a conv BN averages.)
    x = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 0.002], [7.0, 0.002]], np.float32)
    mean, var = x.mean(0), x.var(0)  # [4, 0.001], [5, 1e-6]
    norm = BatchNorm(2, rngs=nnx.Rngs(0))
    train_out = nnx.jit(lambda n, x: n(x, use_running_average=False))(norm, jnp.asarray(x))
    np.testing.assert_allclose(train_out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4)
    np.testing.assert_allclose(train_out[:, 1], [-0.3015, -0.3015, 0.3015, 0.3015], rtol=1e-3)
    np.testing.assert_allclose(norm.mean[...], 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(norm.var[...], 0.9 * 1.0 + 0.1 * var, rtol=1e-6)
    eval_out = nnx.jit(lambda n, x: n(x, use_running_average=True))(norm, jnp.asarray(x))
    np.testing.assert_allclose(eval_out, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5), rtol=1e-5)


def test_bfloat16_compute_keeps_params_statistics_and_outputs_in_float32():
    x = randn(4, 8, 8, 3, seed=1)
    full = materialize(abstract("cnn", widths=(8, 16)))
    half = nnx.eval_shape(lambda: MODELS.build("cnn", {"widths": (8, 16)}, rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
    nnx.update(half, nnx.state(full))  # same float32 parameters, bfloat16 compute

    @nnx.jit
    def run(model, x):
        conv_out = model.convs[0](x)
        return conv_out, model.norms[0](conv_out, use_running_average=False), model(x, train=True)

    conv_out, norm_out, out = run(half, x)
    assert conv_out.dtype == norm_out.dtype == jnp.bfloat16  # compute dtype between layers
    assert out.dtype == jnp.float32  # pooled features
    assert {p.dtype for p in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype(jnp.float32)}
    assert {s.dtype for s in jax.tree.leaves(nnx.state(half, nnx.BatchStat))} == {jnp.dtype(jnp.float32)}
    # The same function up to bfloat16 rounding (8 bits of mantissa).
    np.testing.assert_allclose(out, run(full, x)[2], atol=0.05, rtol=0.05)
    stored = nnx.eval_shape(lambda: MODELS.build("cnn", {}, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(stored, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}


# ---------------------------------------------------------------------------------------------
# Logical axis names

ALL_MODELS = {
    "resnet18_fc": lambda: MODELS.build("resnet", {"depth": 18, "num_classes": 10}, rngs=nnx.Rngs(0)),
    "resnet50": lambda: MODELS.build("resnet", {"depth": 50}, rngs=nnx.Rngs(0)),
    "cnn": lambda: MODELS.build("cnn", {}, rngs=nnx.Rngs(0)),
    "dcgan_generator": lambda: MODELS.build("dcgan_generator", {}, rngs=nnx.Rngs(0)),
    "dcgan_discriminator": lambda: MODELS.build("dcgan_discriminator", {}, rngs=nnx.Rngs(0)),
    "linear": lambda: LinearClassifier(512, 10, rngs=nnx.Rngs(0)),
    "projection1": lambda: ProjectionHead(512, 256, 128, num_layers=1, rngs=nnx.Rngs(0)),
    "projection3": lambda: ProjectionHead(512, 256, 128, num_layers=3, rngs=nnx.Rngs(0)),
    "byol": lambda: MLPHead(512, rngs=nnx.Rngs(0)),
    "dino_bn_g": lambda: DINOHead(384, 1024, use_bn=True, norm_last_layer=False, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_every_parameter_has_one_known_logical_name_per_dimension(name):
    params = nnx.state(nnx.eval_shape(ALL_MODELS[name]), nnx.Param)
    pairs = list(zip(jax.tree.leaves(params), jax.tree.leaves(nnx.get_partition_spec(params))))
    assert pairs
    for param, spec in pairs:
        assert len(spec) == len(param.shape), (name, param.shape, spec)
        named = [a for a in spec if a is not None]
        assert named and set(named) <= set(axes.ALL), (name, param.shape, spec)
        assert len(named) == len(set(named)), f"{name}: an axis name twice in {spec}"


# ---------------------------------------------------------------------------------------------
# DCGAN


def test_dcgan_parameter_counts_match_the_pytorch_example():
    # pytorch/examples dcgan (nz=100, ngf=ndf=64, nc=3, 64x64), counted with torch 2.13.
    assert param_count("dcgan_generator", image_size=64) == 3_576_704
    assert param_count("dcgan_discriminator", image_size=64) == 2_765_568


def test_dcgan_initializes_as_the_paper():
    # The smallest networks that have every kind of layer (real initializers compile per shape).
    generator = MODELS.build("dcgan_generator", {"image_size": 8, "base_width": 16}, rngs=nnx.Rngs(0))
    discriminator = MODELS.build("dcgan_discriminator", {"image_size": 16, "base_width": 16}, rngs=nnx.Rngs(1))
    kernels = np.concatenate([np.ravel(c.kernel[...]) for c in [*generator.convs, *discriminator.convs]])
    scales = np.concatenate([np.ravel(n.scale[...]) for n in [*generator.norms, *discriminator.norms]])
    biases = np.concatenate([np.ravel(n.bias[...]) for n in [*generator.norms, *discriminator.norms]])
    assert abs(kernels.mean()) < 1e-3 and abs(kernels.std() - 0.02) < 1e-3  # N(0, 0.02)
    assert abs(scales.mean() - 1) < 0.01 and abs(scales.std() - 0.02) < 0.01  # N(1, 0.02)
    assert not biases.any()


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_shapes_and_ranges(size):
    options = {"image_size": size, "base_width": 8}
    generator = materialize(abstract("dcgan_generator", **options))
    discriminator = materialize(abstract("dcgan_discriminator", **options))
    check_generator_and_discriminator(generator, discriminator, size)


def check_generator_and_discriminator(generator, discriminator, size):
    z = randn(3, 100, seed=2)
    images, logits = nnx.jit(lambda g, d, z: (g(z, train=True), d(g(z, train=True), train=True)))(
        generator, discriminator, z)
    assert images.shape == (3, size, size, 3) and images.dtype == jnp.float32
    assert float(jnp.abs(images).max()) <= 1.0 and float(images.std()) > 0.01
    assert float(jnp.abs(images[0] - images[1]).mean()) > 1e-3  # the generator does not ignore z
    assert logits.shape == (3,) and logits.dtype == jnp.float32
    # One transposed conv per doubling after the 4x4 projection; BN on all but the output layer.
    assert len(generator.convs) == {32: 4, 64: 5}[size] and len(generator.norms) == len(generator.convs) - 1
    # BN on every strided conv but the first; none on the final 4x4 conv to the logit.
    assert len(discriminator.convs) == len(generator.convs) and len(discriminator.norms) == len(discriminator.convs) - 2


def test_dcgan_rejects_image_sizes_it_cannot_reach():
    with pytest.raises(ConfigError, match="image_size must be 4 \\* 2\\^n.*48"):
        MODELS.build("dcgan_generator", {"image_size": 48}, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# Heads


def test_projection_head_keeps_its_simclr_api_and_byol_head_its_reference_size():
    head = materialize(nnx.eval_shape(lambda: ProjectionHead(8, 16, 4, rngs=nnx.Rngs(0))))
    assert count_params(head) == 8 * 16 + 2 * 16 + 16 * 4 + 4  # no bias before BN
    assert nnx.jit(lambda h, x: h(x, train=True))(head, jnp.ones((3, 8))).shape == (3, 4)
    # BYOL (Grill et al. 2020) projector on a ResNet-50: Linear(2048->4096, bias), BN(4096) scale
    # and offset, Linear(4096->256, bias).
    assert count_params(nnx.eval_shape(lambda: MLPHead(2048, rngs=nnx.Rngs(0)))) == \
        2048 * 4096 + 4096 + 2 * 4096 + 4096 * 256 + 256


def test_heads_return_float32_under_bfloat16_compute():
    x = jnp.ones((2, 8))
    half = dict(dtype=jnp.bfloat16)
    heads = [materialize(nnx.eval_shape(lambda: LinearClassifier(8, 3, **half, rngs=nnx.Rngs(0)))),
             materialize(nnx.eval_shape(lambda: MLPHead(8, 16, 4, **half, rngs=nnx.Rngs(0)))),
             materialize(nnx.eval_shape(lambda: DINOHead(8, 32, 16, 8, **half, rngs=nnx.Rngs(0))))]
    outs = nnx.jit(lambda hs, x: (hs[0](x), hs[1](x, train=True), hs[2](x, train=False)))(heads, x)
    assert [o.dtype for o in outs] == [jnp.float32] * 3


def test_dino_head_is_invariant_to_the_scale_of_its_last_layer_and_its_bottleneck_is_unit_norm():
    head = materialize(nnx.eval_shape(lambda: DINOHead(16, out_dim=64, hidden_dim=32, bottleneck_dim=8,
                                                        rngs=nnx.Rngs(0))))
    x = randn(4, 16, seed=1)
    forward = nnx.jit(lambda h, x: (h.embed(x, train=False), h(x, train=False)))
    bottleneck, before = forward(head, x)
    np.testing.assert_allclose(jnp.linalg.norm(bottleneck, axis=-1), 1.0, rtol=1e-6)
    head.direction[...] = head.direction[...] * 7.5
    np.testing.assert_allclose(forward(head, x)[1], before, rtol=1e-5, atol=1e-6)
    # Each output is a cosine (unit bottleneck, unit-norm column, g = 1): at most 1, not all equal.
    assert float(jnp.abs(before).max()) <= 1 + 1e-6 and float(before.std()) > 0.01


def test_dino_head_parameter_count_matches_the_reference_for_vit_small():
    # facebookresearch/dino DINOHead(384, 65536): Linear 384->2048, 2048->2048, 2048->256 (with
    # biases), then the weight-normed 256->65536 (no bias). Our convention: with norm_last_layer
    # the norm g is fixed at 1, so it is no parameter at all; this equals the reference's
    # *trainable* count (its weight_g, 65,536 values, is a Parameter with requires_grad=False:
    # 22,352,128 in `parameters()` and 22,286,592 trainable, checked with torch 2.13).
    reference = 384 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 256 + 256 + 256 * 65536
    assert reference == 22_286_592
    assert count_params(nnx.eval_shape(lambda: DINOHead(384, rngs=nnx.Rngs(0)))) == reference
    # norm_last_layer=False makes g (one per output) trainable.
    trainable_g = nnx.eval_shape(lambda: DINOHead(384, norm_last_layer=False, rngs=nnx.Rngs(0)))
    assert count_params(trainable_g) == reference + 65536
