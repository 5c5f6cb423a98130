"""The models' convolution (models/conv.py) computes what jax.lax.conv_general_dilated computes.

The reference is XLA's convolution and its autodiff gradients; the 'cpu' impl must give the same
forward outputs and the same gradients for the input and the kernel, to float32 rounding, for
every kind of convolution the models contain, and a whole ResNet-18 must train the same way
under either impl. The 'xla' impl (what GPU/TPU get) must stay XLA's convolution, gradients included.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from test_models import abstract, materialize
from vision_jax import config as config_lib
from vision_jax.errors import ConfigError
from vision_jax.models import MODELS, conv

NHWC = ("NHWC", "HWIO", "NHWC")

# (input shape, kernel shape, strides, padding, kernel dilation[, input dilation]): the models'
# convolutions, small. An input dilated by s is a transposed convolution with stride s.
CASES = {
    "3x3 s1 (ResNet, CNN)": ((2, 8, 8, 5), (3, 3, 5, 6), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "3x3 s2 (ResNet, CNN)": ((2, 9, 9, 5), (3, 3, 5, 6), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "1x1 s1 (ResNet-50)": ((2, 6, 6, 5), (1, 1, 5, 6), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    "1x1 s2 (ResNet shortcut)": ((2, 8, 8, 5), (1, 1, 5, 6), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    "7x7 s2 (ResNet ImageNet stem)": ((2, 16, 16, 3), (7, 7, 3, 6), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    "4x4 s2 p1 (DCGAN discriminator)": ((2, 8, 8, 3), (4, 4, 3, 6), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "4x4 s1 VALID (DCGAN logit)": ((2, 4, 4, 5), (4, 4, 5, 1), (1, 1), "VALID", (1, 1)),
    "4x4 s4 VALID (ViT patches)": ((2, 8, 8, 3), (4, 4, 3, 6), (4, 4), "VALID", (1, 1)),
    "3x3 SAME": ((2, 7, 7, 5), (3, 3, 5, 6), (1, 1), "SAME", (1, 1)),
    "3x3 dilation 2": ((2, 9, 9, 5), (3, 3, 5, 6), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    "3x3 asymmetric padding": ((2, 8, 8, 5), (3, 3, 5, 6), (2, 1), ((0, 2), (1, 0)), (1, 1)),
    "transposed 4x4 s2 (DCGAN generator)": ((2, 4, 4, 6), (4, 4, 6, 5), (1, 1), ((2, 2), (2, 2)), (1, 1), (2, 2)),
    "transposed 4x4 on 1x1 (DCGAN projection)": ((2, 1, 1, 6), (4, 4, 6, 5), (1, 1), ((3, 3), (3, 3)), (1, 1), (1, 1)),
    "transposed 3x3 s2 odd padding": ((2, 5, 5, 6), (3, 3, 6, 5), (1, 1), ((2, 1), (1, 2)), (1, 1), (2, 2)),
}


@pytest.fixture
def impl():
    """Sets the conv impl for the test; restores 'auto' after it."""
    yield conv.set_conv_impl
    conv.set_conv_impl("auto")


def randn(shape, seed, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def value_and_grads(conv_fn, x, kernel, strides, padding, dilation, input_dilation=(1, 1)):
    """A nonlinear loss of the conv output, its value and its gradients for the input and kernel."""
    def loss(x, kernel):
        y = conv_fn(x, kernel, strides, padding, lhs_dilation=input_dilation, rhs_dilation=dilation,
                    dimension_numbers=NHWC)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)) * jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size), y

    # A fresh function per call: the impl is read when jit traces, and jit caches per function.
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)
    return y, grads


def assert_close(actual, expected, rtol):
    scale = float(jnp.max(jnp.abs(expected.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32), rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("case", CASES)
def test_cpu_impl_equals_xla_reference(case, impl):
    x_shape, kernel_shape, *geometry = CASES[case]
    x, kernel = randn(x_shape, 0), randn(kernel_shape, 1)
    y_ref, (dx_ref, dk_ref) = value_and_grads(jax.lax.conv_general_dilated, x, kernel, *geometry)
    impl("cpu")
    y, (dx, dk) = value_and_grads(conv.conv_general_dilated, x, kernel, *geometry)
    assert y.shape == y_ref.shape and dk.shape == kernel.shape
    assert_close(y, y_ref, 1e-6)
    assert_close(dx, dx_ref, 1e-6)
    assert_close(dk, dk_ref, 1e-5)  # a sum over every output pixel, in another order


def test_kernel_gradient_summed_over_several_chunks(impl, monkeypatch):
    """A batch split into chunks (the scan) gives the same kernel gradient as the reference."""
    x_shape, kernel_shape, strides, padding, dilation = CASES["3x3 s2 (ResNet, CNN)"]
    x, kernel = randn((6, *x_shape[1:]), 0), randn(kernel_shape, 1)
    _, (_, dk_ref) = value_and_grads(jax.lax.conv_general_dilated, x, kernel, strides, padding, dilation)
    impl("cpu")
    bytes_per_image = 5 * 5 * 3 * 3 * 5 * 4  # output pixels x kernel taps x input channels x float32
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 2 * bytes_per_image)
    assert conv._images_per_chunk(6, bytes_per_image) == 2
    _, (_, dk) = value_and_grads(conv.conv_general_dilated, x, kernel, strides, padding, dilation)
    assert_close(dk, dk_ref, 1e-5)


@pytest.mark.parametrize("case", ["3x3 s1 (ResNet, CNN)", "3x3 s2 (ResNet, CNN)"])
def test_bfloat16_matches_float32_reference_to_bfloat16_precision(impl, case):
    x_shape, kernel_shape, strides, padding, dilation = CASES[case]
    x, kernel = randn(x_shape, 0, jnp.bfloat16), randn(kernel_shape, 1, jnp.bfloat16)
    # The reference sees the same bfloat16 values, computed in float32.
    y_ref, (dx_ref, dk_ref) = value_and_grads(jax.lax.conv_general_dilated, x.astype(jnp.float32),
                                              kernel.astype(jnp.float32), strides, padding, dilation)
    impl("cpu")
    y, (dx, dk) = value_and_grads(conv.conv_general_dilated, x, kernel, strides, padding, dilation)
    assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
    for actual, expected in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
        assert_close(actual, expected, 2e-2)  # bfloat16 keeps 8 bits: ~0.4% per rounding


def test_unsupported_convolutions_run_xla(impl):
    """Feature groups and input dilation are not in the 'cpu' path: they run XLA's convolution."""
    x, kernel = randn((2, 6, 6, 4), 0), randn((3, 3, 2, 6), 1)
    impl("cpu")
    grouped = jax.jit(lambda x, k: conv.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC,
                                                             feature_group_count=2))
    expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)
    assert_close(grouped(x, kernel), expected, 1e-6)


