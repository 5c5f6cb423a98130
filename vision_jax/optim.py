"""The optimizer from `config.optimizer`, with parameter groups.

A parameter group selects parameters by a regex over their path ('encoder/convs/0/kernel',
searched with `re.search`) and gives them their own learning-rate scale and weight-decay scale,
or freezes them, for the whole run or for its first `frozen_steps` steps. Each parameter belongs
to the first group whose pattern matches it (config groups first, then the method's own, such as
DINO's last layer or the online probe); the rest form the default group. Within every group,
weight decay and LARS's trust ratio apply to kernels only (ndim > 1), never to biases and
normalization scales (the usual exclusion; DINO's `get_params_groups`, solo-learn's
`exclude_bias_n_norm`).

A group frozen for its first N steps behaves as PyTorch does for a parameter whose gradient is
None (DINO's `cancel_gradients_last_layer`): no update, no weight decay, and its momentum or Adam
moments (with their step count) untouched until it thaws. Learning-rate and weight-decay schedules
keep following the global step.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vision_jax import schedules
from vision_jax.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd", "lars")
DEFAULT_GROUP = "default"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Parameters whose '/'-joined path matches `pattern`, with their own settings."""

    name: str
    pattern: str
    lr_scale: float = 1.0
    wd_scale: float = 1.0
    frozen: bool = False  # for the whole run
    frozen_steps: int = 0  # frozen for the first N steps only


