"""DCGAN (Radford et al. 2016): a generator and a discriminator trained against each other.

Follows the PyTorch DCGAN example (github.com/pytorch/examples, dcgan/main.py): each step updates
D on a real batch and a fake batch (two BatchNorm batches), then G through the UPDATED D, reusing
the fakes of D's step (G runs forward once). Each network has its own Adam (the recipes: lr 2e-4,
betas (0.5, 0.999), `config.optimizer.betas`), built from `config.optimizer` (its schedule and
parameter groups, whose patterns see paths such as 'generator/convs/0/kernel').

- `config.model` is the discriminator (`dcgan_discriminator`: the network that reads images, whose
  FLOPs the trainer reports); `config.method.generator` holds the generator's own options
  (latent_dim, base_width); its image size and channels are the discriminator's.
- `loss`: 'non_saturating' (the example's BCE; G maximizes log D(G(z))) or 'hinge' (Lim & Ye 2017,
  as SN-GAN and BigGAN use it).
- `label_smoothing`: one-sided (Salimans et al. 2016): real targets 1 - s, fake targets stay 0.
- `n_disc`: D updates per G update; the global batch holds n_disc real batches (rows i, i+n, ...
  form D step i's batch, so each device keeps its share), and every update (D's and G's) uses
  batch_size / n_disc images.
- Logged: d_loss, g_loss, d_real (mean D(x), a probability), d_fake (mean D(G(z)) before D's
  update) and d_fake_after (after it), and the samples' diversity: the mean pairwise L2 distance
  of the fakes over the real batch's (`diversity_ratio`: about 1 when the samples are as varied as
  the data, 0 when they collapse to one image); `training_warnings` turns a collapse or a
  discriminator that wins outright into a warning.
- Evaluation output 'samples': images from integer seeds (the latent of seed s is
  N(0, 1) drawn from key fold_in(key(0), s)), what the FID evaluator and `vision_jax.sample`
  read; `pictures` draws the grid of seeds 0..63 (fixed noise).
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vision_jax import optim, parallel
from vision_jax.errors import ConfigError
from vision_jax.methods import METHODS
from vision_jax.methods.base import Method, MethodSetup, Metrics
from vision_jax.models.dcgan import DEFAULT_LATENT_DIM, Discriminator, Generator
from vision_jax.pictures import image_grid

LOSSES = ("non_saturating", "hinge")
NETWORKS = ("discriminator", "generator")  # the order each step updates them in


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, loss: str = "non_saturating",
                       label_smoothing: float = 0.0) -> jax.Array:
    """D's loss on a real and a fake batch of logits: the sum of the two batch means."""
    if loss == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    real_target = jnp.full_like(real_logits, 1.0 - label_smoothing)
    return (optax.sigmoid_binary_cross_entropy(real_logits, real_target).mean()
            + optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits)).mean())


def generator_loss(fake_logits: jax.Array, loss: str = "non_saturating") -> jax.Array:
    """G's loss on D's logits of its fakes: -log D(G(z)) (non-saturating) or -D(G(z)) (hinge)."""
    if loss == "hinge":
        return -jnp.mean(fake_logits)
    return optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)).mean()


def mean_pairwise_distance(images: jax.Array) -> jax.Array:
    """Mean L2 distance between the distinct pairs of a batch of images (flattened)."""
    x = images.reshape(images.shape[0], -1).astype(jnp.float32)
    squared = jnp.sum(x * x, axis=1)
    distances = jnp.sqrt(jnp.maximum(squared[:, None] + squared[None, :] - 2.0 * x @ x.T, 0.0))
    n = x.shape[0]
    return jnp.sum(distances * (1.0 - jnp.eye(n))) / (n * (n - 1))


def per_network(optimizers: dict[str, optim.Optimizer]) -> optax.GradientTransformation:
    """One optimizer state for several networks, each stepped by its own optimizer: `update` steps
    the networks whose gradients it is given (a dict by network name) and keeps the others' state
    (Adam's moments and step count) as it was."""

    def init(params):
        return {name: opt.tx.init({name: params[name]}) for name, opt in optimizers.items()}

    def update(grads, state, params=None):
        updates, state = {}, dict(state)
        for name, network_grads in grads.items():
            network_updates, state[name] = optimizers[name].tx.update(
                {name: network_grads}, state[name], None if params is None else {name: params[name]})
            updates[name] = network_updates[name]
        return updates, state

    return optax.GradientTransformation(init, update)


class DCGANModel(nnx.Module):
    def __init__(self, discriminator: Discriminator, generator: Generator):
        self.discriminator = discriminator
        self.generator = generator


