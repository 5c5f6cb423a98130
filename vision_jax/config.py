"""Config files, their arguments and command-line overrides, with errors that say what to fix.

A recipe is a Python file with `get_config(arg: str | None) -> ConfigDict`. It is named on the
command line as `path/to/recipe.py:key=value,key2` (the part after ':' reaches get_config as
`arg`; parse it with `parse_arg`), and single fields are overridden with
`--config.optimizer.lr=0.1`. Every key the trainer reads lives in `default_config()`; a recipe
starts from it, so a misspelt key is an error naming the closest valid keys, never a silently
ignored setting. Sections whose options depend on a chosen name (model, method, data.source,
data.augment, evaluators) take any option of the named factory: one the recipe did not set can be
added on the command line (`--config.model.depth=18`), and is checked against the factory's
signature; after `--config.model.name=...`, recipe options the new factory does not take are
dropped with a note. Values are checked at load (`validate`), before any compute is spent.
A run's saved `config.json` loads like a recipe: `--config=WORKDIR/config.json`.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import signal
import sys
import traceback
from typing import Any, Sequence

import ml_collections

from vision_jax.errors import ConfigError, MissingDataError
from vision_jax.registry import closest

ConfigDict = ml_collections.ConfigDict

# Sections whose keys are the keyword arguments of a named factory (checked by the registry).
FREE_FORM_SECTIONS = ("model", "method", "data.source", "data.augment", "data.device_augment",
                      "data.eval_augment", "evaluators", "optimizer.groups")
# Where the factories each free-form section names are registered (imported on first use: the
# registries pull in flax and TensorFlow). `evaluators.<name>` sections use EVALUATORS; an option
# the recipe did not set can be added in these sections (and evaluators.<name>) only.
_SECTION_REGISTRIES = {
    "model": ("vision_jax.models", "MODELS"), "method": ("vision_jax.methods", "METHODS"),
    "data.source": ("vision_jax.data.sources", "SOURCES"), "data.augment": ("vision_jax.data.views", "AUGMENTATIONS"),
    "data.eval_augment": ("vision_jax.data.views", "AUGMENTATIONS"),
    "data.device_augment": ("vision_jax.data.device_augment", "DEVICE_AUGMENTATIONS"),
    "evaluators": ("vision_jax.evaluators", "EVALUATORS"),
}


def default_config() -> ConfigDict:
    """Every field the trainer understands, with its default."""
    c = ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # global batch, split over all devices of all processes
    # Microbatches per step, their gradients summed before one update (methods/gradient_step.py).
    c.grad_accum_steps = 1
    c.log_every = 50
    c.eval_every = 0  # 0: run the evaluators only at the end of training
    # The method's pictures (`Method.pictures`: a GAN's sample grid, MAE's reconstructions of the
    # first `num_pictures` held-out images) as PNGs in WORKDIR/pictures and TensorBoard images, at
    # each evaluation, every `pictures_every` steps (0: no more often) and at the end.
    c.pictures_every = 0
    c.num_pictures = 8  # 0: no pictures

    c.model = ConfigDict({"name": "cnn"})
    # Where the encoder starts (vision_jax/init_from.py): source '' = random init; a vision_jax
    # workdir (its checkpoint of `step`, -1 = the latest), one checkpoint (WORKDIR/checkpoints/STEP),
    # or a timm .safetensors file. `network`: the source's online 'encoder' or a follower (EMA
    # teacher), e.g. 'teacher_encoder'. Heads always start fresh.
    c.init = ConfigDict({"source": "", "step": -1, "network": "encoder"})
    c.pretrained = ""  # the former name of init.source (timm files only), kept as an alias
    c.method = ConfigDict({"name": "supervised"})

    c.optimizer = ConfigDict()
    c.optimizer.name = "adamw"  # adamw | sgd | lars
    c.optimizer.lr = 1e-3  # peak learning rate, reached after warmup
    c.optimizer.weight_decay = 0.0  # not applied to biases and normalization scales
    c.optimizer.momentum = 0.9  # sgd and lars
    c.optimizer.betas = (0.9, 0.999)  # adamw: Adam's (b1, b2) moment decays; MAE uses (0.9, 0.95)
    c.optimizer.nesterov = False  # sgd: Nesterov momentum
    # Layer-wise lr decay (vision_jax/layer_decay.py): encoder layer i of L learns at decay^(L - i)
    # of the rate, heads at the full rate. 1.0: off; MAE fine-tunes ViT-B with 0.65, BEiT 0.75.
    c.optimizer.layer_decay = 1.0
    c.optimizer.trust_coefficient = 0.001  # lars: eta in eta * ||w|| / ||g + wd * w||
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "cosine"  # cosine | constant (after warmup)
    c.optimizer.end_lr = 0.0  # cosine schedule: the learning rate it decays to at the last step
    # None: constant weight decay; a value: a cosine from weight_decay to it over the run (DINO).
    c.optimizer.weight_decay_end = None
    c.optimizer.grad_clip_norm = 0.0  # 0: no clipping
    # 'global': one norm over all gradients; 'per_parameter': each parameter's gradient on its own (DINO).
    c.optimizer.grad_clip_mode = "global"
    # Parameter groups (optim.py): name -> dict(pattern=regex over paths like 'encoder/convs/0/kernel',
    # lr_scale=1.0, wd_scale=1.0, frozen=False, frozen_steps=0). The first matching group wins.
    c.optimizer.groups = ConfigDict()

    # A linear classifier on stop-gradient features, trained in the same step with its own learning
    # rate and no weight decay; its held-out accuracy is a row of the results table ("online probe").
    c.online_probe = ConfigDict({"enabled": False, "lr": 0.1})

    c.data = ConfigDict()
    c.data.source = ConfigDict({"name": "digits"})
    c.data.train_split = "train[:80%]"
    c.data.eval_train_split = "train[:80%]"  # what kNN and the linear probe fit on
    c.data.eval_test_split = "train[80%:]"  # what they are scored on (held out)
    # Low-label training (SimCLR's 1% / 10%): a class-balanced subset of this fraction of the train
    # and eval_train splits, drawn with label_seed (the same subset whatever config.seed); 1.0: all.
    c.data.label_fraction = 1.0
    c.data.label_seed = 0
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

    # SIGTERM and SIGINT always stop a run cleanly (finish the step, save, exit with code 75, see
    # vision_jax/preemption.py); this signal does too (SLURM: sbatch --signal=USR1@90). '' = none.
    c.preemption_signal = "SIGUSR1"
    # Resuming a checkpoint with a config that differs from the saved config.json (beyond
    # total_steps, logging/eval/checkpoint intervals and layout) is refused unless this is True.
    c.allow_config_change = False

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

    # Convolutions (models/conv.py): 'auto' is XLA's convolution, except on one CPU device for the
    # layers whose kernel gradient is faster as a matmul (transposed convolutions, non-overlapping
    # strided windows); 'xla' | 'cpu' force one for every layer.
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
    """Loads `path.py[:arg]` (or a saved `config.json`), applies `key=value` overrides (dotted
    keys) and validates."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise MissingDataError(f"Config file {path!r} does not exist (from --config={spec}).")
    if path.endswith(".json"):
        if arg:
            raise ConfigError(f"A saved config ({path}) takes no recipe arguments; drop ':{arg}'.")
        config = _config_from_json(path)
    else:
        config = _config_from_recipe(path, arg or None)
    set_on_command_line: dict[str, set[str]] = {}  # free-form section -> keys the overrides set
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"Override {override!r} must look like field.name=value.")
        section = apply_override(config, key, raw)
        if section:
            set_on_command_line.setdefault(section, set()).add(key.rsplit(".", 1)[1])
    for section, keys in set_on_command_line.items():
        _fit_options_to_factory(config, section, keys)
    _apply_aliases(config)
    validate(config)
    return config


