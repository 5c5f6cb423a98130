"""`config.init`: a new run's encoder starts from another run's weights or from a published model.

The source (`config.init.source`) is one of:
- a vision_jax workdir: its latest checkpoint, or `config.init.step`;
- one checkpoint of a workdir (`WORKDIR/checkpoints/STEP`);
- a timm `.safetensors` file (models/pretrained.py converts it).

From a workdir or checkpoint, `config.init.network` picks which network is taken: the online
`encoder`, or a follower of the source's method (its EMA teacher: `teacher_encoder` for DINO,
`target_encoder` for BYOL, `momentum_encoder` for MoCo v3). Only that encoder is taken, weights
and BatchNorm statistics; heads (the new method's classifier, projectors) keep their fresh
initialization, and so does the encoder's RNG state. The saved tree is read through orbax's
metadata, so neither the source's config.json nor write access to it is needed.

Parameters are matched by path. A learned ViT position embedding made for another resolution is
resampled to this model's patch grid (bicubic, as timm's `resample_abs_pos_embed` and MAE's
`interpolate_pos_embed` do); any other difference is refused, naming the first parameter that
does not fit. A class-count change needs nothing: classifiers are never taken.

The origin (source, step, method, network) is written to `WORKDIR/init_origin.json` when the run
starts and is part of the results caption.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vision_jax.errors import ConfigError, MissingDataError
from vision_jax.models.pretrained import load_timm_weights
from vision_jax.models.vit import VisionTransformer, resize_posemb
from vision_jax.optim import param_path

ORIGIN_FILE = "init_origin.json"
SOURCE_KINDS = "a vision_jax workdir, one of its checkpoints (WORKDIR/checkpoints/STEP) or a timm .safetensors file"
LATEST = -1  # config.init.step: the source's newest checkpoint


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a run's encoder came from."""

    source: str
    step: int | None  # None for a timm file
    method: str  # the source run's method ('timm' for a published model)
    network: str

    def describe(self) -> str:
        if self.step is None:
            return f"Encoder from timm weights {self.source}"
        return f"Encoder from the {self.network} of {self.method} run {self.source} at step {self.step}"


def write_origin(origin: Origin, workdir: str) -> None:
    with open(os.path.join(workdir, ORIGIN_FILE), "w") as f:
        json.dump(dataclasses.asdict(origin), f, indent=2)


def read_origin(workdir: str) -> Origin | None:
    path = os.path.join(workdir, ORIGIN_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return Origin(**json.load(f))


def load_encoder(init_config, encoder: dict[str, Any], abstract_encoder: nnx.Module,
                 model_name: str) -> tuple[dict[str, Any], Origin]:
    """The encoder's {'params', 'model_state'} (fresh arrays of the new run, with their shardings)
    filled from `init_config.source`, and where they came from."""
    source = os.path.abspath(os.path.expanduser(init_config.source))
    if not os.path.exists(source):
        raise MissingDataError(f"config.init.source={init_config.source!r} does not exist; give {SOURCE_KINDS}.")
    if os.path.isfile(source):
        saved, origin = _read_timm(source, abstract_encoder)
    else:
        saved, origin = _read_checkpoint(source, init_config.step, init_config.network)
    resample = _resamplers(abstract_encoder)
    filled = {part: _fill(encoder[part], saved[part], part, resample, origin, model_name)
              for part in ("params", "model_state")}
    extra = sorted(set(saved["params"]) - set(_flat(encoder["params"])))
    if extra:
        raise ConfigError(f"config.init.source {origin.source} holds an encoder of another architecture: its "
                          f"parameter {extra[0]} has no place in this model ({model_name}). Use --config.model "
                          f"of the source run, or another source.")
    return filled, origin


# --- reading ---------------------------------------------------------------------------------

def _read_timm(path: str, abstract_encoder: nnx.Module) -> tuple[dict, Origin]:
    encoder = nnx.clone(abstract_encoder)
    load_timm_weights(path, encoder)  # fills every weight it has, in place
    _, params, model_state = nnx.split(encoder, nnx.Param, ...)
    saved = {part: {k: v for k, v in _flat(nnx.to_pure_dict(tree)).items() if not isinstance(v, jax.ShapeDtypeStruct)}
             for part, tree in (("params", params), ("model_state", model_state))}
    return saved, Origin(path, None, "timm", "encoder")


def _checkpoint_location(source: str) -> tuple[str, int | None]:
    """(the checkpoints folder, the step the path names or None) for a workdir, its checkpoints
    folder or one checkpoint in it."""
    if os.path.isdir(os.path.join(source, "checkpoints")):
        return os.path.join(source, "checkpoints"), None
    name = os.path.basename(source)
    if name.isdigit() and os.path.isdir(os.path.join(source, "state")):
        return os.path.dirname(source), int(name)
    if os.path.basename(source) == "checkpoints":
        return source, None
    raise MissingDataError(f"config.init.source={source} holds no checkpoint (no {source}/checkpoints folder): "
                           f"train that run first, or give {SOURCE_KINDS}.")


def _read_checkpoint(source: str, step: int, network: str) -> tuple[dict, Origin]:
    directory, named_step = _checkpoint_location(source)
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                                        cleanup_tmp_directories=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "signature": ocp.JsonCheckpointHandler()})
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise MissingDataError(f"config.init.source={source} holds no checkpoint ({directory} is empty): "
                                   f"train that run first, or give {SOURCE_KINDS}.")
        wanted = named_step if named_step is not None else (steps[-1] if step == LATEST else step)
        if wanted not in steps:
            raise MissingDataError(f"config.init.step={wanted}: {directory} has no checkpoint of that step; it has "
                                   f"steps {', '.join(map(str, steps))} (or -1: the latest).")
        signature = manager.restore(wanted, args=ocp.args.Composite(signature=ocp.args.JsonRestore()))["signature"]
        tree = manager.item_metadata(wanted)["state"].tree
        method = signature.get("method") or _method_from_config(os.path.dirname(directory))
        _check_not_a_generator(source, method, signature.get("model", {}), tree)
        saved = _restore_network(manager, wanted, tree, network, source)
    finally:
        manager.close()
    return saved, Origin(source, wanted, method, network)


