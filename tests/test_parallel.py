"""Sharding rules: logical axis names -> mesh axes, for parameters and the optimizer state that
mirrors them; and, on 8 fake CPU devices, sharded forward and gradients equal replicated ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from helpers import REPO
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from vision_jax import parallel
from vision_jax.errors import ConfigError
from vision_jax.models import MODELS

FSDP_MESH = AbstractMesh((8, 1), ("data", "model"))
TP_MESH = AbstractMesh((4, 2), ("data", "model"))


@pytest.mark.parametrize("names,shape,rule_set,mesh,expected", [
    (("embed", "mlp"), (384, 1536), "fsdp", FSDP_MESH, P("data", None)),
    (("embed", "mlp"), (384, 1536), "tensor_parallel", TP_MESH, P(None, "model")),
    (("embed", "mlp"), (384, 1536), "fsdp_tp", TP_MESH, P("data", "model")),
    (("mlp", "embed"), (1536, 384), "fsdp_tp", TP_MESH, P("model", "data")),
    (("embed", "heads", "head_dim"), (384, 6, 64), "tensor_parallel", TP_MESH, P(None, "model", None)),
    ((None, None, "conv_in", "conv_out"), (3, 3, 64, 128), "fsdp", FSDP_MESH, P(None, None, None, "data")),
    # The mesh axis does not divide the dimension (3 heads over 2 devices): left whole.
    (("embed", "heads", "head_dim"), (192, 3, 64), "tensor_parallel", TP_MESH, P(None, None, None)),
    # Small arrays stay replicated whatever their names.
    (("embed", "mlp"), (16, 64), "fsdp", FSDP_MESH, P()),
    (("embed",), (384,), "fsdp", FSDP_MESH, P()),
    # Unnamed parameters are replicated; 'replicate' splits nothing.
    ((), (512, 512), "fsdp", FSDP_MESH, P()),
    (("embed", "mlp"), (384, 1536), "replicate", FSDP_MESH, P(None, None)),
])
def test_logical_names_map_to_the_mesh_axes_the_rules_say(names, shape, rule_set, mesh, expected):
    assert parallel.logical_to_spec(names, shape, parallel.rules_for(rule_set), mesh) == expected


def test_one_mesh_axis_splits_at_most_one_dimension():
    # Both dimensions are named EMBED (a square weight): only the first is split over 'data'.
    rules = parallel.rules_for("fsdp")
    assert parallel.logical_to_spec(("embed", "embed"), (512, 512), rules, FSDP_MESH) == P("data", None)


def test_unknown_rule_set_is_a_clear_error():
    with pytest.raises(ConfigError, match="Unknown sharding rule set 'tensor'.*replicate, fsdp, tensor_parallel"):
        parallel.rules_for("tensor")


def test_optimizer_state_takes_the_sharding_of_the_parameter_it_mirrors():
    model = nnx.eval_shape(lambda: MODELS.build("resnet", {"depth": 18, "stem": "cifar"}, rngs=nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    names = nnx.to_pure_dict(nnx.get_partition_spec(params))
    params = nnx.to_pure_dict(params)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = jax.eval_shape(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "ema": {},
                                      "model_state": nnx.to_pure_dict(rest),
                                      "opt_state": tx.init(p)}, params)
    shardings = parallel.state_shardings(state, names, FSDP_MESH, "fsdp")
    param_specs = jax.tree.map(lambda s: s.spec, shardings["params"])
    # Every conv kernel big enough is split on its output channels.
    conv = param_specs["blocks"][4]["conv2"]["kernel"]
    assert conv == P(None, None, None, "data")
    adam = shardings["opt_state"][1][0]  # chain -> (clip state, (adam state, ...))
    for moment in (adam.mu, adam.nu):
        assert jax.tree.map(lambda s: s.spec, moment) == param_specs
    assert shardings["opt_state"][1][0].count.spec == P()
    assert all(s.spec == P() for s in jax.tree.leaves(shardings["model_state"]))  # BatchNorm statistics


SHARDED_MODELS = {
    "cnn": ("cnn", {"widths": (32, 64, 128, 256)}, 16),
    # Two ViT blocks, 4 heads of 32: every weight is big enough to split, heads divide 'model'.
    "vit": ("small_vit", {"width": 128, "depth": 2, "heads": 4, "mlp_dim": 512, "patch_size": 4,
                          "image_size": 16}, 16),
}
CASES = [("cnn", "fsdp", (8, 1)), ("vit", "fsdp", (8, 1)), ("vit", "tensor_parallel", (4, 2)),
         ("vit", "fsdp_tp", (2, 4))]

# Where a few real parameters must land, written out by hand (not recomputed from the rules):
# path -> (shape, PartitionSpec). Sizes: CNN widths 32..256; ViT width 128, 4 heads of 32, MLP 512.
EXPECTED_PLACEMENTS = {
    ("cnn", "fsdp", (8, 1)): {
        "convs/3/kernel": ((3, 3, 128, 256), P(None, None, None, "data")),  # output channels over 8
        "convs/0/kernel": ((3, 3, 3, 32), P(None, None, None, None)),  # 864 values: too small to split
        "norms/3/scale": ((256,), P(None)),
    },
    ("vit", "fsdp", (8, 1)): {
        "blocks/0/mlp/fc1/kernel": ((128, 512), P("data", None)),  # the model width over 'data'
        "blocks/0/mlp/fc2/kernel": ((512, 128), P(None, "data")),
        "blocks/1/attn/query/kernel": ((128, 4, 32), P("data", None, None)),
    },
    ("vit", "tensor_parallel", (4, 2)): {
        "blocks/0/mlp/fc1/kernel": ((128, 512), P(None, "model")),  # Megatron: fc1 by columns,
        "blocks/0/mlp/fc2/kernel": ((512, 128), P("model", None)),  # fc2 by rows
        "blocks/1/attn/query/kernel": ((128, 4, 32), P(None, "model", None)),  # heads over 'model'
        "blocks/1/attn/out/kernel": ((4, 32, 128), P("model", None, None)),
        "blocks/0/mlp/fc1/bias": ((512,), P(None)),  # small: replicated
        "patch_embed/kernel": ((4, 4, 3, 128), P(None, None, None, None)),  # no heads or MLP axis
    },
    ("vit", "fsdp_tp", (2, 4)): {
        "blocks/0/mlp/fc1/kernel": ((128, 512), P("data", "model")),
        "blocks/1/attn/query/kernel": ((128, 4, 32), P("data", "model", None)),
        "blocks/0/norm1/scale": ((128,), P(None)),
    },
}


@pytest.fixture(scope="module")
def sharded_reports():
    """Every case in one subprocess with 8 fake CPU devices (the device count is fixed at start-up)."""
    specs = [{"name": SHARDED_MODELS[m][0], "options": SHARDED_MODELS[m][1], "size": SHARDED_MODELS[m][2],
              "rule_set": rule_set, "mesh": mesh} for m, rule_set, mesh in CASES]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, str(REPO / "tests" / "sharded_model_check.py"), json.dumps(specs)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(zip(CASES, json.loads(result.stdout.strip().splitlines()[-1])))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{r}" for m, r, _ in CASES])
def test_sharded_forward_and_gradients_equal_replicated(sharded_reports, case):
    report = sharded_reports[case]
    assert report["num_devices"] == 8
    assert report["max_relative_error"]["features"] < 1e-5, report
    assert report["max_relative_error"]["gradients"] < 1e-5, report
    _, _, mesh_shape = case
    mesh_sizes = dict(zip(("data", "model"), mesh_shape))
    for path, (shape, spec) in EXPECTED_PLACEMENTS[case].items():
        placed = report["placements"][path]
        assert placed["spec"] == list(spec), (path, placed)
        # Each device holds its share: the split dimensions divided by their mesh axis' size.
        shard = [size // (mesh_sizes[axis] if axis else 1) for size, axis in zip(shape, spec)]
        assert placed["shard_shape"] == shard, (path, placed)
