"""Device mesh and sharding rules: every array's placement comes from here.

The mesh has axes ('data', 'model'). Batches are split over 'data'. Parameters carry logical
axis names (vision_jax/models/axes.py); `config.sharding` names a rule set in RULE_SETS that maps
those names onto mesh axes:
  - 'replicate': a full copy on every device (data parallelism);
  - 'fsdp': the model-width dimension of every weight (EMBED, CONV_OUT) split over 'data', so
    parameters and optimizer state are spread over the data-parallel devices (XLA all-gathers
    them for the forward pass and reduce-scatters the gradients);
  - 'tensor_parallel': ViT attention heads and MLP hidden units split over 'model' (Megatron
    style: one all-reduce after attention and one after the MLP);
  - 'fsdp_tp': both.
A dimension is split only if the mesh axis size divides it, and arrays smaller than
MIN_SHARDED_SIZE stay replicated. Optimizer-state leaves take the sharding of the parameter they
mirror; everything else (step, rng, BatchNorm statistics) is replicated.
"""
from __future__ import annotations

import collections
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vision_jax.models import axes
from vision_jax.errors import ConfigError

MIN_SHARDED_SIZE = 2**14  # smaller arrays stay replicated: splitting them costs more than it saves

# logical axis name -> mesh axis; names not listed stay unsplit.
RULE_SETS: dict[str, dict[str, str]] = {
    "replicate": {},
    "fsdp": {axes.EMBED: "data", axes.CONV_OUT: "data"},
    "tensor_parallel": {axes.HEADS: "model", axes.MLP: "model"},
    "fsdp_tp": {axes.EMBED: "data", axes.CONV_OUT: "data", axes.HEADS: "model", axes.MLP: "model"},
}


def make_mesh(mesh_config) -> Mesh:
    data, model = mesh_shape(mesh_config, jax.device_count())
    # Auto axes: XLA propagates shardings through the step (no sharding annotations in model code).
    return jax.make_mesh((data, model), ("data", "model"), devices=jax.devices(),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int]:
    """(data, model) axis sizes for `num_devices`; an error names settings that fit."""
    model = mesh_config.model
    if num_devices % model:
        divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
        raise ConfigError(f"config.mesh.model={model} does not divide the {num_devices} devices; use a divisor "
                          f"of {num_devices}, e.g. --config.mesh.model={max(d for d in divisors if d <= model)} "
                          f"(divisors: {', '.join(map(str, divisors))}).")
    data = mesh_config.data if mesh_config.data != -1 else num_devices // model
    if data * model != num_devices:
        raise ConfigError(f"Mesh data={data} x model={model} does not use the {num_devices} devices; "
                          f"use --config.mesh.data=-1 to take all of them.")
    return data, model


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.batch_size") -> None:
    # Every process feeds an equal share, and every device of the data axis an equal slice.
    multiple = int(np.lcm(mesh.shape["data"], jax.process_count()))
    if batch_size % multiple:
        fits = max(multiple, batch_size // multiple * multiple)
        raise ConfigError(f"{what}={batch_size} is not divisible by the {mesh.shape['data']} devices of the "
                         f"mesh's data axis ({jax.process_count()} process(es)); use a multiple of {multiple}, "
                         f"e.g. --{what}={fits}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def split_like_batch(x: jax.Array) -> jax.Array:
    """`x` with its first axis split over 'data' as a batch is: for arrays a method makes inside the
    train step that XLA would otherwise compute whole on every device (a GAN's latents, and so its
    generator's whole forward pass). The trainer traces the step under its mesh; outside one
    (a method called directly), `x` is returned as it is."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, P("data"))


def rules_for(name: str) -> dict[str, str]:
    if name not in RULE_SETS:
        raise ConfigError(f"Unknown sharding rule set {name!r}; choose one of {', '.join(RULE_SETS)} "
                          f"(config.sharding).")
    return RULE_SETS[name]


def logical_to_spec(names: tuple[str | None, ...] | None, shape: tuple[int, ...], rules: dict[str, str],
                    mesh: Mesh) -> P:
    """The PartitionSpec `rules` give an array of `shape` whose dimensions are named `names`.

    A dimension is split over its mesh axis only if the axis size divides it and no earlier
    dimension already uses that axis; small arrays are not split at all.
    """
    if not names or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return P()
    spec, used = [], set()
    for name, size in zip(names, shape):
        mesh_axis = rules.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or mesh.shape[mesh_axis] == 1 or size % mesh.shape[mesh_axis]:
            spec.append(None)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
    return P(*spec)


def param_specs(param_names: Any, abstract_params: Any, rules: dict[str, str], mesh: Mesh) -> Any:
    """PartitionSpecs for a params pytree from its logical names (same structure, tuples as leaves)."""
    names_by_path = {path: names for path, names in _leaves_with_paths(param_names, is_names=True)}
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: logical_to_spec(names_by_path.get(_key(path)), leaf.shape, rules, mesh),
        abstract_params)


def state_shardings(abstract_state: Any, param_names: Any, mesh: Mesh, rule_set: str) -> Any:
    """A NamedSharding for every leaf of the train state.

    `param_names` holds every model parameter's logical axis names, keyed like the model: it
    covers both the trained params (`abstract_state['params']`) and the followers' params
    (`abstract_state['ema']`, e.g. an EMA teacher), which are placed by the same rules.
    Optimizer-state leaves (Adam moments, momentum) mirror parameters: each one takes the spec of
    the parameter whose path is the longest suffix of its own path and whose shape it has.
    """
    rules = rules_for(rule_set)
    specs = {part: param_specs(param_names, abstract_state[part], rules, mesh) for part in ("params", "ema")}
    by_path = {path: (spec, shape) for (path, spec), (_, shape) in zip(
        _leaves_with_paths(specs["params"], is_names=False),
        _leaves_with_paths(jax.tree.map(lambda x: x.shape, abstract_state["params"]), is_names=True))}

    def mirror(path, leaf) -> NamedSharding:
        key = _key(path)
        for start in range(len(key)):
            spec, shape = by_path.get(key[start:], (None, None))
            if spec is not None and shape == leaf.shape:
                return NamedSharding(mesh, spec)
        return replicated(mesh)

    shardings = {k: jax.tree.map(lambda _: replicated(mesh), v) for k, v in abstract_state.items()}
    for part, part_specs in specs.items():
        shardings[part] = jax.tree.map(lambda spec: NamedSharding(mesh, spec), part_specs,
                                       is_leaf=lambda x: isinstance(x, P))
    shardings["opt_state"] = jax.tree_util.tree_map_with_path(mirror, abstract_state["opt_state"])
    return shardings


def _key(path) -> tuple:
    """A hashable, printable form of a pytree key path (dict keys, list indices, attributes)."""
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def _leaves_with_paths(tree: Any, is_names: bool) -> list[tuple[tuple, Any]]:
    # Logical names and shapes are tuples: treat a tuple (or None) as one leaf, not a subtree.
    is_leaf = (lambda x: x is None or isinstance(x, tuple)) if is_names else (lambda x: isinstance(x, P))
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(_key(path), leaf) for path, leaf in flat]


def prefetch_to_device(batches: Iterator[dict], sharding: NamedSharding, size: int = 2) -> Iterator[dict]:
    """Keeps `size` global batches already transferred to the devices, so the host->device copy of
    batch k+1 overlaps step k (on accelerators the copy is otherwise on the critical path)."""
    queue: collections.deque = collections.deque()
    for local in batches:
        queue.append(to_global_batch(local, sharding))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def to_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's slice into global arrays split over the mesh's data axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