def kernel_grad_hlo(impl_name: str) -> str:
    conv.set_conv_impl(impl_name)
    x, kernel, dy = randn((2, 8, 8, 5), 0), randn((3, 3, 5, 6), 1), randn((2, 8, 8, 6), 2)

    def kernel_grad(x, kernel, dy):
        forward = lambda k: conv.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
        return jax.vjp(forward, kernel)[1](dy)

    return jax.jit(kernel_grad).lower(x, kernel, dy).as_text()


def test_xla_impl_keeps_xla_convolution_and_cpu_impl_uses_a_matmul(impl):
    assert "convolution" in kernel_grad_hlo("xla")
    cpu_hlo = kernel_grad_hlo("cpu")
    assert "convolution" not in cpu_hlo and "dot_general" in cpu_hlo


def test_auto_is_cpu_only_on_a_single_cpu_device(impl, monkeypatch):
    impl("auto")
    assert jax.default_backend() == "cpu" and jax.device_count() == 1
    assert conv.resolved_conv_impl() == "cpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert conv.resolved_conv_impl() == "xla"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    assert conv.resolved_conv_impl() == "xla"
    impl("cpu")  # forcing wins over the backend
    assert conv.resolved_conv_impl() == "cpu"


def test_unknown_impl_is_a_config_error_naming_the_choices():
    assert config_lib.default_config().conv_impl == "auto"
    with pytest.raises(ConfigError, match="'auto', 'xla', 'cpu'|auto, xla, cpu"):
        conv.set_conv_impl("cudnn")


