"""pytorch-fid's Inception-v3 (the network of the FID), in Flax NNX, up to its 2048-d pool3 features.

An FID is comparable with published ones only when computed with this network and these weights:
the TensorFlow Inception graph of 2015-12-05 that the original FID code used, as pytorch-fid
ported it (`pt_inception-2015-12-05-6726825d.pth`, its FID_WEIGHTS_URL). It is torchvision's
Inception-v3 with pytorch-fid's patches ("FIDInceptionA/C/E_1/E_2"): the 3x3 average pools inside
the Mixed blocks do not count the zero padding (TensorFlow's pooling), and the last block (Mixed_7c)
max-pools where the others average.

    features = load_fid_inception("fid_inception.npz")    # the converted .pth (convert_fid_inception)
    pool3 = features(images)   # NHWC RGB in [-1, 1], any size -> [N, 2048] float32

As pytorch-fid's `InceptionV3(resize_input=True, normalize_input=False)`, images are first resized
to 299x299 bilinearly with half-pixel centers and no antialiasing (torch's F.interpolate,
align_corners=False). The modules keep torchvision's attribute names (Conv2d_1a_3x3, Mixed_5b,
branch1x1, ...) so that every parameter's path is its name in the .pth. Inference only: BatchNorm
always uses its stored statistics, and the classifier (fc, 1008 classes) is not built.
"""
from __future__ import annotations

import os
import zipfile
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from vision_jax.errors import CheckpointError, DataError, MissingDataError
from vision_jax.models import layers

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
CONVERT_COMMAND = f"python -m vision_jax.convert_fid_inception --pth={PTH_NAME} --out=fid_inception.npz"
INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008  # the TF graph's classifier (1000 ImageNet classes + 8 unused); only used to tell files apart


class BasicConv2d(nnx.Module):
    """torchvision's BasicConv2d: convolution without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0, *, rngs: nnx.Rngs):
        self.conv = layers.conv(cin, cout, kernel, stride, padding=padding, rngs=rngs)
        self.bn = layers.BatchNorm(cout, epsilon=1e-3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x), use_running_average=True))


def _max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(2, 2))


def _avg_pool_3x3_without_padding(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average whose border windows divide by the pixels inside the image
    (F.avg_pool2d(count_include_pad=False), TensorFlow's pooling)."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))  # pads with -inf, as torch


class InceptionA(nnx.Module):
    """Mixed_5b/c/d (35x35): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3_without_padding(x)),
        ], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a: 35x35 -> 17x17."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            _max_pool_3x3_stride_2(x),
        ], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b/c/d/e (17x17): 7x7 convolutions factored into 1x7 and 7x1."""

    def __init__(self, cin: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            branch7x7dbl,
            self.branch_pool(_avg_pool_3x3_without_padding(x)),
        ], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a: 17x17 -> 8x8."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return jnp.concatenate([
            self.branch3x3_2(self.branch3x3_1(x)),
            branch7x7x3,
            _max_pool_3x3_stride_2(x),
        ], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b/c (8x8): 3x3 convolutions split into parallel 1x3 and 3x1. `pool` is how the pooled
    branch pools: pytorch-fid's FIDInceptionE_1 averages (without padding), its E_2 takes the max."""

    def __init__(self, cin: int, pool: Callable[[jax.Array], jax.Array], *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.pool = pool

    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(self.pool(x)),
        ], axis=-1)


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """NHWC images resized to size x size as torch's F.interpolate(mode='bilinear',
    align_corners=False): half-pixel centers and, when shrinking, no antialiasing."""
    n, height, width, channels = images.shape
    if (height, width) == (size, size):
        return images
    return jax.image.resize(images, (n, size, size, channels), method="bilinear", antialias=False)


