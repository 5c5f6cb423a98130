"""Device mesh and sharding rules: every array's placement comes from here.

The mesh has axes ('data', 'model'). Batches are split over 'data'. Parameters and optimizer
state follow `config.sharding`:
  - 'replicate': a full copy on every device (data parallelism);
  - 'fsdp': each array of at least FSDP_MIN_SIZE elements is split over 'data' along its largest
    dimension that the axis size divides (parameters and optimizer state alike); XLA inserts the
    all-gathers. Tensor-parallel rules over 'model' will slot in here as more rules.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vision_jax.errors import ConfigError

FSDP_MIN_SIZE = 2**14  # smaller arrays stay replicated: splitting them costs more than it saves


def make_mesh(mesh_config) -> Mesh:
    num_devices = jax.device_count()
    model = mesh_config.model
    data = mesh_config.data if mesh_config.data != -1 else num_devices // model
    if data * model != num_devices:
        raise ConfigError(f"Mesh data={mesh_config.data} x model={model} does not use the {num_devices} "
                         f"devices; set config.mesh.data=-1 to take all of them.")
    # Auto axes: XLA propagates shardings through the step (no sharding annotations in model code).
    return jax.make_mesh((data, model), ("data", "model"), devices=jax.devices(),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.batch_size") -> None:
    data = mesh.shape["data"]
    if batch_size % data or batch_size % jax.process_count():
        raise ConfigError(f"{what}={batch_size} is not divisible by the {data} devices of the mesh's data "
                         f"axis ({jax.process_count()} process(es)); use a multiple of {data}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(abstract_state: Any, mesh: Mesh, mode: str) -> Any:
    """A sharding for every leaf of the (abstract) train state, following `mode`."""
    if mode not in ("replicate", "fsdp"):
        raise ConfigError(f"Unknown sharding mode {mode!r}; use 'replicate' or 'fsdp'.")
    data = mesh.shape["data"]

    def rule(leaf) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        if mode == "replicate" or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
            return replicated(mesh)
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % data == 0:
                spec = [None] * len(shape)
                spec[axis] = "data"
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    return jax.tree.map(rule, abstract_state)


def to_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's slice into global arrays split over the mesh's data axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