def resnet18_train_grads(impl_name: str, model, images, labels):
    """Loss, logits and parameter gradients of ResNet-18 (BatchNorm in train mode) under an impl."""
    conv.set_conv_impl(impl_name)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, rest, copy=True)
        logits = model.logits(images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return loss, logits, grads


def test_resnet18_trains_the_same_under_either_impl(impl):
    model = materialize(abstract("resnet", depth=18, stem="cifar", num_classes=10))
    images, labels = randn((4, 16, 16, 3), 3), jnp.array([0, 3, 5, 9])
    loss_x, logits_x, grads_x = resnet18_train_grads("xla", model, images, labels)
    loss_c, logits_c, grads_c = resnet18_train_grads("cpu", model, images, labels)
    np.testing.assert_array_equal(logits_c, logits_x)  # the forward pass is the same XLA program
    assert float(loss_c) == float(loss_x)
    flat_x, flat_c = nnx.to_flat_state(grads_x), nnx.to_flat_state(grads_c)
    assert [path for path, _ in flat_x] == [path for path, _ in flat_c]
    conv_kernels = 0
    for (path, gx), (_, gc) in zip(flat_x, flat_c):
        assert_close(gc[...], gx[...], 1e-4)  # rounding differences carried back through 20 layers
        conv_kernels += path[-1] == "kernel" and gx.ndim == 4
    assert conv_kernels == 20


@pytest.mark.parametrize("impl_name", ["xla", "cpu"])
def test_dcgan_generator_layers_are_transposed_convolutions(impl_name, impl):
    """Each up-conv computes lax.conv_transpose with its kernel (what flax's ConvTranspose runs)."""
    generator = MODELS.build("dcgan_generator", {"image_size": 16, "base_width": 4, "latent_dim": 6},
                             rngs=nnx.Rngs(0))
    impl(impl_name)
    x = randn((2, 1, 1, 6), 0)
    for layer, stride, padding, size in zip(generator.convs, (1, 2, 2), ("VALID", "SAME", "SAME"), (4, 8, 16)):
        expected = jax.lax.conv_transpose(x, layer.kernel[...], (stride, stride), padding, dimension_numbers=NHWC)
        y = layer(x)
        assert y.shape == expected.shape == (2, size, size, layer.out_features)
        assert_close(y, expected, 1e-6)
        x = expected


def kernel_grad_hlo_of(impl_name: str, case: str) -> str:
    conv.set_conv_impl(impl_name)
    x_shape, k_shape, strides, padding, dilation, *input_dilation = CASES[case]
    input_dilation = input_dilation[0] if input_dilation else (1, 1)
    x, kernel = randn(x_shape, 0), randn(k_shape, 1)
    forward = lambda k: conv.conv_general_dilated(x, k, strides, padding, input_dilation, dilation,
                                                  dimension_numbers=NHWC)
    dy = jnp.zeros(jax.eval_shape(forward, kernel).shape)
    return jax.jit(lambda k, dy: jax.vjp(forward, k)[1](dy)).lower(kernel, dy).as_text()


@pytest.mark.parametrize("case, matmul", [
    ("3x3 s1 (ResNet, CNN)", False), ("3x3 s2 (ResNet, CNN)", False), ("1x1 s1 (ResNet-50)", True),
    ("4x4 s2 p1 (DCGAN discriminator)", False), ("1x1 s2 (ResNet shortcut)", True),
    ("4x4 s4 VALID (ViT patches)", True), ("transposed 4x4 s2 (DCGAN generator)", True)])
def test_auto_takes_the_matmul_kernel_gradient_only_where_it_is_faster(impl, case, matmul):
    """On one CPU device 'auto' keeps XLA's kernel gradient for overlapping windows and takes the
    matmul for pointwise and transposed convolutions and non-overlapping strided windows
    (bench/conv_cpu.py, bench/train_step.py)."""
    hlo = kernel_grad_hlo_of("auto", case)
    assert ("convolution" not in hlo and "dot_general" in hlo) == matmul, hlo[:2000]
    assert "convolution" not in kernel_grad_hlo_of("cpu", case)  # 'cpu' forces the matmul everywhere


def input_grad_hlo(impl_name: str, x_shape, kernel_shape, strides, padding) -> str:
    """StableHLO of the input gradient of one convolution (traced on shapes, never run)."""
    conv.set_conv_impl(impl_name)
    kernel = randn(kernel_shape, 1)
    forward = lambda x: conv.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    dy = jax.ShapeDtypeStruct(jax.eval_shape(forward, x).shape, jnp.float32)
    return jax.jit(lambda x, dy: jax.vjp(forward, x)[1](dy)).lower(x, dy).as_text()


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][2] != (1, 1) and len(CASES[c]) == 5
                                  and CASES[c][4] == (1, 1)])