def groups_from_config(groups_config) -> list[ParamGroup]:
    """`config.optimizer.groups`: name -> dict(pattern=..., lr_scale=..., wd_scale=..., frozen=..., frozen_steps=...)."""
    groups = []
    for name, options in groups_config.items():
        options = dict(options)
        if "pattern" not in options:
            raise ConfigError(f"config.optimizer.groups.{name} needs a 'pattern' (a regex over parameter paths "
                              f"such as 'encoder/convs/0/kernel').")
        fields = {f.name for f in dataclasses.fields(ParamGroup)} - {"name"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(f"config.optimizer.groups.{name} has unknown option(s) {unknown}; "
                              f"its options are: {', '.join(sorted(fields))}.")
        groups.append(ParamGroup(name=name, **options))
    return groups


def param_path(path) -> str:
    """'encoder/convs/0/kernel' for a pytree key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def assign_groups(params: Any, groups: list[ParamGroup]) -> Any:
    """The name of each parameter's group (a pytree like `params`); checks every pattern is used."""
    for group in groups:
        if group.name == DEFAULT_GROUP:
            raise ConfigError(f"The group name {DEFAULT_GROUP!r} is reserved for parameters no pattern matches.")
        if group.lr_scale < 0 or group.wd_scale < 0 or group.frozen_steps < 0:
            raise ConfigError(f"Parameter group {group.name!r}: lr_scale, wd_scale and frozen_steps must be >= 0.")
        try:
            re.compile(group.pattern)
        except re.error as error:
            raise ConfigError(f"Parameter group {group.name!r}: pattern {group.pattern!r} is not a regex ({error}).")
    paths = [param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]

    def label(path) -> str:
        text = param_path(path)
        return next((g.name for g in groups if re.search(g.pattern, text)), DEFAULT_GROUP)

    labels = jax.tree_util.tree_map_with_path(lambda path, _: label(path), params)
    used = set(jax.tree.leaves(labels))
    for group in groups:
        if group.name not in used:
            matched_earlier = [p for p in paths if re.search(group.pattern, p)]
            detail = (f"every parameter it matches ({matched_earlier[0]}, ...) belongs to an earlier group"
                      if matched_earlier else f"parameters look like {', '.join(paths[:4])}")
            raise ConfigError(f"Parameter group {group.name!r}: pattern {group.pattern!r} selects no parameter; "
                              f"{detail}.")
    frozen = {g.name for g in groups if g.frozen}
    if used <= frozen:
        raise ConfigError(f"Parameter groups {sorted(frozen)} freeze every parameter, so nothing would train; "
                          f"unfreeze at least one group.")
    return labels


def learning_rate_schedule(opt_config, total_steps: int) -> schedules.Schedule:
    if opt_config.schedule == "cosine":
        return schedules.warmup_cosine(opt_config.lr, opt_config.warmup_steps, total_steps, opt_config.end_lr)
    if opt_config.schedule == "constant":
        return schedules.warmup_constant(opt_config.lr, opt_config.warmup_steps)
    raise ConfigError(f"Unknown schedule {opt_config.schedule!r}; use 'cosine' or 'constant'.")


def weight_decay_schedule(opt_config, total_steps: int) -> schedules.Schedule:
    """Constant, or (with `weight_decay_end` set) a cosine from weight_decay to it (DINO: 0.04 -> 0.4)."""
    if opt_config.weight_decay_end is None:
        return lambda step: jnp.asarray(opt_config.weight_decay, jnp.float32)
    return schedules.cosine(opt_config.weight_decay, opt_config.weight_decay_end, total_steps)


class Optimizer(NamedTuple):
    tx: optax.GradientTransformation
    learning_rate: schedules.Schedule  # the default group's (what the trainer logs)
    weight_decay: schedules.Schedule


def make_optimizer(opt_config, total_steps: int, groups: list[ParamGroup] = (),
                   abstract_params: Any = None) -> Optimizer:
    """The optimizer of `config.optimizer` over parameter groups (groups need `abstract_params`)."""
    if opt_config.name not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimizer {opt_config.name!r}; use {', '.join(map(repr, OPTIMIZERS))}.")
    if len(opt_config.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in opt_config.betas):
        raise ConfigError(f"optimizer.betas={tuple(opt_config.betas)} must be two decays in [0, 1), e.g. "
                          f"--config.optimizer.betas='(0.9, 0.95)'.")
    if opt_config.grad_clip_mode not in ("global", "per_parameter"):
        raise ConfigError(f"optimizer.grad_clip_mode={opt_config.grad_clip_mode!r}: use 'global' or 'per_parameter'.")
    lr, wd = learning_rate_schedule(opt_config, total_steps), weight_decay_schedule(opt_config, total_steps)
    default = ParamGroup(DEFAULT_GROUP, pattern="")
    if groups:
        labels = assign_groups(abstract_params, list(groups))
        used = set(jax.tree.leaves(labels))
        transforms = {g.name: _group_transform(opt_config, g, lr, wd) for g in [default, *groups] if g.name in used}
        tx = optax.multi_transform(transforms, labels)
    else:
        tx = _group_transform(opt_config, default, lr, wd)
    if opt_config.grad_clip_norm > 0:
        clip = (optax.clip_by_global_norm(opt_config.grad_clip_norm) if opt_config.grad_clip_mode == "global"
                else clip_each_by_norm(opt_config.grad_clip_norm))
        tx = optax.chain(clip, tx)
    return Optimizer(tx, lr, wd)


def _kernels(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _group_transform(opt_config, group: ParamGroup, lr, wd) -> optax.GradientTransformation:
    if group.frozen:
        return optax.set_to_zero()
    frozen_steps = group.frozen_steps
    hold = (lambda tx: hold_state_while_frozen(tx, frozen_steps)) if frozen_steps else (lambda tx: tx)
    scaled_lr = lambda step: group.lr_scale * lr(step)
    decay = optax.add_decayed_weights(lambda step: group.wd_scale * wd(step), mask=_kernels)
    if opt_config.name == "adamw":  # optax.adamw's chain, with the moments held while frozen
        b1, b2 = opt_config.betas
        parts = [hold(optax.scale_by_adam(b1=b1, b2=b2)), decay, optax.scale_by_learning_rate(scaled_lr)]
    elif opt_config.name == "sgd":  # optax.sgd's chain after weight decay (PyTorch's SGD: decay, momentum, lr)
        parts = [decay, hold(optax.trace(decay=opt_config.momentum, nesterov=opt_config.nesterov)),
                 optax.scale_by_learning_rate(scaled_lr)]
    else:  # optax.lars's chain
        parts = [decay, optax.masked(optax.scale_by_trust_ratio(trust_coefficient=opt_config.trust_coefficient), _kernels),
                 optax.scale_by_learning_rate(scaled_lr), hold(optax.trace(decay=opt_config.momentum))]
    if frozen_steps:
        parts.append(zero_while_frozen(frozen_steps))
    return optax.chain(*parts)


class _HoldState(NamedTuple):
    count: jax.Array
    inner: Any


def hold_state_while_frozen(inner: optax.GradientTransformation, frozen_steps: int) -> optax.GradientTransformation:
    """`inner`, but during the first `frozen_steps` updates its state (moments, their count) stays as it was."""

    def init(params):
        return _HoldState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        frozen = state.count < frozen_steps
        kept = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state.inner, new_inner)
        return new_updates, _HoldState(optax.safe_increment(state.count), kept)

    return optax.GradientTransformation(init, update)


def zero_while_frozen(frozen_steps: int) -> optax.GradientTransformation:
    """Zero updates during the first `frozen_steps` updates."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        frozen = state.count < frozen_steps
        updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
    """Scales each parameter's gradient to norm <= max_norm on its own (DINO's `clip_gradients`:
    coefficient max_norm / (norm + 1e-6) where below 1)."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            coefficient = max_norm / (jnp.linalg.norm(g.astype(jnp.float32)) + 1e-6)
            return jnp.where(coefficient < 1.0, g * coefficient.astype(g.dtype), g)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
