"""Optimizer and learning-rate schedule from `config.optimizer`."""
from __future__ import annotations

import jax
import optax

from vision_jax.errors import ConfigError


def learning_rate_schedule(opt_config, total_steps: int) -> optax.Schedule:
    warmup = opt_config.warmup_steps
    if opt_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, opt_config.lr, warmup, max(total_steps, warmup + 1))
    if opt_config.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, opt_config.lr, max(warmup, 1)), optax.constant_schedule(opt_config.lr)],
            [warmup])
    raise ConfigError(f"Unknown schedule {opt_config.schedule!r}; use 'cosine' or 'constant'.")


def _decay_mask(params):
    # Weight decay on kernels only: biases and normalization scales are not decayed (standard).
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(opt_config, total_steps)
    name, wd = opt_config.name, opt_config.weight_decay
    if name == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=wd, mask=_decay_mask)
    elif name == "sgd":
        optimizer = optax.chain(optax.add_decayed_weights(wd, mask=_decay_mask),
                                optax.sgd(schedule, momentum=opt_config.momentum, nesterov=False))
    elif name == "lars":
        optimizer = optax.lars(schedule, weight_decay=wd, weight_decay_mask=_decay_mask,
                               trust_ratio_mask=_decay_mask, momentum=opt_config.momentum)
    else:
        raise ConfigError(f"Unknown optimizer {name!r}; use 'adamw', 'sgd' or 'lars'.")
    if opt_config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), optimizer)
    return optimizer
