"""Images from the generator of a run's latest checkpoint, as one PNG grid (reads the workdir only):

    python -m vision_jax.sample --workdir=DIR --num=64 --out=grid.png
    # Each row walks from one latent to another (spherical interpolation) in --steps images:
    python -m vision_jax.sample --workdir=DIR --num=64 --interpolate --steps=8 --out=walk.png
    vision-jax-sample --workdir=DIR --out=grid.png  # the same, as the installed command

The images of seeds --seed, --seed+1, ... (the latent of each seed is fixed, see methods/dcgan.py):
`--num=64` from seed 0 draws the same grid as the run's own WORKDIR/pictures/samples_step*.png of
that step. Interpolation row r goes from the latent of seed --seed+2r to that of --seed+2r+1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vision_jax import console
from vision_jax.errors import ConfigError, MissingDataError
from vision_jax.pictures import image_grid, write_png


class Generator:
    """The generative method and weights of a run's latest checkpoint."""

    def __init__(self, workdir: str):
        from vision_jax import checkpoint, trainer
        from vision_jax import config as config_lib

        config_path = os.path.join(workdir, "config.json")
        if not os.path.isfile(config_path):
            raise MissingDataError(f"{workdir} holds no run (no config.json); train one first with "
                                   f"python -m vision_jax.train --config=configs/dcgan_digits.py --workdir={workdir}")
        self.config = config_lib.load_config(config_path)
        self.run = trainer.Run(self.config, workdir)
        if "samples" not in self.run.method.output_names:
            raise ConfigError(f"The run in {workdir} trained {self.config.method.name!r}, which makes no samples "
                              f"(its outputs: {', '.join(self.run.method.output_names)}); sample from a generative "
                              f"run such as configs/dcgan_digits.py.")
        checkpointer = checkpoint.Checkpointer(workdir, every_steps=0, keep=1, read_only=True)
        if checkpointer.latest_step() is None:
            raise MissingDataError(f"No checkpoint in {checkpointer.directory}: train first.")
        state = self.run.restore_or_init(checkpointer)
        checkpointer.close()
        self.step = int(state["step"])
        self._weights = (state["params"], state["ema"], state["model_state"])

    def _call(self, method_fn, inputs: jax.Array) -> np.ndarray:
        graphdef = self.run.graphdef

        @jax.jit
        def apply(params, ema, model_state, inputs):
            return method_fn(nnx.merge(graphdef, {**params, **ema}, model_state), inputs)

        return np.asarray(jax.device_get(apply(*self._weights, inputs)))

    def samples(self, seeds: np.ndarray) -> np.ndarray:
        """Images [N, H, W, C] in [-1, 1] of integer seeds."""
        return self._call(self.run.method.samples, jnp.asarray(seeds, jnp.int32))

    def interpolations(self, first_seeds: np.ndarray, last_seeds: np.ndarray, steps: int) -> np.ndarray:
        """Images [rows, steps, H, W, C]: row r from the latent of first_seeds[r] to that of last_seeds[r]."""
        method = self.run.method
        start, end = method.latents(jnp.asarray(first_seeds)), method.latents(jnp.asarray(last_seeds))
        t = jnp.linspace(0.0, 1.0, steps)
        path = jax.vmap(lambda a, b: jax.vmap(lambda s: slerp(a, b, s))(t))(start, end)  # [rows, steps, latent]
        images = self._call(method.generate, path.reshape(-1, path.shape[-1]))
        return images.reshape(len(first_seeds), steps, *images.shape[1:])


def slerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
    """Spherical interpolation (White 2016) from a (t=0) to b (t=1): Gaussian latents keep their norm
    along the way, where a straight line passes through improbable short vectors."""
    cos = jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    return (jnp.sin((1.0 - t) * omega) * a + jnp.sin(t * omega) * b) / jnp.sin(omega)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a generative run's workdir (read only)")
    parser.add_argument("--num", type=int, default=64, help="images (with --interpolate: rows x steps)")
    parser.add_argument("--out", required=True, help="the PNG file to write")
    parser.add_argument("--seed", type=int, default=0, help="the first latent's seed")
    parser.add_argument("--interpolate", action="store_true", help="rows of interpolations between two latents")
    parser.add_argument("--steps", type=int, default=8, help="images per interpolation row, endpoints included")
    args = parser.parse_args(argv)
    if args.num < 1 or args.steps < 2:
        parser.error("--num must be >= 1 and --steps >= 2")

    console.import_tensorflow_quietly()  # before the trainer imports it loudly
    from vision_jax import cli

    with cli.user_errors_as_messages():
        generator = Generator(args.workdir)
        if args.interpolate:
            rows = max(args.num // args.steps, 1)
            firsts = args.seed + 2 * np.arange(rows)
            walks = generator.interpolations(firsts, firsts + 1, args.steps)
            images = walks.reshape(-1, *walks.shape[2:])
            grid = image_grid(images, columns=args.steps)
        else:
            images = generator.samples(np.arange(args.seed, args.seed + args.num))
            grid = image_grid(images, columns=math.ceil(math.sqrt(args.num)))
        write_png(args.out, np.asarray(grid))
    print(f"Wrote {args.out}: {len(images)} images of step {generator.step} of {args.workdir}"
          + (f", {args.steps} per interpolation row" if args.interpolate else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
