"""Config files, their arguments and command-line overrides, with errors that say what to fix.

A recipe is a Python file with `get_config(arg: str | None) -> ConfigDict`. It is named on the
command line as `path/to/recipe.py:key=value,key2` (the part after ':' reaches get_config as
`arg`; parse it with `parse_arg`), and single fields are overridden with
`--config.optimizer.lr=0.1`. Every key the trainer reads lives in `default_config()`; a recipe
starts from it, so a misspelt key is an error naming the closest valid keys, never a silently
ignored setting. Sections whose options depend on a chosen name (model, method, data.source,
data.augment, evaluators) are checked against the named factory's signature by the registry.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from vision_jax.errors import ConfigError, MissingDataError
from vision_jax.registry import closest

ConfigDict = ml_collections.ConfigDict

# Sections whose keys are the keyword arguments of a named factory (checked by the registry).
FREE_FORM_SECTIONS = ("model", "method", "data.source", "data.augment", "data.device_augment",
                      "data.eval_augment", "evaluators")


def default_config() -> ConfigDict:
    """Every field the trainer understands, with its default."""
    c = ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # global batch, split over all devices of all processes
    c.log_every = 50
    c.eval_every = 0  # 0: run the evaluators only at the end of training

    c.model = ConfigDict({"name": "cnn"})
    # timm weights (.safetensors) the encoder starts from ('' = random init); models/pretrained.py.
    c.pretrained = ""
    c.method = ConfigDict({"name": "supervised"})

    c.optimizer = ConfigDict()
    c.optimizer.name = "adamw"  # adamw | sgd | lars
    c.optimizer.lr = 1e-3  # peak learning rate, reached after warmup
    c.optimizer.weight_decay = 0.0  # not applied to biases and normalization scales
    c.optimizer.momentum = 0.9  # sgd and lars
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "cosine"  # cosine | constant (after warmup)
    c.optimizer.grad_clip_norm = 0.0  # 0: no clipping

    c.data = ConfigDict()
    c.data.source = ConfigDict({"name": "digits"})
    c.data.train_split = "train[:80%]"
    c.data.eval_train_split = "train[:80%]"  # what kNN and the linear probe fit on
    c.data.eval_test_split = "train[80%:]"  # what they are scored on (held out)
    c.data.image_size = 32
    c.data.augment = ConfigDict({"name": "none"})  # host (tf.data) views, vision_jax/data/views.py
    # Optional jitted augmentation of the sharded batch on the accelerators (name '' = none), for
    # when the host cannot keep up; then `augment` is usually 'none' (decode and scale only).
    c.data.device_augment = ConfigDict({"name": ""})
    c.data.batch_pp = ""  # batch-level host ops after batching, e.g. "mixup(0.2)" (pp.parse_batch)
    c.data.eval_augment = ConfigDict({"name": "none"})  # preprocessing for the evaluators' splits
    c.data.eval_batch_size = 512
    c.data.prefetch = 2

    # name -> options; run every eval_every steps and at the end.
    c.evaluators = ConfigDict()
    # Feature baselines measured in the final evaluation beside the trained model.
    c.eval_baselines = ("random_init", "raw_pixels")

    c.checkpoint = ConfigDict()
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3
    c.checkpoint.use_async = True

    c.mesh = ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by other axes
    c.mesh.model = 1
    # Rule set mapping parameters' logical axis names onto the mesh (parallel.RULE_SETS):
    # replicate | fsdp | tensor_parallel | fsdp_tp.
    c.sharding = "replicate"

    c.precision = ConfigDict()
    # Compute dtype of the model: 'auto' is bfloat16 on GPU/TPU and float32 on CPU (where bf16
    # matmuls are emulated and slower). Normalization statistics, softmax and losses stay float32.
    c.precision.compute = "auto"
    c.precision.params = "float32"  # storage dtype of parameters and optimizer state

    # Convolutions (models/conv.py): 'auto' is 'cpu' on one CPU device (XLA's forward pass and input
    # gradient, a faster kernel gradient) and XLA's convolution elsewhere; 'xla' | 'cpu' force one.
    c.conv_impl = "auto"
    return c


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
    """Parses a recipe argument `key=value,flag` against typed defaults (as big_vision does).

    A bare key sets a boolean to True. Values take the type of their default; an unknown key or
    a value that does not fit the type is an error naming the key.
    """
    result = ConfigDict(defaults)
    if not arg:
        return result
    for item in arg.split(","):
        if not item:
            continue
        key, has_value, raw = item.partition("=")
        if key not in defaults:
            raise ConfigError(
                f"Unknown recipe argument {key!r}.{closest(key, defaults)} "
                f"This recipe accepts: {', '.join(sorted(defaults))}."
            )
        result[key] = _coerce(raw if has_value else "True", defaults[key], f"recipe argument {key!r}")
    return result


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads `path.py[:arg]`, applies `key=value` overrides (dotted keys) and validates."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise MissingDataError(f"Config file {path!r} does not exist (from --config={spec}).")
    module_spec = importlib.util.spec_from_file_location("vision_jax_recipe", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path!r} has no get_config(arg) function.")
    config = module.get_config(arg or None)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"Override {override!r} must look like field.name=value.")
        apply_override(config, key, raw)
    validate(config)
    return config


def apply_override(config: ConfigDict, dotted_key: str, raw: str) -> None:
    """Sets `config.<dotted_key>` from a command-line string, keeping the field's type."""
    *parents, leaf = dotted_key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node:
            raise ConfigError(_unknown_key_message(".".join(parents[: i + 1]), node))
        node = node[part]
        if not isinstance(node, ConfigDict):
            raise ConfigError(f"Config key {'.'.join(parents[: i + 1])!r} is a value, not a section, "
                             f"so it has no field {dotted_key!r}.")
    if leaf not in node:
        raise ConfigError(_unknown_key_message(dotted_key, node))
    node[leaf] = _coerce(raw, node[leaf], f"--config.{dotted_key}")


def validate(config: ConfigDict) -> None:
    """Checks that every key of `config` is known to `default_config()`."""
    _check_keys(config, default_config(), prefix="")


def _check_keys(config: ConfigDict, schema: ConfigDict, prefix: str) -> None:
    for key in config.keys():
        path = prefix + key
        if path in FREE_FORM_SECTIONS:
            continue
        if key not in schema:
            raise ConfigError(_unknown_key_message(path, schema))
        if isinstance(schema[key], ConfigDict):
            _check_keys(config[key], schema[key], path + ".")


def _unknown_key_message(path: str, parent: ConfigDict) -> str:
    leaf = path.split(".")[-1]
    valid = list(parent.keys())
    return (f"Unknown config key {path!r}.{closest(leaf, valid)} "
            f"Valid keys here: {', '.join(sorted(valid))}.")


def _coerce(raw: str, current: Any, what: str) -> Any:
    """Converts a command-line string to the type of the value it replaces."""
    if isinstance(current, str):
        return raw
    if isinstance(current, bool):
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"{what} expects a boolean (true/false), got {raw!r}.")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if current is None:
            return raw
        raise ConfigError(f"{what} expects a {type(current).__name__}, got {raw!r}.") from None
    if current is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if type(value) is not type(current):
        raise ConfigError(f"{what} expects a {type(current).__name__}, got {raw!r}.")
    return value


def to_json(config: ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
