"""Run in subprocesses by test_teacher_student.py, with 1 or 8 (fake CPU) devices: trains each
method named on the command line for a few steps of its digits recipe (tiny networks, the same seed
and batches) and prints one JSON line {method: [loss per step]}."""
import json
import sys
import tempfile

import jax

from vision_jax import config as config_lib
from vision_jax import parallel, trainer
from vision_jax.data import pipeline

LENGTH = ["batch_size=32", "total_steps=6"]
TINY_CNN = ["data.image_size=16", "model.widths=(8,16,32,32)"]
RECIPES = {  # method: (recipe, overrides)
    "byol": ("configs/ssl_digits.py:method=byol,runlocal",
             [*TINY_CNN, "method.projection_hidden_dim=32", "method.prediction_hidden_dim=32"]),
    "mocov3": ("configs/ssl_digits.py:method=mocov3,runlocal", [*TINY_CNN, "method.hidden_dim=32"]),
    "dino": ("configs/ssl_digits.py:method=dino,runlocal", [*TINY_CNN, "method.hidden_dim=32", "method.out_dim=64"]),
    "dcgan": ("configs/dcgan_digits.py:runlocal", ["method.n_disc=2"]),  # its own update, two D steps in one
}


def losses(method: str, sharding: str) -> list[float]:
    recipe, overrides = RECIPES[method]
    config = config_lib.load_config(recipe, [*LENGTH, *overrides, f"sharding={sharding}"])
    with tempfile.TemporaryDirectory() as workdir:
        run = trainer.Run(config, workdir)
        state = run.init_state()
        batches = pipeline.train_batches(run.train_source, run.augment, global_batch=config.batch_size,
                                         seed=config.seed, start_step=0)
        step_fn = run.compile_step()
        curve = []
        for _ in range(config.total_steps):
            state, metrics = step_fn(state, parallel.to_global_batch(next(batches), parallel.batch_sharding(run.mesh)))
            curve.append(float(metrics["loss"]))
    return curve


if __name__ == "__main__":
    sharding, methods = sys.argv[1], sys.argv[2:]
    print(json.dumps({"devices": jax.device_count(), **{m: losses(m, sharding) for m in methods}}))
