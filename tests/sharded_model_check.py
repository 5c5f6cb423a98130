"""Run in a subprocess with 8 fake CPU devices by test_parallel.py: for each case, builds a
model, places its parameters by a rule set, and compares forward features and parameter
gradients with the same computation on one device; reports where each parameter was placed
(spec and per-device shard shape) for the test to compare with the placements it expects.
Prints one JSON line: a report per case."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from vision_jax import parallel
from vision_jax.models import MODELS
from vision_jax.models.vit import VisionTransformer


def build(spec: dict) -> nnx.Module:
    if spec["name"] == "small_vit":  # ViT layers at a width whose weights all pass MIN_SHARDED_SIZE
        return VisionTransformer(**spec["options"], rngs=nnx.Rngs(0))
    return MODELS.build(spec["name"], spec["options"], rngs=nnx.Rngs(0))


def main(spec: dict) -> dict:
    mesh = jax.make_mesh(tuple(spec["mesh"]), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model = build(spec)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    names = nnx.to_pure_dict(nnx.get_partition_spec(params))
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    size = spec["size"]
    images = jax.random.normal(jax.random.key(1), (8, size, size, 3))

    def features_and_loss(params, images):
        features = nnx.merge(graphdef, params, rest)(images, train=False)
        return jnp.mean(jnp.sin(features)), features

    grad_fn = jax.jit(jax.value_and_grad(features_and_loss, has_aux=True))
    (_, features), grads = grad_fn(params, images)

    rules = parallel.rules_for(spec["rule_set"])
    specs = parallel.param_specs(names, params, rules, mesh)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    sharded_params = jax.device_put(params, shardings)
    sharded_images = jax.device_put(images, parallel.batch_sharding(mesh))
    (_, sharded_features), sharded_grads = grad_fn(sharded_params, sharded_images)

    def relative_error(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))

    def largest(tree):
        return max(float(np.max(np.abs(np.asarray(x, np.float64)))) for x in jax.tree.leaves(tree))

    def placement(leaf) -> dict:
        spec = list(leaf.sharding.spec)
        return {"spec": spec + [None] * (leaf.ndim - len(spec)), "shard_shape": list(leaf.sharding.shard_shape(leaf.shape))}

    placements = {"/".join(map(str, path)): placement(leaf)
                  for path, leaf in parallel._leaves_with_paths(sharded_params, is_names=False)}
    return {
        "num_devices": jax.device_count(),
        "max_relative_error": {
            "features": relative_error(features, sharded_features),
            # Relative to the largest gradient of any parameter: some gradients are zero in exact
            # arithmetic (attention key biases) and hold only float noise on both sides.
            "gradients": largest(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), grads,
                                 sharded_grads)) / largest(grads),
        },
        "placements": placements,
    }


if __name__ == "__main__":
    print(json.dumps([main(spec) for spec in json.loads(sys.argv[1])]))
