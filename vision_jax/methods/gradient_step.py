"""The default update of one training step: gradients of the method's objective (accumulated
over microbatches if asked), the optimizer step, then the EMA of the followers.

Gradient accumulation (`grad_accum_steps` = k) splits the global batch into k microbatches and
sums their gradients inside the jitted step before one optimizer update, for batches that do not
fit in device memory. Each microbatch keeps its share on every device (rows j*k + i form
microbatch i). For a loss that is a mean over independent examples, the update equals the
full-batch one. Losses that couple the examples of a batch do not: contrastive negatives
(SimCLR, MoCo) then come from one microbatch, and BatchNorm normalizes with one microbatch's
statistics (and updates its running statistics once per microbatch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vision_jax import schedules
from vision_jax.methods.base import Method, Metrics, StepInfo


def gradient_update(method: Method, graphdef: nnx.GraphDef, optimizer, state: dict, batch: dict,
                    rng: jax.Array, grad_accum_steps: int = 1) -> tuple[dict, Metrics]:
    step, ema = state["step"], state["ema"]

    def objective(params, model_state, batch, rng):
        model = nnx.merge(graphdef, {**params, **ema}, model_state)
        loss, metrics = method.objective(model, batch, StepInfo(step, rng))
        _, _, model_state = nnx.split(model, nnx.Param, ...)
        return loss, (metrics, nnx.to_pure_dict(model_state))

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if grad_accum_steps == 1:
        (_, (metrics, model_state)), grads = grad_fn(state["params"], state["model_state"], batch, rng)
    else:
        grads, metrics, model_state = _accumulate(grad_fn, state["params"], state["model_state"], batch, rng,
                                                  grad_accum_steps)

    updates, opt_state = optimizer.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if method.followers:
        momentum = method.ema_momentum(step)
        ema = {follower: schedules.ema_update(momentum, ema[follower], params[online])
               for follower, online in method.followers.items()}
        metrics["ema_momentum"] = momentum
    # Norms of the gradient, the update and the new parameters (big_vision's diagnostics); the
    # parameter norm also catches an update that made the saved state non-finite.
    norms = {"grad_norm": optax.global_norm(grads), "update_norm": optax.global_norm(updates),
             "param_norm": optax.global_norm(params)}
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(norms["grad_norm"]) & jnp.isfinite(norms["param_norm"])
    metrics = {**metrics, **norms, "learning_rate": optimizer.learning_rate(step), "finite": finite}
    new_state = {**state, "step": step + 1, "params": params, "ema": ema, "model_state": model_state,
                 "opt_state": opt_state}
    return new_state, metrics


def _accumulate(grad_fn, params, model_state, batch, rng, k: int):
    """Mean gradient and metrics over k microbatches, threading the model state through them."""

    def split(x):  # [B, ...] -> [k, B/k, ...], microbatch i = rows i, i+k, i+2k, ...
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    def microbatch(carry, inputs):
        grad_sum, model_state = carry
        index, micro = inputs
        (_, (metrics, model_state)), grads = grad_fn(params, model_state, micro, jax.random.fold_in(rng, index))
        return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, model_state), metrics = jax.lax.scan(
        microbatch, (zeros, model_state), (jnp.arange(k), jax.tree.map(split, batch)))
    return (jax.tree.map(lambda g: g / k, grad_sum), jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics),
            model_state)
