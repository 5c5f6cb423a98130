"""timm ViT weights into our `VisionTransformer`, for fine-tuning from, or checking against, timm.

`vit_params_from_timm(state_dict, model)` takes a timm `vit_*_patch*_*` state dict as NumPy
arrays (`{k: v.numpy() for k, v in timm_model.state_dict().items()}`, or
`safetensors.numpy.load_file` of a hub `model.safetensors`; no torch needed here) and writes it
into `model` in place. Layouts differ only by transposes: PyTorch's Linear stores [out, in] and
its Conv2d [out, in, kh, kw]; timm fuses q, k and v into one `attn.qkv` Linear whose outputs are
ordered (q|k|v, head, head_dim).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from vision_jax.errors import CheckpointError, ConfigError
from vision_jax.models.vit import VisionTransformer, resize_posemb


def vit_params_from_timm(state_dict: Mapping[str, np.ndarray], model: VisionTransformer) -> None:
    """Copies a timm ViT `state_dict` (name -> NumPy array) into `model`, in place.

    Every parameter is overwritten, so `model` may be abstract (from `nnx.eval_shape`). The model
    must have timm's structure: pool='cls', posemb='learned', the same width, depth and heads, and
    layer_scale_init set when the weights have LayerScale. Any `image_size` works: a position
    embedding made for another grid is resampled bicubically, as timm does. The checkpoint's head
    is loaded when the model has one (num_classes > 0) and ignored when it has none. Raises
    CheckpointError naming the keys that are missing, unexpected or of the wrong shape.
    """
    if model.pool != "cls" or model.pos_embedding is None:
        raise ConfigError("timm ViT weights have a cls token and a learned position embedding; build the "
                          "model with pool='cls', posemb='learned'.")
    if "fc_norm.weight" in state_dict:
        raise CheckpointError("These weights pool with timm's fc_norm (global_pool='avg'), which this ViT does "
                              "not have; use weights with class-token pooling.")
    state = nnx.state(model, nnx.Param)
    targets = traverse_util.flatten_dict(nnx.to_pure_dict(state))  # path -> array or ShapeDtypeStruct
    try:
        converted = _timm_to_ours(state_dict, model)
    except KeyError as key:
        converted, missing_key = {}, [str(key)]
    else:
        missing_key = []
    unexpected = sorted(set(state_dict) - _consumed_keys(state_dict, model))
    unexpected += ["/".join(map(str, p)) for p in converted if p not in targets]  # e.g. LayerScale gammas
    wrong_shape = [f"{'/'.join(map(str, p))}: timm {v.shape}, ours {targets[p].shape}"
                   for p, v in converted.items() if p in targets and v.shape != targets[p].shape]
    missing = missing_key or ["/".join(map(str, p)) for p in targets if p not in converted]
    if unexpected or wrong_shape or missing:
        raise CheckpointError(
            f"These weights do not fit this ViT (width {model.num_features}, depth {len(model.blocks)}, "
            f"num_classes={0 if model.head is None else model.head.kernel.shape[-1]}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]} ({len(missing)}, {len(unexpected)}, "
            f"{len(wrong_shape)} in all). Build the model with the variant, patch_size, num_classes and "
            f"layer_scale_init of the weights.")
    loaded = {p: jnp.asarray(v, targets[p].dtype) for p, v in converted.items()}
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(loaded))
    nnx.update(model, state)


def _timm_to_ours(sd: Mapping[str, np.ndarray], model: VisionTransformer) -> dict[tuple, np.ndarray]:
    width = model.num_features
    heads = model.blocks[0].attn.query.kernel.shape[1]
    head_dim = width // heads
    out = {
        ("patch_embed", "kernel"): np.transpose(sd["patch_embed.proj.weight"], (2, 3, 1, 0)),
        ("patch_embed", "bias"): sd["patch_embed.proj.bias"],
        ("cls_token",): sd["cls_token"],
        ("pos_embedding",): _posemb(sd["pos_embed"], model),
        ("norm", "scale"): sd["norm.weight"],
        ("norm", "bias"): sd["norm.bias"],
    }
    for i in range(len(model.blocks)):
        t, o = f"blocks.{i}.", ("blocks", i)
        if t + "attn.qkv.weight" not in sd:
            continue  # weights of a shallower model: this block's parameters are reported missing
        qkv_w, qkv_b = sd[t + "attn.qkv.weight"], sd[t + "attn.qkv.bias"]
        if qkv_w.shape == (3 * width, width):
            qkv_w = qkv_w.reshape(3, heads, head_dim, width)  # [out = (q|k|v, head, head_dim), in]
            qkv_b = qkv_b.reshape(3, heads, head_dim)
            for j, name in enumerate(("query", "key", "value")):
                out[o + ("attn", name, "kernel")] = np.transpose(qkv_w[j], (2, 0, 1))  # [in, head, head_dim]
                out[o + ("attn", name, "bias")] = qkv_b[j]
        else:  # another width: left as it is for the shape check to report
            out[o + ("attn", "query", "kernel")] = qkv_w
        out[o + ("attn", "out", "kernel")] = _reshaped(sd[t + "attn.proj.weight"].T, (heads, head_dim, width))
        out[o + ("attn", "out", "bias")] = sd[t + "attn.proj.bias"]
        for norm in ("norm1", "norm2"):
            out[o + (norm, "scale")] = sd[t + norm + ".weight"]
            out[o + (norm, "bias")] = sd[t + norm + ".bias"]
        for fc in ("fc1", "fc2"):
            out[o + ("mlp", fc, "kernel")] = sd[t + f"mlp.{fc}.weight"].T
            out[o + ("mlp", fc, "bias")] = sd[t + f"mlp.{fc}.bias"]
        for ls in ("ls1", "ls2"):
            if t + ls + ".gamma" in sd:
                out[o + (ls, "gamma")] = sd[t + ls + ".gamma"]
    if model.head is not None:
        out[("head", "kernel")] = sd["head.weight"].T
        out[("head", "bias")] = sd["head.bias"]
    return out


def _consumed_keys(sd: Mapping[str, np.ndarray], model: VisionTransformer) -> set[str]:
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight",
            "norm.bias", "head.weight", "head.bias"}  # a head is skipped when the model has none
    for i in range(len(model.blocks)):
        keys |= {f"blocks.{i}.{k}" for k in (
            "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm1.weight",
            "norm1.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
            "mlp.fc2.bias", "ls1.gamma", "ls2.gamma")}
    return keys & set(sd)


def _reshaped(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`value` in `shape`, or as it is when the sizes differ (the shape check then reports it)."""
    return value.reshape(shape) if value.size == np.prod(shape) else value


def _posemb(posemb: np.ndarray, model: VisionTransformer) -> np.ndarray:
    grid = model.grid_size
    if posemb.shape[1] == model.num_prefix_tokens + grid[0] * grid[1] or posemb.shape[-1] != model.num_features:
        return posemb  # the right grid, or the wrong width (which the shape check reports)
    return np.asarray(resize_posemb(posemb, grid, model.num_prefix_tokens))
