"""Schedules: values as functions of the step (0-based, the step whose update uses the value).

Every schedule a method or optimizer follows is one of these, built once with the run's length
(total steps, steps per epoch) and evaluated inside the jitted step, so a resumed run sees the
same values as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from vision_jax.errors import ConfigError

Schedule = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RunLength:
    """How long a run is, known when its method and optimizer are built."""

    total_steps: int
    steps_per_epoch: int

    def epochs_to_steps(self, epochs: float) -> int:
        return int(round(epochs * self.steps_per_epoch))


def cosine(base: float, final: float, total_steps: int) -> Schedule:
    """final - (final - base) * (1 + cos(pi * step / total_steps)) / 2: base at step 0, final at the end.

    solo-learn's `MomentumUpdater.update_tau` for an EMA momentum (final 1), and DINO's
    `cosine_scheduler` for its momentum and weight decay."""
    total = max(total_steps, 1)

    def schedule(step):
        progress = jnp.minimum(jnp.asarray(step, jnp.float32) / total, 1.0)
        return final - (final - base) * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0

    return schedule


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int, end: float = 0.0) -> Schedule:
    """Linear from 0 to `peak` over `warmup_steps`, then a cosine from `peak` to `end` at the last step."""
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = end + (peak - end) * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


def warmup_constant(peak: float, warmup_steps: int) -> Schedule:
    """Linear from 0 to `peak` over `warmup_steps`, then `peak`."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        return jnp.where(step < warmup_steps, peak * step / max(warmup_steps, 1), peak)

    return schedule


def per_epoch_linear_warmup(start: float, final: float, warmup_epochs: int, steps_per_epoch: int) -> Schedule:
    """DINO's teacher temperature: `np.linspace(start, final, warmup_epochs)[epoch]` during the
    first `warmup_epochs` epochs, then `final`; constant within an epoch, as the reference."""

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // max(steps_per_epoch, 1)
        warm = start + (final - start) * epoch.astype(jnp.float32) / max(warmup_epochs - 1, 1)
        return jnp.where(epoch < warmup_epochs, warm, final)

    return schedule


def check_momentum(name: str, value: float) -> float:
    """An EMA momentum is a weight in [0, 1]; anything else silently breaks the follower."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value} is not an EMA momentum: use a value in [0, 1] (e.g. 0.996).")
    return value


def ema_update(momentum: jax.Array, follower, online):
    """follower <- momentum * follower + (1 - momentum) * online, leaf by leaf (in the follower's dtype)."""
    return jax.tree.map(lambda f, o: (momentum * f + (1.0 - momentum) * o).astype(f.dtype), follower, online)
