"""The one training loop, for every method.

A `Run` builds what a config describes (mesh, data, method, sharded train state, checkpoints);
`train` drives it: jitted step over global batches, logging, periodic evaluation, orbax saves,
and the final results table beside baselines measured in the same run.

The train state is a plain dict of arrays (so orbax, sharding rules and tests see one simple
pytree): step, params (nnx.Param), model_state (everything else the model holds, e.g. BatchNorm
statistics), opt_state and rng (raw key data).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vision_jax import checkpoint, optim, parallel, precision
from vision_jax import config as config_lib
from vision_jax.data import pipeline, pp
from vision_jax.data.sources import build_source
from vision_jax.data.device_augment import DEVICE_AUGMENTATIONS
from vision_jax.data.views import AUGMENTATIONS
from vision_jax.errors import ConfigError, TrainingDiverged
from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation
from vision_jax.evaluators.report import evaluate_all, format_table
from vision_jax.logs import MetricLogger
from vision_jax.methods import METHODS
from vision_jax.models import MODELS, conv
from vision_jax.models.flops import model_flops
from vision_jax.models.pretrained import load_timm_weights

TrainState = dict[str, Any]


def _options(section) -> dict:
    return {k: v for k, v in section.items() if k != "name"}


class Run:
    """Everything a config describes, built once; shared by training and `evaluate`."""

    def __init__(self, config, workdir: str):
        self.config, self.workdir = config, workdir
        self.mesh = parallel.make_mesh(config.mesh)
        parallel.check_batch_size(config.batch_size, self.mesh)
        self.eval_batch_size = _round_up(config.data.eval_batch_size, self.mesh.shape["data"] * jax.process_count())

        data = config.data
        self.train_source = build_source(data.source, data.train_split, data.image_size)
        self.augment = AUGMENTATIONS.build(data.augment.name, _options(data.augment))
        self.device_augment = (DEVICE_AUGMENTATIONS.build(data.device_augment.name, _options(data.device_augment))
                               if data.device_augment.name else None)
        self.batch_transform = pp.parse_batch(data.batch_pp) if data.batch_pp else None
        self.evaluators = {name: EVALUATORS.build(name, options.to_dict())
                           for name, options in config.evaluators.items()}
        for baseline in config.eval_baselines:
            if baseline not in ("random_init", "raw_pixels"):
                raise ConfigError(f"Unknown eval baseline {baseline!r}; use 'random_init' and/or 'raw_pixels'.")

        conv.set_conv_impl(config.conv_impl)  # read when the step is traced
        model_name, model_options = config.model.name, _options(config.model)
        MODELS.get(model_name)  # fail early on an unknown name, before building the method
        dtypes = {"dtype": precision.compute_dtype(config.precision.compute),
                  "param_dtype": precision.param_dtype(config.precision.params)}
        self.make_encoder = lambda rngs: MODELS.build(model_name, model_options, rngs=rngs, **dtypes)
        self.method = METHODS.build(config.method.name, _options(config.method), make_encoder=self.make_encoder,
                                    num_classes=self.train_source.num_classes)
        self.tx = optim.make_optimizer(config.optimizer, config.total_steps)
        self.schedule = optim.learning_rate_schedule(config.optimizer, config.total_steps)

        abstract_model = nnx.eval_shape(lambda: self.method.init_model(nnx.Rngs(0)))
        self.graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
        # Each parameter's logical axis names (models/axes.py), which the sharding rules map onto the mesh.
        self.param_names = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
        self.abstract_state = jax.eval_shape(self._init_state)
        self.state_shardings = parallel.state_shardings(self.abstract_state, self.param_names, self.mesh,
                                                        config.sharding)
        self.signature = checkpoint.model_signature(self.abstract_state["params"], config.model.to_dict())
        self.checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint.every_steps,
                                                    config.checkpoint.keep, config.checkpoint.use_async)

    # --- state -------------------------------------------------------------------------------

    def _init_state(self) -> TrainState:
        key = jax.random.key(self.config.seed)
        # 'dropout' feeds stochastic layers (ViT drop path); their RNG state lives in model_state.
        model = self.method.init_model(nnx.Rngs(params=jax.random.fold_in(key, 0), dropout=jax.random.fold_in(key, 2)))
        _, params, model_state = nnx.split(model, nnx.Param, ...)
        params, model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
                "opt_state": self.tx.init(params), "rng": jax.random.key_data(jax.random.fold_in(key, 1))}

    def init_state(self, pretrained: bool = True) -> TrainState:
        """A fresh state, created directly with its target shardings (never whole on one device);
        with `config.pretrained` (and `pretrained`), the encoder starts from those weights."""
        state = jax.jit(self._init_state, out_shardings=self.state_shardings)()
        if pretrained and self.config.pretrained:
            state = self._with_pretrained_encoder(state)
        return state

    def _with_pretrained_encoder(self, state: TrainState) -> TrainState:
        encoder = nnx.eval_shape(lambda: self.make_encoder(nnx.Rngs(0)))
        load_timm_weights(self.config.pretrained, encoder)  # fills every variable in place
        _, params, model_state = nnx.split(encoder, nnx.Param, ...)
        loaded = {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(model_state)}
        for part, weights in loaded.items():
            fresh = state[part]["encoder"]
            if jax.tree.structure(fresh) != jax.tree.structure(weights):
                raise ConfigError(f"The weights in {self.config.pretrained} do not fill this encoder's {part}.")
            # Variables the file does not hold (a ViT's dropout RNG state) stay abstract: keep the fresh ones.
            state[part]["encoder"] = jax.tree.map(
                lambda new, old: old if isinstance(new, jax.ShapeDtypeStruct)
                else jax.device_put(jnp.asarray(new, old.dtype), old.sharding), weights, fresh)
        return state

    def restore_or_init(self) -> TrainState:
        step = self.checkpointer.latest_step()
        if step is None:
            return self.init_state()
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              self.abstract_state, self.state_shardings)
        return self.checkpointer.restore(step, target, self.signature)

    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.abstract_state["params"]))

    def encoder_flops(self) -> float:
        """Forward FLOPs of the encoder for one image at the training resolution (XLA cost analysis)."""
        encoder = nnx.eval_shape(lambda: self.make_encoder(nnx.Rngs(0)))
        size = self.config.data.image_size
        return model_flops(encoder, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32), train=False)

    # --- the step ----------------------------------------------------------------------------

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if self.device_augment is not None:
            # A pure function of (seed, step), like the host pipeline's randomness: resume-exact.
            batch = self.device_augment(batch, jax.random.fold_in(rng, 1))

        def loss_fn(params):
            model = nnx.merge(self.graphdef, params, state["model_state"])
            loss, metrics = self.method.loss(model, batch, rng)
            _, _, model_state = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, nnx.to_pure_dict(model_state))

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        grad_norm = optax.global_norm(grads)
        metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": self.schedule(state["step"]),
                   "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "model_state": model_state, "opt_state": opt_state, "rng": state["rng"]}
        return new_state, metrics

    def compile_step(self):
        return jax.jit(self.train_step, in_shardings=(self.state_shardings, parallel.batch_sharding(self.mesh)),
                       out_shardings=(self.state_shardings, parallel.replicated(self.mesh)), donate_argnums=0)

    # --- evaluation --------------------------------------------------------------------------

    @functools.cached_property
    def eval_sources(self) -> dict:
        """The evaluation splits, built on first use (loading them costs time)."""
        data = self.config.data
        return {"train": build_source(data.source, data.eval_train_split, data.image_size),
                "test": build_source(data.source, data.eval_test_split, data.image_size)}

    @functools.cached_property
    def _apply_fns(self):
        # Parameters are arguments, not closed-over constants: one compilation serves every
        # evaluation, and the weights are never baked into the program.
        def features(params, model_state, images):
            return self.method.features(nnx.merge(self.graphdef, params, model_state), images)

        def logits(params, model_state, images):
            return self.method.predict(nnx.merge(self.graphdef, params, model_state), images)

        return jax.jit(features), jax.jit(logits) if hasattr(self.method, "predict") else None

    def representation(self, name: str, state: TrainState) -> Representation:
        features_fn, logits_fn = self._apply_fns
        weights = (state["params"], state["model_state"])
        return Representation(name, lambda images: features_fn(*weights, images),
                              None if logits_fn is None else lambda images: logits_fn(*weights, images))

    def evaluate(self, state: TrainState, with_baselines: bool) -> dict[str, dict[str, float]]:
        representations = [self.representation(self.config.method.name, state)]
        if with_baselines and "random_init" in self.config.eval_baselines:
            representations.append(self.representation("random_init", self.init_state(pretrained=False)))
        if with_baselines and "raw_pixels" in self.config.eval_baselines:
            representations.append(Representation("raw_pixels", jax.jit(lambda x: x.reshape(x.shape[0], -1))))
        # A fresh EvalData per call: its feature cache must never outlive the state it was computed from.
        eval_augment = self.config.data.eval_augment
        preprocess = AUGMENTATIONS.build(eval_augment.name, _options(eval_augment))
        data = EvalData(self.eval_sources, preprocess, self.mesh, self.eval_batch_size)
        return evaluate_all(self.evaluators, representations, data)

    def results_caption(self, step: int) -> str:
        c, fit, scored = self.config, self.eval_sources["train"], self.eval_sources["test"]
        return (f"Results at step {step}/{c.total_steps} (seed {c.seed}, global batch {c.batch_size}): "
                f"{c.method.name} pretrained on {self.train_source.description}; probes fit on "
                f"{fit.description} ({fit.num_examples} examples), "
                f"scored on held-out {scored.description} ({scored.num_examples}). "
                f"Accuracy in %.")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returned a list
    return float((cost or {}).get("flops", 0.0))


def _check_finite(pending: list[tuple[int, dict]], last_saved: int | None, workdir: str) -> list[dict]:
    """Fetches the pending steps' metrics; raises if any step produced a non-finite loss."""
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), metrics in zip(pending, fetched):
        if not metrics["finite"]:
            where = f"step {last_saved} in {workdir}/checkpoints" if last_saved else "none was saved"
            raise TrainingDiverged(
                f"Loss or gradient became non-finite at step {step} (loss={metrics['loss']}, "
                f"grad_norm={metrics['grad_norm']}). Nothing was saved after it; last good checkpoint: "
                f"{where}. Lower the learning rate, add warmup or gradient clipping, then rerun.")
    return fetched


