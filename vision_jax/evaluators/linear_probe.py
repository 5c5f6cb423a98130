"""Linear probe: multinomial logistic regression on frozen, standardized features.

Full-batch Adam for a fixed number of steps with fixed L2 regularization, the same for every
representation in a results table, so rows are comparable.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation


@partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_linear(x, y, num_classes: int, steps: int, lr: float, weight_decay: float):
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    tx = optax.adam(lr)
    targets = jax.nn.one_hot(y, num_classes)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy(logits, targets).mean() + 0.5 * weight_decay * jnp.sum(p["w"] ** 2)

    def step(_, carry):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
    return params


@EVALUATORS.register("linear_probe")
class LinearProbe:
    def __init__(self, steps: int = 1000, lr: float = 0.01, weight_decay: float = 1e-4):
        self.steps, self.lr, self.weight_decay = steps, lr, weight_decay

    def __call__(self, representation: Representation, data: EvalData) -> dict[str, float]:
        train_x, train_y = data.features(representation, "train")
        test_x, test_y = data.features(representation, "test")
        mean, std = train_x.mean(0), train_x.std(0) + 1e-6
        params = fit_linear((train_x - mean) / std, train_y, data.num_classes, self.steps, self.lr,
                            self.weight_decay)
        logits = ((test_x - mean) / std) @ np.asarray(params["w"]) + np.asarray(params["b"])
        return {"top1": float(np.mean(np.argmax(logits, -1) == test_y) * 100)}
