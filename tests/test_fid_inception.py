"""The FID Inception (models/inception.py) is pytorch-fid's network: its parameters, its weights'
mapping and errors, its input resize, and (where torch and pytorch-fid are installed) its features.

The comparison with pytorch-fid needs torch, torchvision and pytorch-fid, which CI and the project's
venv do not have: it runs them with the python named by VISION_JAX_TORCH_PYTHON and skips when that
is unset, e.g.
`VISION_JAX_TORCH_PYTHON=/path/to/torchenv/bin/python python -m pytest tests/test_fid_inception.py`
(in that environment: pip install torch torchvision pytorch-fid).
"""
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from vision_jax.errors import CheckpointError, DataError, MissingDataError
from vision_jax.models.inception import (FIDInceptionV3, fid_inception_params, load_fid_inception,
                                         resize_bilinear)

REPO = Path(__file__).resolve().parents[1]

# torchvision's Inception-v3 (models/inception.py), written out from its source: block -> convolution
# -> (in, out, kernel height, kernel width). pytorch-fid's FID blocks subclass these and change only
# how they pool, so the FID network up to pool3 has exactly these convolutions, each followed by a
# BatchNorm of `out` channels.


def _inception_a(cin, pool_features):
    return {"branch1x1": (cin, 64, 1, 1), "branch5x5_1": (cin, 48, 1, 1), "branch5x5_2": (48, 64, 5, 5),
            "branch3x3dbl_1": (cin, 64, 1, 1), "branch3x3dbl_2": (64, 96, 3, 3), "branch3x3dbl_3": (96, 96, 3, 3),
            "branch_pool": (cin, pool_features, 1, 1)}


def _inception_c(cin, c7):
    return {"branch1x1": (cin, 192, 1, 1), "branch7x7_1": (cin, c7, 1, 1), "branch7x7_2": (c7, c7, 1, 7),
            "branch7x7_3": (c7, 192, 7, 1), "branch7x7dbl_1": (cin, c7, 1, 1), "branch7x7dbl_2": (c7, c7, 7, 1),
            "branch7x7dbl_3": (c7, c7, 1, 7), "branch7x7dbl_4": (c7, c7, 7, 1), "branch7x7dbl_5": (c7, 192, 1, 7),
            "branch_pool": (cin, 192, 1, 1)}


def _inception_e(cin):
    return {"branch1x1": (cin, 320, 1, 1), "branch3x3_1": (cin, 384, 1, 1), "branch3x3_2a": (384, 384, 1, 3),
            "branch3x3_2b": (384, 384, 3, 1), "branch3x3dbl_1": (cin, 448, 1, 1), "branch3x3dbl_2": (448, 384, 3, 3),
            "branch3x3dbl_3a": (384, 384, 1, 3), "branch3x3dbl_3b": (384, 384, 3, 1), "branch_pool": (cin, 192, 1, 1)}


TORCHVISION_CONVS = {
    "Conv2d_1a_3x3": (3, 32, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3), "Conv2d_2b_3x3": (32, 64, 3, 3),
    "Conv2d_3b_1x1": (64, 80, 1, 1), "Conv2d_4a_3x3": (80, 192, 3, 3),
    **{f"Mixed_5b.{k}": v for k, v in _inception_a(192, 32).items()},
    **{f"Mixed_5c.{k}": v for k, v in _inception_a(256, 64).items()},
    **{f"Mixed_5d.{k}": v for k, v in _inception_a(288, 64).items()},
    **{f"Mixed_6a.{k}": v for k, v in {"branch3x3": (288, 384, 3, 3), "branch3x3dbl_1": (288, 64, 1, 1),
                                       "branch3x3dbl_2": (64, 96, 3, 3), "branch3x3dbl_3": (96, 96, 3, 3)}.items()},
    **{f"Mixed_6b.{k}": v for k, v in _inception_c(768, 128).items()},
    **{f"Mixed_6c.{k}": v for k, v in _inception_c(768, 160).items()},
    **{f"Mixed_6d.{k}": v for k, v in _inception_c(768, 160).items()},
    **{f"Mixed_6e.{k}": v for k, v in _inception_c(768, 192).items()},
    **{f"Mixed_7a.{k}": v for k, v in {"branch3x3_1": (768, 192, 1, 1), "branch3x3_2": (192, 320, 3, 3),
                                       "branch7x7x3_1": (768, 192, 1, 1), "branch7x7x3_2": (192, 192, 1, 7),
                                       "branch7x7x3_3": (192, 192, 7, 1), "branch7x7x3_4": (192, 192, 3, 3)}.items()},
    **{f"Mixed_7b.{k}": v for k, v in _inception_e(1280).items()},
    **{f"Mixed_7c.{k}": v for k, v in _inception_e(2048).items()},
}


