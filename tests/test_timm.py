"""Our models compute what timm's compute when given timm's weights (fine-tuning from timm).

Needs torch and timm, which CI does not install (the test skips there); run it with an environment
that has both, e.g. `PYTHONPATH=. /tmp/timmenv/bin/python -m pytest tests/test_timm.py`.
The timm models are randomly initialized (pretrained=False: no download) and their BatchNorm
statistics and affine parameters randomized, so that every tensor of the mapping matters.
"""
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="torch is not installed (needed only to cross-check timm weights)")
timm = pytest.importorskip("timm", reason="timm is not installed (needed only to cross-check timm weights)")

from vision_jax.models import MODELS  # noqa: E402

# Shared by the ResNet and ViT checks -------------------------------------------------------------

# Logits must agree to 1e-4 of the largest |logit|: float32 convolutions/matmuls summed in a
# different order drift by ~1e-6 relative per layer, far below a mapping error (a wrong transpose
# or a swapped BN statistic changes logits by O(1) of their scale).
RELATIVE_TOLERANCE = 1e-4


def timm_model(name: str, seed: int = 0, **kwargs):
    """A randomly initialized timm model in eval mode, with random BN statistics and affines."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model


def numpy_state_dict(module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def random_images(batch: int = 2, size: int = 224, seed: int = 0) -> np.ndarray:
    """NHWC float32 images (ours); `timm_logits` hands them to torch as NCHW."""
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def timm_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def assert_logits_close(ours, theirs) -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 0
    error = np.abs(ours - theirs).max() / scale
    assert error < RELATIVE_TOLERANCE, f"max |difference| is {error:.2e} of the logit scale"


# ResNet -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,depth", [("resnet18", 18), ("resnet50", 50)])
def test_resnet_with_timm_weights_gives_timm_logits(name, depth):
    from vision_jax.models.timm_resnet import resnet_params_from_timm

    reference = timm_model(name)
    # Abstract: the converter fills every variable, so no random init is needed.
    model = nnx.eval_shape(lambda: MODELS.build("resnet", {"depth": depth, "num_classes": 1000},
                                                rngs=nnx.Rngs(0)))
    resnet_params_from_timm(numpy_state_dict(reference), model)
    images = random_images()
    logits = nnx.jit(lambda m, x: m.logits(x, train=False))(model, images)
    assert_logits_close(logits, timm_logits(reference, images))


def test_resnet_encoder_drops_the_classifier_and_keeps_timm_features():
    from vision_jax.models.timm_resnet import resnet_params_from_timm

    reference = timm_model("resnet18", seed=1)
    encoder = nnx.eval_shape(lambda: MODELS.build("resnet", {"depth": 18}, rngs=nnx.Rngs(0)))
    resnet_params_from_timm(numpy_state_dict(reference), encoder)
    images = random_images(size=64, seed=1)
    with torch.no_grad():  # timm's pooled features: forward_head(pre_logits=True)
        features = reference.forward_head(reference.forward_features(
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()), pre_logits=True).numpy()
    assert_logits_close(nnx.jit(lambda m, x: m(x, train=False))(encoder, images), features)


def test_resnet_weights_of_another_depth_are_a_clear_error():
    from vision_jax.errors import CheckpointError
    from vision_jax.models.timm_resnet import resnet_params_from_timm

    weights = numpy_state_dict(timm_model("resnet18"))
    model = nnx.eval_shape(lambda: MODELS.build("resnet", {"depth": 34, "num_classes": 1000}, rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointError, match=r"missing \['blocks/2/.*Build the model with the depth"):
        resnet_params_from_timm(weights, model)


def test_resnet_loads_from_a_safetensors_file(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from vision_jax.models.pretrained import load_timm_weights

    reference = timm_model("resnet18", seed=2)
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(numpy_state_dict(reference), str(path))
    model = nnx.eval_shape(lambda: MODELS.build("resnet", {"depth": 18, "num_classes": 1000}, rngs=nnx.Rngs(0)))
    load_timm_weights(path, model)
    np.testing.assert_array_equal(np.asarray(model.stem_conv.kernel[...]),
                                  reference.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.blocks[7].bn2.var[...]),
                                  reference.layer4[1].bn2.running_var.numpy())
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), reference.fc.weight.detach().numpy().T)


# ViT --------------------------------------------------------------------------------------------


def timm_vit(name: str, seed: int = 0, **kwargs):
    """A randomly initialized timm ViT with every tensor perturbed: timm starts biases at zero and
    LayerNorms at one/zero, where a swapped or mis-split tensor would go unnoticed."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def our_vit(**options):
    # Abstract: the converter fills every parameter, so no random init is needed.
    return nnx.eval_shape(lambda: MODELS.build("vit", options, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name,variant", [("vit_tiny_patch16_224", "Ti"), ("vit_small_patch16_224", "S")])
def test_vit_with_timm_weights_gives_timm_logits(name, variant):
    from vision_jax.models.timm_vit import vit_params_from_timm

    reference = timm_vit(name)
    model = our_vit(variant=variant, num_classes=1000)
    vit_params_from_timm(numpy_state_dict(reference), model)
    images = random_images()
    logits = nnx.jit(lambda m, x: m.logits(x, train=False))(model, images)
    assert_logits_close(logits, timm_logits(reference, images))


def test_vit_encoder_drops_the_head_and_keeps_timm_features():
    from vision_jax.models.timm_vit import vit_params_from_timm

    reference = timm_vit("vit_tiny_patch16_224", seed=1, init_values=1e-2)  # with LayerScale
    encoder = our_vit(variant="Ti", layer_scale_init=1e-2)
    vit_params_from_timm(numpy_state_dict(reference), encoder)
    images = random_images(size=224, seed=1)
    with torch.no_grad():  # timm's pooled features: forward_head(pre_logits=True)
        features = reference.forward_head(reference.forward_features(
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()), pre_logits=True).numpy()
    assert_logits_close(nnx.jit(lambda m, x: m(x, train=False))(encoder, images), features)


def test_vit_weights_for_another_resolution_are_resampled_as_timm_does():
    # 224-px weights into a 112-px model (grid 14 -> 7, antialiased bicubic, as timm loads them)
    # and into a 320-px one (14 -> 20): both must match timm built at that size from the same
    # weights with its own resample_abs_pos_embed.
    from timm.layers import resample_abs_pos_embed

    from vision_jax.models.timm_vit import vit_params_from_timm

    weights = numpy_state_dict(timm_vit("vit_tiny_patch16_224", seed=2))
    for size in (112, 320):
        reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size).eval()
        resampled = dict(weights, pos_embed=resample_abs_pos_embed(
            torch.from_numpy(weights["pos_embed"]), new_size=[size // 16] * 2, num_prefix_tokens=1).numpy())
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in resampled.items()})
        model = our_vit(variant="Ti", image_size=size, num_classes=1000)
        vit_params_from_timm(weights, model)
        np.testing.assert_allclose(np.asarray(model.pos_embedding[...]), resampled["pos_embed"], atol=1e-5)
        images = random_images(size=size, seed=3)
        logits = nnx.jit(lambda m, x: m.logits(x, train=False))(model, images)
        assert_logits_close(logits, timm_logits(reference, images))


def test_vit_weights_of_another_variant_are_a_clear_error():
    from vision_jax.errors import CheckpointError
    from vision_jax.models.timm_vit import vit_params_from_timm

    with torch.device("meta"):  # shapes only: the error is raised before any value is read
        weights = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    weights = {k: np.zeros(v.shape, np.float32) for k, v in weights.items()}
    with pytest.raises(CheckpointError, match=r"wrong shape \['patch_embed/kernel.*variant, patch_size"):
        vit_params_from_timm(weights, our_vit(variant="Ti", num_classes=1000))