def _method_from_config(workdir: str) -> str:
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return json.load(f)["method"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"  # the config is optional: the checkpoint alone is enough


def _check_not_a_generator(source: str, method: str, model: dict, tree: dict) -> None:
    networks = set(tree.get("params", {})) | set(tree.get("ema", {}))
    if method == "dcgan" or "generator" in str(model.get("name", "")) or "generator" in networks:
        raise ConfigError(f"config.init.source={source} is a {method if method != 'unknown' else 'GAN'} run: its "
                          f"networks ({', '.join(sorted(networks))}) generate images and hold no image encoder to "
                          f"fine-tune. Start from a supervised or self-supervised run instead.")


def _restore_network(manager, step: int, tree: dict, network: str, source: str) -> dict:
    """{'params': {path: array}, 'model_state': {path: array}} of one network, read alone."""
    group = next((g for g in ("params", "ema") if network in tree.get(g, {})), None)
    if group is None:
        available = sorted(set(tree.get("params", {})) | set(tree.get("ema", {})))
        raise ConfigError(f"config.init.network={network!r}: {source} has no such network; it has "
                          f"{', '.join(available)}. 'encoder' is the online encoder; an EMA teacher is a follower "
                          f"such as teacher_encoder, target_encoder or momentum_encoder.")
    wanted = {group: {network: tree[group][network]}}
    if network in tree.get("model_state", {}):
        wanted["model_state"] = {network: tree["model_state"][network]}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), wanted)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))["state"]
    return {"params": _flat(restored[group][network]),
            "model_state": _flat(restored.get("model_state", {}).get(network, {}))}


# --- matching --------------------------------------------------------------------------------

def _flat(tree: Any) -> dict[str, Any]:
    return {param_path(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _resamplers(abstract_encoder: nnx.Module) -> dict[str, Any]:
    """Parameters whose shape published practice adapts, by path, with the function that adapts them."""
    if isinstance(abstract_encoder, VisionTransformer) and abstract_encoder.pos_embedding is not None:
        grid, prefix = abstract_encoder.grid_size, abstract_encoder.num_prefix_tokens
        return {"pos_embedding": lambda value: resize_posemb(jnp.asarray(value), grid, prefix)}
    return {}


def _fill(fresh: Any, saved: dict[str, Any], part: str, resample: dict, origin: Origin, model_name: str) -> Any:
    def take(path, new):
        name = param_path(path)
        if part == "model_state" and not jnp.issubdtype(new.dtype, jnp.floating):
            return new  # RNG keys and counts belong to the new run
        if name not in saved:
            if part == "model_state":
                return new
            raise ConfigError(f"config.init.source {origin.source} holds an encoder of another architecture: it has "
                              f"no parameter {name} (shape {tuple(new.shape)}) that this model ({model_name}) needs. "
                              f"Use --config.model of the source run, or another source.")
        value = saved[name]
        if tuple(value.shape) != tuple(new.shape) and name in resample:
            value = resample[name](value)
        if tuple(value.shape) != tuple(new.shape):
            raise ConfigError(f"config.init.source {origin.source} holds an encoder of another architecture: "
                              f"parameter {name} has shape {tuple(value.shape)} there but {tuple(new.shape)} in "
                              f"this model ({model_name}). Use --config.model of the source run, or another source.")
        return jax.device_put(jnp.asarray(value, new.dtype), new.sharding)

    return jax.tree_util.tree_map_with_path(take, fresh)