def _pth_shapes(num_classes: int = 1008) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the published .pth's tensors (as torch's state_dict names them)."""
    shapes = {}
    for name, (cin, cout, kh, kw) in TORCHVISION_CONVS.items():
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{leaf}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    return shapes | {"fc.weight": (num_classes, 2048), "fc.bias": (num_classes,)}


def _zeros_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def abstract_model() -> FIDInceptionV3:
    return nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)))


def test_parameters_are_torchvisions_convolutions_with_the_published_count(abstract_model):
    ours = {"/".join(path): tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(
        nnx.to_pure_dict(nnx.state(abstract_model, nnx.Any(nnx.Param, nnx.BatchStat)))).items()}
    expected = {}
    for name, (cin, cout, kh, kw) in TORCHVISION_CONVS.items():
        prefix = name.replace(".", "/")
        expected[f"{prefix}/conv/kernel"] = (kh, kw, cin, cout)  # HWIO
        expected |= {f"{prefix}/bn/{leaf}": (cout,) for leaf in ("scale", "bias", "mean", "var")}
    assert ours == expected

    def count(collection) -> int:
        return sum(int(np.prod(x.shape)) for x in nnx.to_flat_state(nnx.state(abstract_model, collection)).leaves)

    # torchvision documents 27,161,264 parameters for inception_v3 (Inception_V3_Weights.IMAGENET1K_V1);
    # pool3 has all but its aux classifier (1x1 conv 768->128 + BN, 5x5 conv 128->768 + BN, linear
    # 768->1000) and its final linear 2048->1000.
    aux_classifier = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    assert count(nnx.Param) == 27_161_264 - aux_classifier - (2048 * 1000 + 1000) == 21_785_568
    # Keras's InceptionV3(include_top=False) reports 34,432 non-trainable parameters: the same
    # BatchNorms' moving means and variances.
    assert count(nnx.BatchStat) == 34_432


def test_pth_names_and_layouts_map_onto_the_network(abstract_model):
    weights = dict(_zeros_state_dict(_pth_shapes()))  # with the classifier and BN step counters, as published
    first_conv = np.arange(32 * 3 * 3 * 3, dtype=np.float32).reshape(32, 3, 3, 3)
    weights["Conv2d_1a_3x3.conv.weight"] = first_conv
    weights["Mixed_7c.branch_pool.bn.running_var"] = np.linspace(1, 2, 192, dtype=np.float32)
    weights["Mixed_6a.branch3x3.bn.weight"] = np.linspace(-1, 1, 384, dtype=np.float32)
    model = abstract_model  # filled in place; the other tests read only its shapes or fail before reading it
    fid_inception_params(weights, model)
    np.testing.assert_array_equal(model.Conv2d_1a_3x3.conv.kernel[...], first_conv.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.Mixed_7c.branch_pool.bn.var[...],
                                  weights["Mixed_7c.branch_pool.bn.running_var"])
    np.testing.assert_array_equal(model.Mixed_6a.branch3x3.bn.scale[...], weights["Mixed_6a.branch3x3.bn.weight"])


def _mixed_6b_as_wide_as_6c(weights: dict) -> None:  # channels_7x7 160 instead of 128
    for name, shape in _pth_shapes().items():
        if name.startswith("Mixed_6c."):
            weights[name.replace("Mixed_6c.", "Mixed_6b.")] = np.zeros(shape, np.float32)


def _torchvision_imagenet_layout(weights: dict) -> None:  # the same convolutions, 1000 classes, an aux classifier
    weights |= {"fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros(1000, np.float32),
                "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}


@pytest.mark.parametrize("change,message", [
    (lambda w: w.pop("Mixed_7c.branch_pool.bn.running_var"), r"Mixed_7c\.branch_pool\.bn\.running_var is missing"),
    (_mixed_6b_as_wide_as_6c,
     r"Mixed_6b\.branch7x7_1\.conv\.weight has shape \(160, 768, 1, 1\), the FID Inception's is \(128, 768, 1, 1\)"),
    (_torchvision_imagenet_layout,
     r"fc\.weight has shape \(1000, 2048\), the FID Inception's is \(1008, 2048\) \(other Inception-v3 weights"),
    (lambda w: w.update({"AuxLogits.fc.weight": np.zeros((1008, 768))}), r"AuxLogits\.fc\.weight is not a parameter"),
])
def test_weights_of_another_network_name_the_first_mismatch(abstract_model, change, message):
    weights = dict(_zeros_state_dict(_pth_shapes()))
    change(weights)
    with pytest.raises(CheckpointError, match=message) as error:
        fid_inception_params(weights, abstract_model, source="w.npz")
    assert "\n" not in str(error.value)
    assert "Download https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in str(error.value)


def test_weight_files_that_cannot_be_used_are_one_line_errors(tmp_path):
    convert = "python -m vision_jax.convert_fid_inception --pth=pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(MissingDataError, match=r"No FID Inception weights at .*Download pytorch-fid's "
                       r"https://github\.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                       r"pt_inception-2015-12-05-6726825d\.pth once and convert it: " + convert):
        load_fid_inception(tmp_path / "fid_inception.npz")
    (tmp_path / "weights.pth").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"is a PyTorch file; convert it once \(needs torch\): python -m "
                       r"vision_jax\.convert_fid_inception --pth=.*weights\.pth --out=fid_inception\.npz"):
        load_fid_inception(tmp_path / "weights.pth")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(CheckpointError, match=r"is not a \.npz file"):
        load_fid_inception(tmp_path / "text.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match=r"array\.npy' holds one array, not the converter's \.npz"):
        load_fid_inception(tmp_path / "array.npy")
    np.savez(tmp_path / "resnet.npz", **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    with pytest.raises(CheckpointError, match=r"resnet\.npz does not hold pytorch-fid's FID Inception weights: "
                       r"Conv2d_1a_3x3\.conv\.weight is missing\. Download .* and convert it: " + convert) as error:
        load_fid_inception(tmp_path / "resnet.npz")
    assert "\n" not in str(error.value)


def test_images_that_are_not_rgb_are_an_error(abstract_model):
    with pytest.raises(DataError, match=r"RGB images \[N, H, W, 3\].*got shape \(2, 32, 32, 1\).*jnp\.repeat"):
        abstract_model(jnp.zeros((2, 32, 32, 1)))


def _torch_bilinear_reference(images: np.ndarray, size: int) -> np.ndarray:
    """F.interpolate(mode='bilinear', align_corners=False) written out (ATen's upsample_bilinear2d):
    output pixel i samples the input at (i + 0.5) * in / out - 0.5, clamped below at 0, between
    its two neighbours; no antialiasing when shrinking. The position is computed in float32, as
    ATen does (in float64 it moves by up to 5e-5 of a pixel)."""
    def along(x: np.ndarray, axis: int) -> np.ndarray:
        n_in = x.shape[axis]
        scale, half = np.float32(n_in / size), np.float32(0.5)
        source = np.maximum((np.arange(size, dtype=np.float32) + half) * scale - half, np.float32(0)).astype(np.float64)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        weight = (source - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        return np.take(x, low, axis) * (1 - weight) + np.take(x, high, axis) * weight
    return along(along(images.astype(np.float64), 1), 2)


@pytest.mark.parametrize("height,width", [(24, 40), (400, 350)])
def test_resize_is_torchs_bilinear_without_antialiasing(height, width):
    images = np.random.default_rng(0).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
    np.testing.assert_allclose(resize_bilinear(images), _torch_bilinear_reference(images, 299), atol=1e-5)


# pytorch-fid itself --------------------------------------------------------------------------------


def _torch_python() -> str:
    python = os.environ.get("VISION_JAX_TORCH_PYTHON")
    if not python:
        pytest.skip("VISION_JAX_TORCH_PYTHON is unset (a python with torch, torchvision and pytorch-fid, "
                    "needed only to compare with pytorch-fid)")
    probe = subprocess.run([python, "-c", "import torch, torchvision, pytorch_fid.inception"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"VISION_JAX_TORCH_PYTHON={python} cannot import torch, torchvision and pytorch_fid: "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
    return python


def test_features_are_pytorch_fids(tmp_path):
    """pytorch-fid's InceptionV3([3]) with random weights, its state dict converted by our converter
    (run with torch, as a user runs it), gives the same pool3 features as load_fid_inception: images
    of 32 px (resized inside) and of 299 px (not resized). Their largest difference must stay under
    1e-4 of the largest feature, the issue's bound. That is near float32's own noise on this random
    network: pytorch-fid's float32 features differed from its float64 ones by 7e-5 and 5e-5 of the
    largest (32 px, 299 px), ours from its float32 ones by 6e-5 and 7e-5. Mistakes are far larger:
    pytorch-fid itself with PyTorch's default BatchNorm epsilon (1e-5) moved them by 0.8 and 1.9,
    with torchvision's average pools (counting the padding) by 0.5 and 0.7."""
    python = _torch_python()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([python, str(REPO / "tests/tools/pytorch_fid_reference.py"), str(tmp_path)], check=True,
                   env=env, timeout=600)
    converted = subprocess.run([python, "-m", "vision_jax.convert_fid_inception", f"--pth={tmp_path}/weights.pth",
                                f"--out={tmp_path}/fid_inception.npz"], check=True, env=env, capture_output=True,
                               text=True, timeout=300)
    assert "Wrote" in converted.stdout
    reference = np.load(tmp_path / "reference.npz")
    features = load_fid_inception(tmp_path / "fid_inception.npz")
    for name in ("small", "full"):
        ours, theirs = np.asarray(features(reference[name])), reference[f"features_{name}"]
        assert ours.shape == theirs.shape == (len(reference[name]), 2048) and ours.dtype == np.float32
        scale = np.abs(theirs).max()
        assert scale > 0.1  # features of order 1, not a network whose activations died
        error = np.abs(ours - theirs).max() / scale
        assert error < 1e-4, f"{name}: max |difference| is {error:.2e} of the largest feature"
    for name in ("large", "oblong"):  # shrinking (antialiasing would differ) and a non-square image
        np.testing.assert_allclose(resize_bilinear(reference[name]), reference[f"resized_{name}"], atol=1e-5)

    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    broken = subprocess.run([python, "-m", "vision_jax.convert_fid_inception", f"--pth={tmp_path}/broken.pth",
                             f"--out={tmp_path}/broken.npz"], env=env, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1 and not (tmp_path / "broken.npz").exists()
    assert broken.stderr.strip().splitlines() == [
        f"error: '{tmp_path}/broken.pth' is not a state dict that torch.load can read safely (UnpicklingError); "
        f"download pytorch-fid's weights again: https://github.com/mseitzer/pytorch-fid/releases/download/"
        f"fid_weights/pt_inception-2015-12-05-6726825d.pth"]


def test_converter_without_torch_says_how_to_install_it(tmp_path, monkeypatch):
    from vision_jax import convert_fid_inception

    with pytest.raises(SystemExit, match=r"no file at .*missing\.pth.*pytorch-fid/releases/download/fid_weights/"):
        convert_fid_inception.main([f"--pth={tmp_path}/missing.pth", f"--out={tmp_path}/out.npz"])
    (tmp_path / "weights.pth").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(SystemExit, match=r"needs PyTorch once: pip install torch --index-url "
                       r"https://download\.pytorch\.org/whl/cpu"):
        convert_fid_inception.main([f"--pth={tmp_path}/weights.pth", f"--out={tmp_path}/out.npz"])
    assert not (tmp_path / "out.npz").exists()