def _apply_aliases(config: ConfigDict) -> None:
    """Former names of fields, moved onto today's."""
    if config.pretrained:
        if config.init.source and config.init.source != config.pretrained:
            raise ConfigError(f"config.pretrained={config.pretrained!r} and config.init.source="
                              f"{config.init.source!r} both name a source; keep only --config.init.source.")
        config.init.source, config.pretrained = config.pretrained, ""


def _config_from_recipe(path: str, arg: str | None) -> ConfigDict:
    """Runs a recipe's get_config(arg); a mistake in the file is reported as file, line and error."""
    recipe_dir = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, recipe_dir)  # recipes import their shared pieces (configs/common.py)
    try:
        module_spec = importlib.util.spec_from_file_location("vision_jax_recipe", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"Config file {path!r} has no get_config(arg) function.")
        return module.get_config(arg)
    except SyntaxError as error:
        raise ConfigError(f"Config file {error.filename}, line {error.lineno}: {error.msg}: "
                          f"{(error.text or '').strip()}") from None
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - any other failure is a bug in the recipe file
        in_recipe = [f for f in traceback.extract_tb(error.__traceback__)
                     if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f", line {in_recipe[-1].lineno}" if in_recipe else ""
        raise ConfigError(f"Config file {path}{where}: {type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(recipe_dir)


def _config_from_json(path: str) -> ConfigDict:
    """The config a run saved (config.json), on top of today's defaults."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except json.JSONDecodeError as error:
        raise ConfigError(f"Config file {path}, line {error.lineno}: {error.msg}.") from None
    config = default_config()
    _fill_from_json(config, saved, prefix="")
    return config


def _fill_from_json(node: ConfigDict, saved: dict, prefix: str) -> None:
    for key, value in saved.items():
        if isinstance(value, dict) and key in node and isinstance(node[key], ConfigDict) \
                and prefix + key not in FREE_FORM_SECTIONS:
            _fill_from_json(node[key], value, prefix + key + ".")
        else:  # JSON has no tuples; every sequence in a config is one
            node[key] = _lists_to_tuples(value)


def _lists_to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    return value


def apply_override(config: ConfigDict, dotted_key: str, raw: str) -> str | None:
    """Sets `config.<dotted_key>` from a command-line string, keeping the field's type.

    In a free-form section a key the recipe did not set is added (its factory's signature is
    checked by `load_config`). Returns that section's dotted path, or None for a fixed field.
    """
    *parents, leaf = dotted_key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node:
            raise ConfigError(_unknown_key_message(".".join(parents[: i + 1]), node))
        node = node[part]
        if not isinstance(node, ConfigDict):
            raise ConfigError(f"Config key {'.'.join(parents[: i + 1])!r} is a value, not a section, "
                             f"so it has no field {dotted_key!r}.")
    section = ".".join(parents)
    # 'evaluators' itself holds evaluator names; each evaluators.<name> holds that one's options.
    free_form = (section in _SECTION_REGISTRIES and section != "evaluators") or (
        len(parents) == 2 and parents[0] == "evaluators")
    if leaf not in node and not free_form:
        raise ConfigError(_unknown_key_message(dotted_key, node))
    node[leaf] = _coerce(raw, node.get(leaf), f"--config.{dotted_key}")
    return section if free_form else None


def _fit_options_to_factory(config: ConfigDict, section: str, set_keys: set[str]) -> None:
    """Checks the options the command line set in `section` against the named factory's signature;
    after a name change, drops the recipe's options that the new factory does not take."""
    node = config
    for part in section.split("."):
        node = node[part]
    if section.startswith("evaluators."):
        module, attribute = _SECTION_REGISTRIES["evaluators"]
        name, options = section.split(".", 1)[1], set(node.keys())
    else:
        module, attribute = _SECTION_REGISTRIES[section]
        name, options = node.get("name"), set(node.keys()) - {"name"}
    if not name:  # e.g. data.device_augment.name='' (none)
        return
    registry = getattr(importlib.import_module(module), attribute)
    accepted = registry.option_names(name)  # an unknown name is an error here, naming the closest
    if accepted is None:
        return
    if "name" in set_keys:
        dropped = sorted(k for k in options - set_keys if k not in accepted)
        for key in dropped:
            del node[key]
        if dropped:
            print(f"note: {section}.name={name!r}: dropped the recipe's {section} option(s) "
                  f"{', '.join(dropped)}, which {registry.kind} {name!r} does not take.", file=sys.stderr)
    for key in sorted(set_keys - {"name"}):
        if key not in accepted:
            raise ConfigError(f"--config.{section}.{key}: {registry.kind} {name!r} has no option {key!r}."
                              f"{closest(key, accepted)} Its options are: {', '.join(accepted) or '(none)'}.")


def validate(config: ConfigDict) -> None:
    """Checks that every key of `config` is known to `default_config()` and every value makes sense."""
    _check_keys(config, default_config(), prefix="")
    _check_values(config)


# Fields that count something; for those in _ZERO_MEANS, 0 turns the feature off.
_AT_LEAST_ONE = ("total_steps", "batch_size", "checkpoint.keep", "data.eval_batch_size", "mesh.model")
_ZERO_MEANS = {
    "log_every": "log only the last step", "eval_every": "evaluate only at the end",
    "pictures_every": "pictures at evaluations and the end only",
    "checkpoint.every_steps": "save only at the end and when stopped by a signal",
    "data.prefetch": "no prefetching", "data.image_size": "keep each image's own size",
    "optimizer.warmup_steps": "no warmup", "optimizer.grad_clip_norm": "no clipping",
    "optimizer.weight_decay": "no decay", "optimizer.lr": "no updates", "num_pictures": "no pictures",
}


def _check_values(config: ConfigDict) -> None:
    def get(dotted: str):
        node = config
        for part in dotted.split("."):
            node = node[part]
        return node

    for key in _AT_LEAST_ONE:
        if get(key) < 1:
            raise ConfigError(f"config.{key}={get(key)} must be at least 1.")
    for key, zero in _ZERO_MEANS.items():
        if not get(key) >= 0:  # also catches NaN
            raise ConfigError(f"config.{key}={get(key)} must be >= 0 (0: {zero}).")
    if config.mesh.data != -1 and config.mesh.data < 1:
        raise ConfigError(f"config.mesh.data={config.mesh.data} must be at least 1, or -1 for all devices "
                          f"not used by the model axis.")
    if not 0 < config.data.label_fraction <= 1:
        raise ConfigError(f"config.data.label_fraction={config.data.label_fraction} must be in (0, 1]; e.g. 0.1 "
                          f"trains on 10% of the labels, 1.0 on all.")
    if not 0 < config.optimizer.layer_decay <= 1:
        raise ConfigError(f"config.optimizer.layer_decay={config.optimizer.layer_decay} must be in (0, 1]: 1.0 is "
                          f"off; MAE fine-tunes with e.g. --config.optimizer.layer_decay=0.65.")
    if config.init.step < -1:
        raise ConfigError(f"config.init.step={config.init.step} must be a checkpoint's step, or -1 for the latest.")
    name = config.preemption_signal
    if name and not (name.startswith("SIG") and isinstance(getattr(signal, name, None), signal.Signals)):
        raise ConfigError(f"config.preemption_signal={name!r} is not a signal name; use e.g. "
                          f"--config.preemption_signal=SIGUSR1, or '' for none.")


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
    if current is None and raw.lower() in ("true", "false"):  # a new option: booleans as typed elsewhere
        return raw.lower() == "true"
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
