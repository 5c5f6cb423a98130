"""The interface every method implements; the trainer and evaluators rely on nothing else.

A method says what is learned, never how it is looped, placed or saved:

- `build_model(rngs)`: one NNX module holding every trained part, with an `encoder` attribute
  (methods without a 'features' output, a GAN, may name their parts otherwise).
- `followers`: {attribute: the attribute it follows}. A follower is a network that tracks another
  by an exponential moving average instead of learning by gradient: BYOL's target, MoCo's
  momentum encoder, DINO's teacher. `init_model` adds each as a copy of the module it follows
  (with dropout and drop path off, as the references build their teachers); the train state keeps
  its weights apart from the trained ones (`state['ema']`, sharded by the same logical-axis rules,
  outside the optimizer), and after each optimizer step the update sets
  `follower <- m * follower + (1 - m) * online` with m = `ema_momentum(step)`. A follower runs in
  the forward pass like any submodule (`model.teacher_encoder(x, train=True)`); its BatchNorm
  statistics are its own.
- `param_groups()`: the method's own parameter groups (optim.ParamGroup), e.g. DINO's last layer
  frozen in its first epoch; config groups come first, then those of `optimizer.layer_decay`
  (layer_decay.py).
- `loss(model, batch, step)`: a LossOutput for one global batch. `step.step` is the step index,
  so schedules (momentum, temperature) are functions of it; `self.length` says how long the run is.
  Non-gradient state the step changes (BatchNorm statistics, DINO's center) lives in the model as
  non-Param variables and is updated in place inside the loss.
- `update(...)`: the whole update of one step. The default (methods/gradient_step.py) is a
  gradient step with optional accumulation, then the EMA of the followers; a method that needs
  several models and optimizers (a GAN, methods/dcgan.py) overrides it and `make_optimizer`, and
  then needs no `loss`.
- Outputs for evaluation, by name (`output_names`): 'features' (what kNN and linear probes see),
  'logits' (methods with a classifier, via `predict`), 'samples' (generative methods: images from
  integer seeds, what FID reads). Evaluators ask for the output they need.
- `pictures(model, images, rng)`: images worth looking at, {name: [H, W, C] picture}, drawn from
  the first `config.num_pictures` held-out `images` (MAE's reconstructions) or from `rng` alone
  (a GAN's sample grid); float pictures are in the images' value range, uint8 ones are final. The
  trainer writes them as PNGs and TensorBoard images at each evaluation, every
  `config.pictures_every` steps and at the end; `rng` is the same key at every call.
- `training_warnings(step, summary)`: the method's own reading of its logged metrics (a GAN's
  collapse); the trainer prints each kind of warning once.

With `online_probe`, every method also trains a linear classifier on the stop-gradient features
its loss reports (`LossOutput.probe_features`), in the same step, with its own learning rate and
no weight decay; its held-out accuracy is its own row of the results table.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vision_jax import optim, schedules
from vision_jax.errors import ConfigError
from vision_jax.layer_decay import layer_decay_groups
from vision_jax.models import MODELS
from vision_jax.models.heads import LinearClassifier, l2_normalize

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class OnlineProbe:
    """A linear classifier trained on stop-gradient features during pretraining (solo-learn's)."""

    enabled: bool = False
    lr: float = 0.1  # its own peak learning rate, on the main schedule's shape; no weight decay


@dataclasses.dataclass(frozen=True)
class MethodSetup:
    """What the framework tells a method when building it."""

    make_encoder: Callable[[nnx.Rngs], nnx.Module]
    num_classes: int
    length: schedules.RunLength
    model_name: str = ""  # the encoder's registry name, for methods whose options need a kind of encoder
    online_probe: OnlineProbe = OnlineProbe()
    optimizer_lr: float = 1.0  # the main optimizer's peak learning rate (the probe's lr is relative to it)
    # Builds any registered model (name, options, rngs) in the run's precision: a method's other networks.
    make_model: Callable[[str, dict, nnx.Rngs], nnx.Module] = lambda name, options, rngs: MODELS.build(
        name, options, rngs=rngs)


class StepInfo(NamedTuple):
    step: jax.Array  # int32 index of this step, from 0
    rng: jax.Array  # a key for this step's randomness (per microbatch under accumulation)


class LossOutput(NamedTuple):
    loss: jax.Array
    metrics: Metrics
    # Pooled encoder features of the examples of batch['label'] (one view), for the online probe.
    probe_features: jax.Array | None = None


class Method(abc.ABC):
    followers: dict[str, str] = {}
    output_names: tuple[str, ...] = ("features",)

    def __init__(self, setup: MethodSetup):
        self.setup = setup
        self.make_encoder = setup.make_encoder
        self.num_classes = setup.num_classes
        self.length = setup.length
        self.online_probe = setup.online_probe.enabled

    # --- what is learned --------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The module with every trained part (must have an `encoder` attribute)."""

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        model = self.build_model(rngs)
        for follower, online in self.followers.items():
            setattr(model, follower, without_dropout(nnx.clone(getattr(model, online))))
        if self.online_probe:
            model.online_probe = LinearClassifier(model.encoder.num_features, self.num_classes, rngs=rngs)
        return model

    def ema_momentum(self, step: jax.Array) -> jax.Array:
        """The followers' EMA momentum at `step`: a cosine from `self.base_momentum` (set by methods
        with followers) to 1, as BYOL, MoCo v3 and DINO schedule it."""
        return schedules.cosine(self.base_momentum, 1.0, self.length.total_steps)(step)

    def param_groups(self) -> list[optim.ParamGroup]:
        groups = []
        if self.online_probe:
            groups.append(optim.ParamGroup("online_probe", r"^online_probe/",
                                           lr_scale=self.setup.online_probe.lr / self.setup.optimizer_lr,
                                           wd_scale=0.0))
        return groups

    def loss(self, model: nnx.Module, batch: dict[str, Any], step: StepInfo) -> LossOutput:
        """The loss of one global batch, in training mode; metrics are logged (averaged between log lines).
        Every method that keeps the default `update` defines it."""
        raise NotImplementedError(f"{type(self).__name__} defines neither a loss nor its own update.")

    def objective(self, model: nnx.Module, batch: dict[str, Any], step: StepInfo) -> tuple[jax.Array, Metrics]:
        """What the gradient step minimizes: the method's loss, plus the online probe's if enabled.
        The metric 'loss' is the method's own loss."""
        out = self.loss(model, batch, step)
        metrics = {**out.metrics, "loss": out.loss}
        total = out.loss
        if self.online_probe:
            if out.probe_features is None:
                raise ConfigError(f"Method {type(self).__name__} reports no features for an online probe; "
                                  f"set config.online_probe.enabled=False.")
            logits = model.online_probe(jax.lax.stop_gradient(out.probe_features))
            probe_loss, probe_accuracy = classification_loss(logits, batch["label"])
            total = total + probe_loss
            metrics.update({"online_probe/loss": probe_loss, "online_probe/train_accuracy": probe_accuracy})
        return total, metrics

    # --- how it is optimized ----------------------------------------------------------------

    def make_optimizer(self, opt_config, abstract_params: Any) -> optim.Optimizer:
        groups = (optim.groups_from_config(opt_config.groups)
                  + layer_decay_groups(opt_config.layer_decay, self.make_encoder) + self.param_groups())
        return optim.make_optimizer(opt_config, self.length.total_steps, groups, abstract_params)

    def update(self, graphdef: nnx.GraphDef, optimizer: optim.Optimizer, state: dict, batch: dict,
               rng: jax.Array, grad_accum_steps: int = 1) -> tuple[dict, Metrics]:
        """One training step on the train state (a dict; see trainer.py); returns it and metrics.
        Metrics must include 'loss' and 'finite' (False stops the run)."""
        from vision_jax.methods.gradient_step import gradient_update  # it builds on this module's types

        return gradient_update(self, graphdef, optimizer, state, batch, rng, grad_accum_steps)

    # --- what evaluation sees ---------------------------------------------------------------

    def features(self, model: nnx.Module, images: jax.Array) -> jax.Array:
        """Frozen representation: the encoder's pooled features in inference mode."""
        return model.encoder(images, train=False)

    def predict(self, model: nnx.Module, images: jax.Array) -> jax.Array:
        """Class logits in inference mode; methods that list 'logits' in `output_names` define it."""
        raise NotImplementedError(f"{type(self).__name__} has no classifier (outputs: {self.output_names}).")

    def samples(self, model: nnx.Module, seeds: jax.Array) -> jax.Array:
        """Generated images [B, H, W, C] in [-1, 1], one per integer seed [B] (the same seed, the same
        image); generative methods that list 'samples' in `output_names` define it."""
        raise NotImplementedError(f"{type(self).__name__} generates nothing (outputs: {self.output_names}).")

    def outputs(self) -> dict[str, Callable[[nnx.Module, jax.Array], jax.Array]]:
        """The named outputs evaluators can ask for."""
        known = {"features": self.features, "logits": self.predict, "samples": self.samples}
        return {name: known[name] for name in self.output_names}

    def online_probe_outputs(self) -> dict[str, Callable[[nnx.Module, jax.Array], jax.Array]]:
        """The online probe as a classifier of its own (an empty dict without one)."""
        if not self.online_probe:
            return {}
        # The probe learned on the online encoder's features (a teacher's may differ).
        return {"logits": lambda model, images: model.online_probe(model.encoder(images, train=False))}

    def pictures(self, model: nnx.Module, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        """Pictures to write, {name: [H, W, C]} (see the module docstring); none by default."""
        return {}

    def training_warnings(self, step: int, summary: dict[str, float]) -> dict[str, str]:
        """{kind: message} about the run's health, from one log line's averaged metrics ('train/...')."""
        return {}

    def validate_batch(self, batch_shapes: dict[str, tuple[int, ...]]) -> None:
        """Raises a ConfigError if this method cannot train on batches of these shapes (e.g. crops
        its encoder cannot take); called once before compiling, so a mismatch is a message, not a trace."""


def without_dropout(module: nnx.Module) -> nnx.Module:
    """Turns off every Dropout (and so drop path) in `module`, in place: followers are built
    without stochastic depth in the references (DINO's teacher)."""
    for _, sub in nnx.iter_modules(module):
        if isinstance(sub, nnx.Dropout):
            sub.rate = 0.0
    return module


def classification_loss(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy for integer labels [B] or soft labels [B, C] (mixup, cutmix)."""
    logits = logits.astype(jnp.float32)
    if labels.ndim == 1:
        targets = jax.nn.one_hot(labels, logits.shape[-1])
        hard = labels
    else:
        targets, hard = labels.astype(jnp.float32), jnp.argmax(labels, -1)
    targets = optax.smooth_labels(targets, smoothing) if smoothing else targets
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == hard)


def embedding_spread(embeddings: jax.Array) -> Metrics:
    """Collapse monitor: the std over the batch of l2-normalized embeddings, averaged over dims.

    About 1/sqrt(d) when the embeddings are spread (Chen & He 2021, SimSiam Fig. 2), 0 when they
    collapse to one point. 'embedding_std_ratio' is std * sqrt(d): about 1 healthy, 0 collapsed."""
    z = l2_normalize(jax.lax.stop_gradient(embeddings))
    std = jnp.mean(jnp.std(z, axis=0))
    return {"embedding_std": std, "embedding_std_ratio": std * jnp.sqrt(z.shape[-1])}