class FIDInceptionV3(nnx.Module):
    """pytorch-fid's `InceptionV3([3], resize_input=True, normalize_input=False)`: images in
    [-1, 1] -> pool3 features [N, 2048]."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, pool_features=32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, pool_features=64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, pool_features=64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, pool=_avg_pool_3x3_without_padding, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, pool=_max_pool_3x3, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"The FID Inception takes RGB images [N, H, W, 3] in [-1, 1]; got shape "
                            f"{tuple(images.shape)} (repeat a grayscale channel: jnp.repeat(images, 3, axis=-1)).")
        x = resize_bilinear(images.astype(jnp.float32))
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, _max_pool_3x3_stride_2,
                      self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, _max_pool_3x3_stride_2,
                      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d,
                      self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = layer(x)
        return jnp.mean(x, axis=(1, 2))  # pool3: the global average pool


# Our leaf name -> the .pth's: conv kernels are `conv.weight`, BatchNorm's are torch's names.
_TORCH_LEAF = {("conv", "kernel"): "weight", ("bn", "scale"): "weight", ("bn", "bias"): "bias",
               ("bn", "mean"): "running_mean", ("bn", "var"): "running_var"}


def _torch_name_and_shape(path: tuple, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    name = ".".join(map(str, path[:-1])) + "." + _TORCH_LEAF[path[-2:]]
    torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)  # HWIO -> OIHW
    return name, torch_shape


def _first_problem(weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """What first keeps `weights` (the .pth's names and layouts) from being the FID Inception's, or None."""
    for name, shape in expected.items():
        if name not in weights:
            return f"{name} is missing"
        if tuple(weights[name].shape) != shape:
            return f"{name} has shape {tuple(weights[name].shape)}, the FID Inception's is {shape}"
    # The classifier is not used, but it tells the FID weights from other Inception-v3 weights with
    # the same convolutions, such as torchvision's ImageNet ones (1000 classes), whose FIDs differ.
    classifier = {"fc.weight": (NUM_CLASSES, NUM_FEATURES), "fc.bias": (NUM_CLASSES,)}
    for name, shape in classifier.items():
        if name in weights and tuple(weights[name].shape) != shape:
            return (f"{name} has shape {tuple(weights[name].shape)}, the FID Inception's is {shape} "
                    f"(other Inception-v3 weights, e.g. torchvision's, give FIDs that are not comparable)")
    for name in weights:
        if name not in expected and name not in classifier and not name.endswith(".num_batches_tracked"):
            return f"{name} is not a parameter of the FID Inception"
    return None


def fid_inception_params(weights: Mapping[str, np.ndarray], model: FIDInceptionV3,
                         source: str = "the state dict") -> None:
    """Copies pytorch-fid's state dict (the .pth's names, numpy arrays) into `model` in place.

    Every variable is overwritten, so `model` may be abstract (nnx.eval_shape). Raises
    CheckpointError naming the first parameter that is missing, of the wrong shape or unknown.
    """
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    targets = traverse_util.flatten_dict(nnx.to_pure_dict(state))  # path -> array or ShapeDtypeStruct
    # Each layer's tensors in the .pth's order (conv.weight, then bn's), so the first problem named is its first.
    in_pth_order = sorted(targets, key=lambda path: (path[:-2], list(_TORCH_LEAF).index(path[-2:])))
    names = {path: _torch_name_and_shape(path, targets[path].shape) for path in in_pth_order}
    problem = _first_problem(weights, dict(names.values()))
    if problem is not None:
        raise CheckpointError(f"{source} does not hold pytorch-fid's FID Inception weights: {problem}. Download "
                              f"{FID_WEIGHTS_URL} and convert it: {CONVERT_COMMAND}")
    loaded = {}
    for path, (name, _) in names.items():
        value = np.asarray(weights[name])
        loaded[path] = jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value, jnp.float32)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(loaded))
    nnx.update(model, state)


def _read_weights(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise MissingDataError(f"No FID Inception weights at {path!r}. Download pytorch-fid's {FID_WEIGHTS_URL} "
                               f"once and convert it: {CONVERT_COMMAND}")
    if path.endswith((".pth", ".pt")):
        raise CheckpointError(f"{path!r} is a PyTorch file; convert it once (needs torch): "
                              f"python -m vision_jax.convert_fid_inception --pth={path} --out=fid_inception.npz")
    try:
        archive = np.load(path)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path!r} is not a .npz file ({error}); make one with: {CONVERT_COMMAND}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a single array (.npy)
        raise CheckpointError(f"{path!r} holds one array, not the converter's .npz; make one with: {CONVERT_COMMAND}")
    with archive:
        return {name: archive[name] for name in archive.files}


def load_fid_inception(path: str | os.PathLike) -> Callable[[jax.Array], jax.Array]:
    """The FID feature function with pytorch-fid's weights from `path` (the converter's .npz).

    Returns a function: images NHWC in [-1, 1], any size (resized to 299x299 inside) -> pool3
    features [N, 2048] float32. It is jitted (one compilation per input shape; a sharded global
    batch stays sharded) and asks for full float32 precision (jax.default_matmul_precision
    "highest": no TF32 or bf16 passes on GPU/TPU), as the published FIDs were computed. Wrapping it
    in another jax.jit also works, but makes the weights constants of that program.
    """
    path = os.fspath(path)
    weights = _read_weights(path)
    model = nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)))  # the weights overwrite every variable
    fid_inception_params(weights, model, source=path)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))

    def pool3_features(images: jax.Array) -> jax.Array:
        with jax.default_matmul_precision("highest"):
            return forward(state, images)

    return pool3_features