def test_strided_input_gradient_multiplies_no_inserted_zeros_under_cpu(impl, case):
    """XLA's input gradient of a strided convolution dilates dy by the stride (lhs_dilate); the
    phase input gradient is stride-1 convolutions only (its values: test_cpu_impl_equals_xla_reference)."""
    x_shape, kernel_shape, strides, padding, _ = CASES[case]
    dilated = f"lhs_dilate = [{strides[0]}, {strides[1]}]"
    assert dilated in input_grad_hlo("xla", x_shape, kernel_shape, strides, padding)
    phases = input_grad_hlo("cpu", x_shape, kernel_shape, strides, padding)
    assert "convolution" in phases and "lhs_dilate = [1, 1]" in phases and dilated not in phases


@pytest.mark.parametrize("x_shape, kernel_shape, phases", [
    ((128, 32, 32, 32), (3, 3, 32, 64), True),  # the small CNN's second layer
    ((128, 16, 16, 128), (3, 3, 128, 256), True),  # ResNet-18
    ((128, 32, 32, 64), (1, 1, 64, 128), True),  # ResNet-18's shortcut
    ((128, 32, 32, 64), (4, 4, 64, 128), True),  # DCGAN's discriminator
    ((128, 8, 8, 128), (3, 3, 128, 256), False),  # small: XLA's is ahead
    ((128, 64, 64, 3), (4, 4, 3, 64), False),  # 3 channels: too thin
])
def test_auto_takes_the_phase_input_gradient_only_where_it_is_faster(impl, x_shape, kernel_shape, phases):
    """On one CPU device 'auto' splits stride-2 layers on inputs of at least 16x16x16 into phases
    (bench/conv_cpu.py measured where each is faster)."""
    padding = ((1, 1), (1, 1)) if kernel_shape[0] > 1 else "VALID"
    hlo = input_grad_hlo("auto", x_shape, kernel_shape, (2, 2), padding)
    assert ("lhs_dilate = [2, 2]" not in hlo) == phases
    phase_count = 4 if kernel_shape[0] > 1 else 1  # 2x2 phases; a 1x1 kernel has taps in one
    assert hlo.count("stablehlo.convolution") == (phase_count if phases else 1)


def test_max_pool_equals_flax_max_pool_in_value_and_gradient():
    """layers.max_pool (a max over a reshape) against nnx.max_pool (reduce_window), on sizes that
    tile and sizes that leave a remainder (dropped, as VALID padding does)."""
    from vision_jax.models.layers import max_pool
    for shape, window in (((2, 8, 8, 3), 2), ((2, 9, 7, 3), 2), ((1, 12, 12, 2), 3)):
        x = randn(shape, 4)  # continuous values: no tied maxima
        weights = randn(nnx.max_pool(x, (window, window), strides=(window, window)).shape, 5)
        ours = jax.value_and_grad(lambda x: jnp.sum(max_pool(x, window) * weights))(x)
        flax = jax.value_and_grad(lambda x: jnp.sum(nnx.max_pool(x, (window, window), strides=(window, window))
                                                    * weights))(x)
        np.testing.assert_array_equal(max_pool(x, window), nnx.max_pool(x, (window, window), strides=(window, window)))
        np.testing.assert_array_equal(ours[1], flax[1])
        assert float(jnp.abs(ours[1]).sum()) > 0


COMPILED_CONV = """
import jax, jax.numpy as jnp
import vision_jax  # sets XLA_FLAGS before the backend starts (vision_jax/xla_flags.py)
x, k = jnp.ones((8, 32, 32, 32)), jnp.ones((3, 3, 32, 32))  # large enough for XLA to hand to YNNPACK
conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
dot = lambda a, b: a @ b
print(*["ynn" if "__ynn_fusion" in jax.jit(f).lower(*args).compile().as_text() else "eigen"
        for f, args in ((conv, (x, k)), (dot, (jnp.ones((256, 512)), jnp.ones((512, 256)))))])
"""


@pytest.mark.parametrize("user_flags, runs_on", [(None, ["eigen", "eigen"]),
                                                 ("+individual_convolution", ["ynn", "ynn"])])
def test_importing_the_package_moves_cpu_convolutions_and_dots_off_ynnpack(user_flags, runs_on):
    """Without a user setting, XLA:CPU's convolutions leave YNNPACK (one thread) for Eigen (every
    core), and so do its dots; a user's own --xla_cpu_experimental_ynn_fusion_type is left alone
    (XLA's default set, which '+' adds to, hands both to YNNPACK)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if user_flags:
        env["XLA_FLAGS"] = f"--xla_cpu_experimental_ynn_fusion_type={user_flags}"
    out = subprocess.run([sys.executable, "-c", COMPILED_CONV], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == runs_on, out.stderr[-2000:]
