"""FLOPs of one call of a function, as XLA counts them, for the parameter/FLOP report at start-up.

XLA's cost analysis counts a multiply-add as 2 FLOPs, so a published "4.1 GFLOPs" for ResNet-50
(which really means 4.1 G multiply-adds, as in torchvision's table) is about 8.2e9 here.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx


def forward_flops(apply_fn: Callable, *example_args: Any, compile: bool = False) -> float:
    """FLOPs of one call `apply_fn(*example_args)` from XLA's cost analysis.

    `example_args` may be arrays or `jax.ShapeDtypeStruct`s (nothing is allocated or run; only
    shapes and dtypes matter). By default the count comes from the lowered HLO, before XLA's
    optimizations (`jit(fn).lower(...).cost_analysis()`): no compilation, so it takes about a
    second even for ResNet-50, and it counts the convolutions and matmuls the model asks for.
    `compile=True` asks the compiled executable instead (`.lower(...).compile().cost_analysis()`),
    which reflects fusion and rewrites on the current backend but costs a full compile (tens of
    seconds on CPU for a ResNet-50).

    Raises RuntimeError if the backend gives no cost analysis.
    """
    lowered = jax.jit(apply_fn).lower(*example_args)
    cost = lowered.compile().cost_analysis() if compile else lowered.cost_analysis()
    # Depending on the JAX version and backend this is a dict, or a list with one dict per
    # executable/device program; a per-call count sums the programs.
    costs = cost if isinstance(cost, (list, tuple)) else [cost]
    if not costs or any(c is None or "flops" not in c for c in costs):
        raise RuntimeError(f"XLA gave no FLOP count for this function on {jax.default_backend()}: {cost!r}")
    return float(sum(c["flops"] for c in costs))


def model_flops(model: nnx.Module, *example_args: Any, compile: bool = False, **call_kwargs: Any) -> float:
    """FLOPs of one call `model(*example_args, **call_kwargs)`; see `forward_flops`.

    `model` may be abstract (from `nnx.eval_shape`): its parameters enter as shapes only, so
    counting a large model allocates nothing. Keyword arguments (such as `train=False`) are static.
    """
    graphdef, state = nnx.split(model)

    def apply(state, *args):
        return nnx.merge(graphdef, state)(*args, **call_kwargs)

    abstract_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    return forward_flops(apply, abstract_state, *example_args, compile=compile)
