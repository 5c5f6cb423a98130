"""Schedules of the step against their published formulas, written out here."""
import math

import numpy as np
import pytest

from vision_jax import schedules
from vision_jax.errors import ConfigError


def test_cosine_momentum_is_solo_learns_tau_schedule():
    # solo-learn MomentumUpdater.update_tau: final - (final - base) * (cos(pi * k / K) + 1) / 2.
    schedule = schedules.cosine(0.99, 1.0, 100)
    for step in (0, 1, 37, 50, 99, 100):
        expected = 1.0 - (1.0 - 0.99) * (math.cos(math.pi * step / 100) + 1) / 2
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
    assert float(schedule(0)) == pytest.approx(0.99) and float(schedule(100)) == pytest.approx(1.0)
    for step in (101, 150, 199):  # a run extended past its schedule stays at the final value
        assert float(schedule(step)) == pytest.approx(1.0)


def test_cosine_weight_decay_is_dinos_cosine_scheduler():
    # dino utils.cosine_scheduler(0.04, 0.4, epochs, niter) with no warmup, one value per step.
    total = 60
    expected = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * np.arange(total) / total))
    schedule = schedules.cosine(0.04, 0.4, total)
    np.testing.assert_allclose([float(schedule(s)) for s in range(total)], expected, rtol=1e-5)


def test_warmup_cosine_learning_rate():
    peak, warmup, total = 0.5, 10, 110
    schedule = schedules.warmup_cosine(peak, warmup, total, end=0.01)
    for step in (0, 1, 5, 9):
        np.testing.assert_allclose(float(schedule(step)), peak * step / warmup, rtol=1e-6)
    for step in (10, 11, 60, 109):
        progress = (step - warmup) / (total - warmup)
        expected = 0.01 + (peak - 0.01) * (1 + math.cos(math.pi * progress)) / 2
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_teacher_temperature_warms_up_per_epoch_as_dinos_linspace():
    start, final, warmup_epochs, steps_per_epoch = 0.04, 0.07, 4, 3
    reference = np.concatenate([np.linspace(start, final, warmup_epochs), np.full(6, final)])  # per epoch
    schedule = schedules.per_epoch_linear_warmup(start, final, warmup_epochs, steps_per_epoch)
    for step in range(30):
        np.testing.assert_allclose(float(schedule(step)), reference[step // steps_per_epoch], rtol=1e-6)
    # No warmup: the final temperature from the first step.
    assert float(schedules.per_epoch_linear_warmup(start, final, 0, steps_per_epoch)(0)) == pytest.approx(final)


def test_ema_update_leaf_by_leaf():
    follower = {"w": np.array([1.0, 2.0]), "b": np.array(3.0)}
    online = {"w": np.array([3.0, 0.0]), "b": np.array(-1.0)}
    updated = schedules.ema_update(0.9, follower, online)
    np.testing.assert_allclose(updated["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 0])
    np.testing.assert_allclose(updated["b"], 0.9 * 3 + 0.1 * -1)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_momentum_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=rf"method.base_momentum={value} is not an EMA momentum.*\[0, 1\]"):
        schedules.check_momentum("method.base_momentum", value)