def train(config, workdir: str) -> dict[str, dict[str, float]]:
    """Trains (resuming from the latest checkpoint in `workdir` if any) and returns the final results."""
    os.makedirs(workdir, exist_ok=True)
    run = Run(config, workdir)
    logger = MetricLogger(workdir, config.total_steps)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))

    state = run.restore_or_init()
    start = int(state["step"])
    logger.forget_after(start)
    logger.info(f"{config.method.name} / {config.model.name}: {run.num_params():,} parameters; "
                f"mesh {dict(run.mesh.shape)}; global batch {config.batch_size}; "
                f"train data {run.train_source.description} ({run.train_source.num_examples} examples)"
                + (f"; resuming from step {start}" if start else ""))

    batches = pipeline.train_batches(run.train_source, run.augment, global_batch=config.batch_size,
                                     seed=config.seed, start_step=start, process_index=jax.process_index(),
                                     process_count=jax.process_count(), prefetch=config.data.prefetch,
                                     batch_transform=run.batch_transform)
    batches = parallel.prefetch_to_device(batches, parallel.batch_sharding(run.mesh))
    first_batch = next(batches)
    step_fn = run.compile_step().lower(state, first_batch).compile()
    step_flops = _flops(step_fn)  # per device: the compiled program is the partitioned one
    size = config.data.image_size  # 0: images keep their own sizes, so no single forward cost
    encoder_cost = f"encoder forward {run.encoder_flops() / 1e9:.3g} GFLOPs per image at {size}px; " if size else ""
    logger.info(f"{encoder_cost}train step {step_flops / 1e12:.3g} TFLOPs per device")
    batches = itertools.chain([first_batch], batches)
    pending: list[tuple[int, dict]] = []  # dispatched steps whose metrics are not fetched yet
    since_log: list[dict] = []  # fetched metrics of the steps since the last log line
    last_saved = run.checkpointer.latest_step()
    timer_step, timer_start = start, time.perf_counter()
    try:
        for step in range(start, config.total_steps):
            state, metrics = step_fn(state, next(batches))
            done = step + 1
            pending.append((done, metrics))
            is_last = done == config.total_steps
            log_now = done % config.log_every == 0 or is_last
            save_now = run.checkpointer.should_save(done) or is_last
            eval_now = config.eval_every > 0 and done % config.eval_every == 0 and not is_last
            if not (log_now or save_now or eval_now):
                continue
            since_log += _check_finite(pending, last_saved, workdir)
            pending = []
            if log_now:
                seconds_per_step = (time.perf_counter() - timer_start) / (done - timer_step)
                summary = {f"train/{k}": float(np.mean([m[k] for m in since_log]))
                           for k in since_log[-1] if k != "finite"}
                since_log = []
                summary["train/images_per_s"] = config.batch_size / seconds_per_step
                summary["train/tflops_per_s_per_device"] = step_flops / seconds_per_step / 1e12
                logger.write(done, summary)
                logger.progress(done, summary["train/loss"], summary["train/images_per_s"], seconds_per_step)
                timer_step, timer_start = done, time.perf_counter()
            if save_now:
                run.checkpointer.save(done, state, run.signature, force=is_last)
                last_saved = done
            if eval_now and run.evaluators:
                results = run.evaluate(state, with_baselines=False)[config.method.name]
                logger.write(done, {f"eval/{k}": v for k, v in results.items()})
                logger.info(f"step {done} eval: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
                timer_step, timer_start = done, time.perf_counter()
    finally:
        run.checkpointer.wait()

    results = {}
    if run.evaluators:
        results = run.evaluate(state, with_baselines=True)
        logger.write(config.total_steps,
                     {f"final/{rep}/{k}": v for rep, row in results.items() for k, v in row.items()})
        logger.info("\n" + format_table(results, run.results_caption(config.total_steps)))
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
    run.checkpointer.close()
    return results