@METHODS.register("dcgan")
class DCGAN(Method):
    output_names = ("samples",)
    grid_size = 64  # the pictures' sample grid: 8 x 8, the PyTorch example's batch of fixed noise

    def __init__(self, setup: MethodSetup, generator: dict | None = None, loss: str = "non_saturating",
                 n_disc: int = 1, label_smoothing: float = 0.0):
        super().__init__(setup)
        if setup.model_name != "dcgan_discriminator":
            raise ConfigError(f"Method 'dcgan' trains config.model as its discriminator, which must be "
                              f"'dcgan_discriminator', not {setup.model_name!r}: set "
                              f"--config.model.name=dcgan_discriminator.")
        if self.online_probe:
            raise ConfigError("A GAN has no features for an online probe: set config.online_probe.enabled=False.")
        if loss not in LOSSES:
            raise ConfigError(f"method.loss={loss!r}: use one of {', '.join(map(repr, LOSSES))}.")
        if n_disc < 1:
            raise ConfigError(f"method.n_disc={n_disc} must be >= 1 (discriminator updates per generator update).")
        if not 0.0 <= label_smoothing < 1.0 or (loss == "hinge" and label_smoothing):
            raise ConfigError(f"method.label_smoothing={label_smoothing} must be in [0, 1), and 0 with the hinge "
                              f"loss (it has no targets to smooth).")
        self.generator_options = dict(generator or {})
        for fixed in ("image_size", "channels"):
            if fixed in self.generator_options:
                raise ConfigError(f"method.generator.{fixed} is the discriminator's (config.model.{fixed}); "
                                  f"remove it from method.generator.")
        self.latent_dim = int(self.generator_options.get("latent_dim", DEFAULT_LATENT_DIM))
        self.loss_name, self.n_disc, self.label_smoothing = loss, n_disc, label_smoothing

    # --- what is learned --------------------------------------------------------------------

    def build_model(self, rngs: nnx.Rngs) -> DCGANModel:
        discriminator = self.make_encoder(rngs)
        options = {**self.generator_options, "image_size": discriminator.image_size,
                   "channels": discriminator.channels}
        return DCGANModel(discriminator, self.setup.make_model("dcgan_generator", options, rngs))

    def validate_batch(self, batch_shapes: dict[str, tuple[int, ...]]) -> None:
        generator = nnx.eval_shape(lambda: self.build_model(nnx.Rngs(0))).generator
        made = (generator.image_size, generator.image_size, generator.channels)
        data = batch_shapes["image"][1:]
        if tuple(data) != made:
            raise ConfigError(f"The generator makes {made[0]}x{made[1]}x{made[2]} images but the data are "
                              f"{data[0]}x{data[1]}x{data[2]}: set --config.model.image_size={data[0]} (the "
                              f"generator takes the discriminator's size) or --config.data.image_size={made[0]}.")
        if batch_shapes["image"][0] % self.n_disc:
            raise ConfigError(f"config.batch_size={batch_shapes['image'][0]} must be a multiple of "
                              f"method.n_disc={self.n_disc} (one real batch per discriminator update).")

    # --- how it is optimized ----------------------------------------------------------------

    def make_optimizer(self, opt_config, abstract_params: Any) -> optim.Optimizer:
        groups = optim.groups_from_config(opt_config.groups)
        if groups:
            optim.assign_groups(abstract_params, groups)  # every pattern must select a parameter of some network
        optimizers = {}
        for name in NETWORKS:
            network = {name: abstract_params[name]}
            paths = [optim.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(network)]
            own = [g for g in groups if any(re.search(g.pattern, p) for p in paths)]
            optimizers[name] = optim.make_optimizer(opt_config, self.length.total_steps, own, network)
        first = optimizers[NETWORKS[0]]
        return optim.Optimizer(per_network(optimizers), first.learning_rate, first.weight_decay)

    def update(self, graphdef: nnx.GraphDef, optimizer: optim.Optimizer, state: dict, batch: dict,
               rng: jax.Array, grad_accum_steps: int = 1) -> tuple[dict, Metrics]:
        if grad_accum_steps != 1:
            raise ConfigError("dcgan updates D and then G on each batch; gradient accumulation would mix the two: "
                              "set config.grad_accum_steps=1 (and method.n_disc for more D updates per G update).")
        params, model_state, opt_state = state["params"], state["model_state"], state["opt_state"]

        def model_with(params, model_state) -> DCGANModel:
            return nnx.merge(graphdef, params, model_state)

        def rest_of(model) -> dict:
            return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])

        def generate(g_params, model_state, z):
            model = model_with({**params, "generator": g_params}, model_state)
            return model.generator(z, train=True), rest_of(model)

        def d_objective(d_params, model_state, real, fake):
            model = model_with({**params, "discriminator": d_params}, model_state)
            real_logits = model.discriminator(real, train=True)
            fake_logits = model.discriminator(fake, train=True)
            loss = discriminator_loss(real_logits, fake_logits, self.loss_name, self.label_smoothing)
            return loss, (real_logits, fake_logits, rest_of(model))

        def g_objective(fake, model_state):  # through the discriminator as it is after its update
            model = model_with(params, model_state)
            fake_logits = model.discriminator(fake, train=True)
            return generator_loss(fake_logits, self.loss_name), (fake_logits, rest_of(model))

        images = batch["image"]
        per_update = images.shape[0] // self.n_disc
        reals = images.reshape(per_update, self.n_disc, *images.shape[1:])
        d_history = []
        for k in range(self.n_disc):
            z = parallel.split_like_batch(jax.random.normal(jax.random.fold_in(rng, k), (per_update, self.latent_dim)))
            if k < self.n_disc - 1:
                fake, model_state = generate(params["generator"], model_state, z)
            else:  # the last fakes also train G: keep the way back into it
                fake, g_vjp, model_state = jax.vjp(lambda g: generate(g, model_state, z), params["generator"],
                                                   has_aux=True)
            (d_loss, (real_logits, fake_logits, model_state)), d_grads = jax.value_and_grad(
                d_objective, has_aux=True)(params["discriminator"], model_state, reals[:, k],
                                           jax.lax.stop_gradient(fake))
            d_updates, opt_state = optimizer.tx.update({"discriminator": d_grads}, opt_state, params)
            d_params = optax.apply_updates(params["discriminator"], d_updates["discriminator"])
            params = {**params, "discriminator": d_params}
            d_history.append((d_loss, real_logits, fake_logits, d_grads))

        (g_loss, (fake_logits_after, model_state)), fake_grads = jax.value_and_grad(
            g_objective, has_aux=True)(fake, model_state)
        (g_grads,) = g_vjp(fake_grads)
        g_updates, opt_state = optimizer.tx.update({"generator": g_grads}, opt_state, params)
        params = {**params, "generator": optax.apply_updates(params["generator"], g_updates["generator"])}

        d_loss, real_logits, fake_logits, d_grads = d_history[-1]
        metrics = {
            "d_loss": jnp.mean(jnp.stack([h[0] for h in d_history])), "g_loss": g_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real_logits)), "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),
            "d_fake_after": jnp.mean(jax.nn.sigmoid(fake_logits_after)),
            "sample_diversity": mean_pairwise_distance(fake),
            "diversity_ratio": mean_pairwise_distance(fake) / mean_pairwise_distance(reals[:, -1]),
            "d_grad_norm": optax.global_norm(d_grads), "g_grad_norm": optax.global_norm(g_grads),
            "learning_rate": optimizer.learning_rate(state["step"]),
        }
        metrics["loss"] = metrics["d_loss"] + g_loss  # what the console shows: both players' losses
        metrics["grad_norm"] = jnp.sqrt(metrics["d_grad_norm"] ** 2 + metrics["g_grad_norm"] ** 2)
        metrics["param_norm"] = optax.global_norm(params)
        metrics["finite"] = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
                             & jnp.isfinite(metrics["param_norm"]))
        new_state = {**state, "step": state["step"] + 1, "params": params, "model_state": model_state,
                     "opt_state": opt_state}
        return new_state, metrics

    # --- what evaluation sees ---------------------------------------------------------------

    def latents(self, seeds: jax.Array) -> jax.Array:
        """The generator's input for each integer seed: N(0, 1) of latent_dim from fold_in(key(0), seed)."""
        return jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(jax.random.key(0), s),
                                                    (self.latent_dim,)))(seeds)

    def generate(self, model: DCGANModel, latents: jax.Array) -> jax.Array:
        """Images in [-1, 1] from latents, the generator in inference mode (BatchNorm's running statistics)."""
        return model.generator(latents, train=False)

    def samples(self, model: DCGANModel, seeds: jax.Array) -> jax.Array:
        return self.generate(model, self.latents(seeds))

    def pictures(self, model: DCGANModel, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        """The samples of seeds 0..63 (fixed noise, so grids show training progress; the same
        images as `python -m vision_jax.sample --num=64` from the same checkpoint). The held-out
        `images` and `rng` are unused."""
        del images, rng
        return {"samples": image_grid(self.samples(model, jnp.arange(self.grid_size)), columns=8)}

    def training_warnings(self, step: int, summary: dict[str, float]) -> dict[str, str]:
        warnings = {}
        ratio = summary.get("train/diversity_ratio")
        # Generators start out near one constant image and take a few hundred steps to vary (digits:
        # diversity ratio 0.18 at step 200, 0.53 at step 400): judge once training is well under way.
        under_way = step >= max(500, self.length.total_steps // 5)
        if ratio is not None and under_way and ratio < 0.2:
            warnings["collapse"] = (
                f"the samples are collapsing: their mean pairwise distance is {ratio:.2f} of the real batch's "
                f"(train/diversity_ratio; about 1 when as varied as the data). See the sample grid; try "
                f"--config.method.label_smoothing=0.1, a lower learning rate, or restart from an earlier checkpoint.")
        d_real, d_fake = summary.get("train/d_real"), summary.get("train/d_fake")
        if d_real is not None and d_real > 0.99 and d_fake < 0.01:
            warnings["discriminator_wins"] = (
                f"the discriminator separates real from generated images almost perfectly (D(x) {d_real:.3f}, "
                f"D(G(z)) {d_fake:.3f}): the generator's gradients vanish and training may have diverged. "
                f"Try --config.method.label_smoothing=0.1 or a lower learning rate.")
        return warnings
