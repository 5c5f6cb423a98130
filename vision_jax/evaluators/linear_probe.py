"""Linear probe: multinomial logistic regression on frozen, standardized features.

Mini-batch Adam with a cosine-decayed learning rate for a fixed number of epochs (and at least
`min_steps` updates, so that small datasets are fit too), with fixed L2
regularization and a fixed shuffling seed, the same for every representation in a results table,
so rows are comparable. (Full-batch steps cost a pass over the data each: on raw CIFAR pixels,
45,000 x 3,072, a thousand of them took over ten minutes on 2 cores; 30 mini-batch epochs do
better in a fraction of that.)
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation


@partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size", "min_steps"))
def fit_linear(x, y, num_classes: int, epochs: int, batch_size: int, lr: float, weight_decay: float,
               min_steps: int = 0):
    num_examples = x.shape[0]
    batch_size = min(batch_size, num_examples)
    steps_per_epoch = num_examples // batch_size
    epochs = max(epochs, -(-min_steps // steps_per_epoch))
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    tx = optax.adam(optax.cosine_decay_schedule(lr, epochs * steps_per_epoch))

    def loss_fn(p, xb, yb):
        logits = xb @ p["w"] + p["b"]
        return (optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
                + 0.5 * weight_decay * jnp.sum(p["w"] ** 2))

    def step(carry, batch_index):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p, x[batch_index], y[batch_index])
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    def epoch(carry, key):
        order = jax.random.permutation(key, num_examples)[: steps_per_epoch * batch_size]
        return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch_size))

    keys = jax.random.split(jax.random.key(0), epochs)
    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), keys)
    return params


@EVALUATORS.register("linear_probe")
class LinearProbe:
    output = "features"

    def __init__(self, epochs: int = 30, batch_size: int = 256, lr: float = 0.01, weight_decay: float = 1e-4,
                 min_steps: int = 300):
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.min_steps = min_steps

    def __call__(self, representation: Representation, data: EvalData) -> dict[str, float]:
        train_x, train_y = data.outputs(representation, self.output, "train")
        test_x, test_y = data.outputs(representation, self.output, "test")
        mean, std = train_x.mean(0), train_x.std(0) + 1e-6
        params = fit_linear((train_x - mean) / std, train_y, data.num_classes, self.epochs, self.batch_size,
                            self.lr, self.weight_decay, self.min_steps)
        logits = ((test_x - mean) / std) @ np.asarray(params["w"]) + np.asarray(params["b"])
        return {"top1": float(np.mean(np.argmax(logits, -1) == test_y) * 100)}
