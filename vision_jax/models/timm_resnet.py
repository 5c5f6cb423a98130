"""Fine-tune from timm's (or torchvision's) pretrained ResNets: their weights in our ResNet.

timm `resnet{18,34,50,101,152,200}` and torchvision `resnet*` share one layout (conv1, bn1,
layer{1-4}.{i}.conv{1,2,3}/bn{1,2,3}/downsample.{0,1}, fc) and are ResNet v1.5 like ours, so the
mapping is one name per tensor plus layout changes: conv weights OIHW -> HWIO, the fc weight
[out, in] -> [in, out], BN weight/bias -> scale/bias and running_mean/var -> the BatchStats.

Typical use (weights from the Hugging Face hub as `model.safetensors`, e.g. timm/resnet50.a1_in1k):

    model = nnx.eval_shape(lambda: MODELS.build("resnet", {"depth": 50}, rngs=nnx.Rngs(0)))
    load_timm_weights("model.safetensors", model)   # models/pretrained.py; the fc is dropped

Building abstractly (`nnx.eval_shape`) skips a random init that the weights overwrite anyway.
Pretrained torchvision/timm ResNets expect the ImageNet stem and ImageNet-normalized inputs.
"""
from __future__ import annotations

import re
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from vision_jax.errors import CheckpointError
from vision_jax.models.resnet import ResNet

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _target_path(key: str, stage_starts: list[int]) -> tuple | None:
    """Our state path for one timm key, or None for keys with no counterpart (BN step counters)."""
    parts = key.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    if parts[0] == "conv1":
        return ("stem_conv", "kernel")
    if parts[0] == "bn1":
        return ("stem_bn", _BN[parts[1]])
    if parts[0] == "fc":
        return ("fc", {"weight": "kernel", "bias": "bias"}[parts[1]])
    match = re.fullmatch(r"layer(\d)", parts[0])
    if not match:
        raise KeyError(key)
    block = ("blocks", stage_starts[int(match.group(1)) - 1] + int(parts[1]))
    layer, leaf = parts[2], parts[-1]
    if layer == "downsample":  # downsample.0 is the 1x1 conv, downsample.1 its BN
        return block + (("shortcut", "conv", "kernel") if parts[3] == "0" else ("shortcut", "bn", _BN[leaf]))
    if layer.startswith("conv"):
        return block + (layer, "kernel")
    return block + (layer, _BN[leaf])


def _to_our_layout(path: tuple, value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if path[-1] == "kernel" and value.ndim == 2:
        return value.T  # Linear [out, in] -> [in, out]
    return value


def resnet_params_from_timm(state_dict: Mapping[str, np.ndarray], model: ResNet) -> None:
    """Copies a timm/torchvision ResNet `state_dict` (name -> numpy array) into `model`, in place.

    Every parameter and BN statistic of `model` is overwritten, so `model` may be abstract
    (from `nnx.eval_shape`). The model must have the same depth and width as the weights and the
    ImageNet stem. If `model` has no classifier (num_classes=0, the encoder), the weights' `fc` is
    ignored; if it has one, `fc` must be there and have num_classes outputs. Raises
    CheckpointError naming the first keys that are missing, unexpected or of the wrong shape.
    """
    stage_starts = list(np.cumsum((0,) + tuple(model.stage_sizes))[:-1])
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    targets = traverse_util.flatten_dict(nnx.to_pure_dict(state))  # path -> array or ShapeDtypeStruct
    loaded, unexpected, wrong_shape = {}, [], []
    for key, value in state_dict.items():
        try:
            path = _target_path(key, stage_starts)
        except (KeyError, IndexError, ValueError):
            unexpected.append(key)
            continue
        if path is None or (path[0] == "fc" and model.fc is None):
            continue
        if path not in targets:
            unexpected.append(key)
            continue
        value = _to_our_layout(path, np.asarray(value))
        if value.shape != targets[path].shape:
            wrong_shape.append(f"{key} {value.shape} (ours {'/'.join(map(str, path))} {targets[path].shape})")
            continue
        loaded[path] = jnp.asarray(value, targets[path].dtype)
    missing = ["/".join(map(str, p)) for p in targets if p not in loaded]
    if unexpected or wrong_shape or missing:
        hint = ("" if model.imagenet_stem else " This model has the CIFAR stem; pretrained ResNets "
                "need stem='imagenet'.")
        raise CheckpointError(
            f"These weights do not fit this ResNet (blocks per stage {model.stage_sizes}, "
            f"{model.num_features} features, num_classes={model.num_classes}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]} ({len(missing)}, "
            f"{len(unexpected)}, {len(wrong_shape)} in all). Build the model with the depth, "
            f"width_multiplier and num_classes of the weights.{hint}")
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(loaded))
    nnx.update(model, state)
