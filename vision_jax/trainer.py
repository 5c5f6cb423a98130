"""The one training loop, for every method.

A `Run` builds what a config describes (mesh, data, method, sharded train state); `train` drives
it: jitted step over global batches, logging, periodic evaluation, orbax saves, and the final
results table beside baselines measured in the same run. Around the loop, `train` holds the
workdir's lock and checks a resumed config (workdir.py), and stops cleanly on a signal
(preemption.py).

The train state is a plain dict of arrays (so orbax, sharding rules and tests see one simple
pytree): step; params (the nnx.Params the optimizer trains); ema (the params of the method's
followers, e.g. an EMA teacher, which follow instead of learning; {} for most methods);
model_state (everything else the model holds, e.g. BatchNorm statistics); opt_state; and rng
(raw key data).
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
from flax import nnx

from vision_jax import checkpoint, init_from, parallel, precision, preemption, schedules
from vision_jax import workdir as workdir_lib
from vision_jax.data import pipeline, pp, show_views
from vision_jax.data.ops import model_range_to_uint8
from vision_jax.data.sources import Source, build_source, class_balanced_subset
from vision_jax.data.device_augment import DEVICE_AUGMENTATIONS
from vision_jax.data.views import AUGMENTATIONS
from vision_jax.errors import CheckpointError, ConfigError, Preempted, TrainingDiverged
from vision_jax.evaluators import EVALUATORS
from vision_jax.evaluators.features import EvalData, Representation
from vision_jax.evaluators.report import evaluate_all, format_table
from vision_jax.evaluators.retrieval import retrieval_picture
from vision_jax.logs import CollapseMonitor, MetricLogger
from vision_jax.methods import METHODS
from vision_jax.methods.base import Method, MethodSetup, OnlineProbe
from vision_jax.models import MODELS, conv
from vision_jax.models.flops import model_flops
from vision_jax.registry import options_of

TrainState = dict[str, Any]


class Run:
    """Everything a config describes, built once; shared by training and `evaluate`."""

    def __init__(self, config, workdir: str):
        self.config, self.workdir = config, workdir
        self.mesh = parallel.make_mesh(config.mesh)
        parallel.check_batch_size(config.batch_size, self.mesh)
        self.eval_batch_size = _round_up(config.data.eval_batch_size, self.mesh.shape["data"] * jax.process_count())

        data = config.data
        self.train_source = self._labeled(build_source(data.source, data.train_split, data.image_size))
        self.augment = AUGMENTATIONS.build(data.augment.name, options_of(data.augment))
        self.device_augment = (DEVICE_AUGMENTATIONS.build(data.device_augment.name, options_of(data.device_augment))
                               if data.device_augment.name else None)
        self.batch_transform = self._batch_transform(data.batch_pp)
        self.evaluators = {name: EVALUATORS.build(name, options.to_dict())
                           for name, options in config.evaluators.items()}
        for baseline in config.eval_baselines:
            if baseline not in ("random_init", "raw_pixels"):
                raise ConfigError(f"Unknown eval baseline {baseline!r}; use 'random_init' and/or 'raw_pixels'.")
        if config.grad_accum_steps < 1 or config.batch_size % (config.grad_accum_steps * self.mesh.shape["data"]):
            raise ConfigError(f"config.grad_accum_steps={config.grad_accum_steps} must be >= 1 and split the batch "
                              f"({config.batch_size}) into microbatches that the {self.mesh.shape['data']} devices "
                              f"divide; use a divisor of {config.batch_size // self.mesh.shape['data']}.")

        conv.set_conv_impl(config.conv_impl)  # read when the step is traced
        model_name, model_options = config.model.name, options_of(config.model)
        MODELS.get(model_name)  # fail early on an unknown name, before building the method
        dtypes = {"dtype": precision.compute_dtype(config.precision.compute),
                  "param_dtype": precision.param_dtype(config.precision.params)}
        make_model = lambda name, options, rngs: MODELS.build(name, options, rngs=rngs, **dtypes)
        self.make_encoder = lambda rngs: make_model(model_name, model_options, rngs)
        self.length = schedules.RunLength(config.total_steps,
                                          max(self.train_source.num_examples // config.batch_size, 1))
        setup = MethodSetup(self.make_encoder, self.train_source.num_classes, self.length, model_name,
                            OnlineProbe(**config.online_probe), config.optimizer.lr, make_model)
        self.method = METHODS.build(config.method.name, options_of(config.method), setup=setup)
        self._check_evaluators_have_their_outputs()

        abstract_model = nnx.eval_shape(lambda: self.method.init_model(nnx.Rngs(0)))
        self.graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
        # Each parameter's logical axis names (models/axes.py), which the sharding rules map onto the mesh.
        param_names = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
        trainable, _ = self._split_followers(nnx.to_pure_dict(abstract_params))
        self.optimizer = self.method.make_optimizer(config.optimizer, trainable)
        self.abstract_state = jax.eval_shape(self._init_state)
        self.state_shardings = parallel.state_shardings(self.abstract_state, param_names, self.mesh, config.sharding)
        self.signature = checkpoint.model_signature(self.abstract_state["params"], config.model.to_dict(),
                                                    config.method.name)
        self.origin: init_from.Origin | None = None  # set when config.init fills the encoder

    def _labeled(self, source: Source) -> Source:
        """The source, or its class-balanced subset with `config.data.label_fraction` < 1 (low-label runs:
        the probes fit on the same labeled examples)."""
        data = self.config.data
        return source if data.label_fraction == 1 else class_balanced_subset(source, data.label_fraction,
                                                                             data.label_seed)

    def _check_evaluators_have_their_outputs(self) -> None:
        """Each evaluator reads one named output; the method (or its online probe) must give it."""
        given = set(self.method.output_names) | set(self.method.online_probe_outputs())
        for name, evaluator in self.evaluators.items():
            if evaluator.output in given:
                continue
            readers = [n for n in EVALUATORS.names() if getattr(EVALUATORS.get(n), "output", None) in given]
            instead = (f"evaluators that read what it gives: {', '.join(readers)}" if readers
                       else "no evaluator reads it")
            raise ConfigError(f"Evaluator {name!r} reads the {evaluator.output!r} output, which method "
                              f"{self.config.method.name!r} does not give (it gives {', '.join(sorted(given))}; "
                              f"{instead}): remove config.evaluators.{name} from the recipe.")

    def _batch_transform(self, batch_pp: str):
        """Batch-level ops (mixup, cutmix) mix labels, so integer labels become one-hot first."""
        if not batch_pp:
            return None
        mix = pp.parse_batch(batch_pp)
        to_onehot = pp.parse(f"onehot({self.train_source.num_classes})")
        return lambda batch, seed: mix(to_onehot(batch, seed), seed)

    # --- state -------------------------------------------------------------------------------

    def _split_followers(self, params: dict) -> tuple[dict, dict]:
        """(trained params, follower params): followers are top-level attributes of the model."""
        followers = self.method.followers
        return ({k: v for k, v in params.items() if k not in followers},
                {k: v for k, v in params.items() if k in followers})

    def _init_state(self) -> TrainState:
        key = jax.random.key(self.config.seed)
        # 'dropout' feeds stochastic layers (ViT drop path); their RNG state lives in model_state.
        model = self.method.init_model(nnx.Rngs(params=jax.random.fold_in(key, 0), dropout=jax.random.fold_in(key, 2)))
        _, params, model_state = nnx.split(model, nnx.Param, ...)
        params, ema = self._split_followers(nnx.to_pure_dict(params))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "ema": ema,
                "model_state": nnx.to_pure_dict(model_state), "opt_state": self.optimizer.tx.init(params),
                "rng": jax.random.key_data(jax.random.fold_in(key, 1))}

    def init_state(self, from_init: bool = True) -> TrainState:
        """A fresh state, created directly with its target shardings (never whole on one device);
        with `config.init.source` (and `from_init`), the encoder starts from those weights."""
        state = jax.jit(self._init_state, out_shardings=self.state_shardings)()
        if from_init and self.config.init.source:
            state = self._with_init_encoder(state)
        return state

    def _abstract_encoder(self) -> nnx.Module:
        return nnx.eval_shape(lambda: self.make_encoder(nnx.Rngs(0)))

    def _with_init_encoder(self, state: TrainState) -> TrainState:
        # (An encoder without BatchNorm or dropout, e.g. a ViT, has no model_state entry.)
        fresh = {part: state[part].get("encoder", {}) for part in ("params", "model_state")}
        loaded, self.origin = init_from.load_encoder(self.config.init, fresh, self._abstract_encoder(),
                                                     self.config.model.name)
        for part, weights in loaded.items():
            if weights:
                state[part]["encoder"] = weights
        # Followers start as copies (own buffers: the step donates the state) of what they follow.
        for follower, online in self.method.followers.items():
            state["ema"][follower] = jax.tree.map(jnp.copy, state["params"][online])
        return state

    def restore_or_init(self, checkpointer: checkpoint.Checkpointer) -> TrainState:
        """The newest usable checkpoint's state, laid out for this mesh, or a fresh one."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              self.abstract_state, self.state_shardings)
        restored = checkpointer.restore_latest(target, self.signature)
        return self.init_state() if restored is None else restored

    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.abstract_state["params"]))

    def encoder_flops(self) -> float:
        """Forward FLOPs of the encoder for one image at the training resolution (XLA cost analysis)."""
        encoder = self._abstract_encoder()
        size = self.config.data.image_size
        return model_flops(encoder, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32), train=False)

    # --- the step ----------------------------------------------------------------------------

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if self.device_augment is not None:
            # A pure function of (seed, step), like the host pipeline's randomness: resume-exact.
            batch = self.device_augment(batch, jax.random.fold_in(rng, 1))
        with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):  # for parallel.split_like_batch
            return self.method.update(self.graphdef, self.optimizer, state, batch, rng, self.config.grad_accum_steps)

    def compile_step(self):
        return jax.jit(self.train_step, in_shardings=(self.state_shardings, parallel.batch_sharding(self.mesh)),
                       out_shardings=(self.state_shardings, parallel.replicated(self.mesh)), donate_argnums=0)

    # --- evaluation --------------------------------------------------------------------------

    @functools.cached_property
    def eval_sources(self) -> dict:
        """The evaluation splits, built on first use (loading them costs time)."""
        data = self.config.data
        return {"train": self._labeled(build_source(data.source, data.eval_train_split, data.image_size)),
                "test": build_source(data.source, data.eval_test_split, data.image_size)}

    def _jitted(self, fn):
        # Parameters are arguments, not closed-over constants: one compilation serves every
        # evaluation, and the weights are never baked into the program.
        def apply(params, ema, model_state, images):
            return fn(nnx.merge(self.graphdef, {**params, **ema}, model_state), images)

        return jax.jit(apply)

    @functools.cached_property
    def _output_fns(self) -> dict[str, dict]:
        return {"method": {name: self._jitted(fn) for name, fn in self.method.outputs().items()},
                "online_probe": {name: self._jitted(fn) for name, fn in self.method.online_probe_outputs().items()}}

    def representations(self, name: str, state: TrainState, with_online_probe: bool) -> list[Representation]:
        """The method's outputs under `name`, and (if asked and trained) the online probe's as a row of its own."""
        weights = (state["params"], state["ema"], state["model_state"])

        def bind(fns):
            return {output: functools.partial(fn, *weights) for output, fn in fns.items()}

        rows = [Representation(name, bind(self._output_fns["method"]))]
        if with_online_probe and self._output_fns["online_probe"]:
            rows.append(Representation(f"{name} (online probe)", bind(self._output_fns["online_probe"])))
        return rows

    def eval_data(self) -> EvalData:
        """The evaluation splits with their preprocessing, as the evaluators read them. Its feature cache
        is keyed by representation name: use one per state (a later state's features would be stale)."""
        eval_augment = self.config.data.eval_augment
        preprocess = AUGMENTATIONS.build(eval_augment.name, options_of(eval_augment))
        return EvalData(self.eval_sources, preprocess, self.mesh, self.eval_batch_size)

    def evaluate(self, state: TrainState, with_baselines: bool) -> dict[str, dict[str, float]]:
        return self.evaluate_and_draw(state, with_baselines)[0]

    def evaluate_and_draw(self, state: TrainState, with_baselines: bool, data: EvalData | None = None
                          ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
        """The results, and this evaluation's pictures: kNN retrieval examples of the method's
        features (evaluators/retrieval.py) when an evaluator read them, so they are already extracted.
        Pass `data` (a fresh `eval_data()` for this state) to read the extracted features afterwards
        (`data.outputs(representation, 'features', 'test')`: notebooks/02_inspect_checkpoint.ipynb)."""
        representations = self.representations(self.config.method.name, state, with_online_probe=True)
        if with_baselines and "random_init" in self.config.eval_baselines:
            representations += self.representations("random_init", self.init_state(from_init=False),
                                                     with_online_probe=False)
        if with_baselines and "raw_pixels" in self.config.eval_baselines:
            representations.append(Representation("raw_pixels",
                                                  {"features": jax.jit(lambda x: x.reshape(x.shape[0], -1))}))
        # A fresh EvalData per call (or the caller's, made for this state): its feature cache must never
        # outlive the state it was computed from.
        data = self.eval_data() if data is None else data
        results = evaluate_all(self.evaluators, representations, data, with_references=with_baselines)
        features_read = any(e.output == "features" for e in self.evaluators.values())
        pictures = ({"knn_retrieval": retrieval_picture(representations[0], data)}
                    if features_read and "features" in representations[0].outputs and jax.process_index() == 0
                    else {})
        return results, pictures

    def results_caption(self, step: int) -> str:
        """What the table measured: the run, and each evaluator's protocol."""
        c, fit, scored = self.config, self.eval_sources["train"], self.eval_sources["test"]
        origin = self.origin or init_from.read_origin(self.workdir)
        caption = (f"Results at step {step}/{c.total_steps} (seed {c.seed}, global batch {c.batch_size}): "
                   f"{c.method.name} pretrained on {self.train_source.description}")
        if any(e.output in ("features", "logits") for e in self.evaluators.values()):
            caption += (f"; probes fit on {fit.description} ({fit.num_examples} examples), "
                        f"scored on held-out {scored.description} ({scored.num_examples}). Accuracy in %")
        protocols = [e.protocol() for e in self.evaluators.values() if hasattr(e, "protocol")]
        return ". ".join([caption, *protocols, *([origin.describe()] if origin else [])]) + "."

    # --- pictures ----------------------------------------------------------------------------

    def views_pictures(self, batch: dict) -> dict[str, np.ndarray]:
        """{'views': a grid of a training batch's first examples as the model receives them (after
        `data.device_augment`, if any)}, from this process's first device's share of the batch."""
        local = {key: value.addressable_data(0) for key, value in batch.items()}
        augment = self.config.data.augment
        if self.device_augment is not None:
            local, augment = self.device_augment(local, jax.random.key(self.config.seed)), self.config.data.device_augment
        views = show_views.batch_views(jax.device_get(local), bool(options_of(augment).get("normalize", False)))
        return {} if views is None else {"views": views}

    def draws_pictures(self) -> bool:
        return type(self.method).pictures is not Method.pictures and self.config.num_pictures > 0

    @functools.cached_property
    def _picture_images(self) -> jax.Array:
        """The first held-out batch, read once: every picture shows the same images."""
        eval_augment = self.config.data.eval_augment
        preprocess = AUGMENTATIONS.build(eval_augment.name, options_of(eval_augment))
        local = next(pipeline.eval_batches(self.eval_sources["test"], preprocess, global_batch=self.eval_batch_size,
                                           process_index=jax.process_index(), process_count=jax.process_count()))
        return parallel.to_global_batch(local, parallel.batch_sharding(self.mesh))["image"]

    @functools.cached_property
    def _draw_pictures(self):
        count = min(self.config.num_pictures, self.eval_sources["test"].num_examples, self.eval_batch_size)
        key = jax.random.fold_in(jax.random.key(self.config.seed), 3)  # the same masks or noise at every call

        def draw(params, ema, model_state, images):
            return self.method.pictures(nnx.merge(self.graphdef, {**params, **ema}, model_state), images[:count], key)

        return jax.jit(draw, out_shardings=parallel.replicated(self.mesh))

    def pictures(self, state: TrainState) -> dict[str, np.ndarray]:
        """The method's pictures of this state (`Method.pictures`) as HWC uint8 arrays, given the first
        `config.num_pictures` held-out images; {} for methods that draw none."""
        if not self.draws_pictures():
            return {}
        drawn = jax.device_get(self._draw_pictures(state["params"], state["ema"], state["model_state"],
                                                   self._picture_images))
        # Float pictures are in the model's input range: the training views' ([-1, 1] or ImageNet-standardized).
        normalized = bool(options_of(self.config.data.augment).get("normalize", False))
        return {name: picture if picture.dtype == np.uint8 else model_range_to_uint8(picture, normalized)
                for name, picture in drawn.items()}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returned a list
    return float((cost or {}).get("flops", 0.0))


def _check_finite(pending: list[tuple[int, dict]], last_saved: int | None, config, workdir: str) -> list[dict]:
    """Fetches the pending steps' metrics; raises if any step produced a non-finite loss."""
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), metrics in zip(pending, fetched):
        if not metrics["finite"]:
            values = ", ".join(f"{k}={metrics[k]}" for k in ("loss", "grad_norm", "param_norm") if k in metrics)
            raise _diverged(f"Training became non-finite at step {step} ({values})", last_saved, config, workdir)
    return fetched


def _diverged(what: str, last_saved: int | None, config, workdir: str) -> TrainingDiverged:
    where = f"step {last_saved} in {workdir}/checkpoints" if last_saved else "none was saved"
    resume = f"it resumes from step {last_saved}" if last_saved else "it starts again"
    return TrainingDiverged(
        f"{what}. Nothing was saved after it; last good checkpoint: {where}. Rerun with a lower learning rate "
        f"({resume}), e.g. --config.optimizer.lr={min(config.optimizer.lr / 10, 1e-3):g} "
        f"--config.allow_config_change=true, "
        f"or add warmup or --config.optimizer.grad_clip_norm=1.0 in a new --workdir.")


def train(config, workdir: str) -> dict[str, dict[str, float]]:
    """Trains (resuming from the latest usable checkpoint in `workdir`, if any) and returns the final
    results. A stop signal saves the current step and raises `Preempted` (vision_jax/preemption.py)."""
    workdir_lib.prepare(workdir)
    with workdir_lib.lock(workdir):
        checkpointer = checkpoint.Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep,
                                               config.checkpoint.use_async)
        try:
            return _train(config, workdir, checkpointer)
        finally:
            checkpointer.close()


def _train(config, workdir: str, checkpointer: checkpoint.Checkpointer) -> dict[str, dict[str, float]]:
    latest = checkpointer.latest_step()
    notes = workdir_lib.check_resume(config, workdir, latest) if latest is not None else []
    results_path = os.path.join(workdir, "results.json")
    finished = latest == config.total_steps and not workdir_lib.changes_since_saved(config, workdir)
    if finished and (os.path.exists(results_path) or not config.evaluators):
        return _finished_run(workdir, latest, results_path)

    logger = MetricLogger(workdir, config.total_steps)
    for note in notes:
        logger.info(f"note: {note}")
    with preemption.StopSignals(config.preemption_signal, checkpointer.reached_preemption) as stop:
        run = Run(config, workdir)
        try:
            state = run.restore_or_init(checkpointer)
        except checkpoint.StateStructureError as error:
            changes = workdir_lib.changes_since_saved(config, workdir)
            raise CheckpointError(f"{error} Changed since it was saved: {changes or 'nothing in config.json'}. "
                                  f"Resume without those changes (--config={workdir}/config.json), or use a new "
                                  f"--workdir.") from None
        workdir_lib.write_config(config, workdir)  # only now: the checkpoint fits this config
        if run.origin and jax.process_index() == 0:  # a fresh start from config.init
            init_from.write_origin(run.origin, workdir)
        start = int(state["step"])
        if stop.should_stop(start):  # a signal during start-up: nothing new to save
            raise Preempted(f"Stopped by {stop.received} before step {start + 1}; nothing new to save.", start)
        logger.forget_after(start)
        logger.write_hparams(config.to_dict())
        logger.info(f"{config.method.name} / {config.model.name}: {run.num_params():,} parameters; "
                    f"mesh {dict(run.mesh.shape)}; global batch {config.batch_size}; "
                    f"train data {run.train_source.description} ({run.train_source.num_examples} examples)"
                    + (f"; resuming from step {start}" if start else ""))
        state = _train_loop(run, state, start, stop, checkpointer, logger)

    results = {}
    if run.evaluators:
        results, pictures = run.evaluate_and_draw(state, with_baselines=True)
        logger.write(config.total_steps,
                     {f"final/{rep}/{k}": v for rep, row in results.items() for k, v in row.items()})
        logger.write_pictures(config.total_steps, pictures)
        table = format_table(results, run.results_caption(config.total_steps))
        logger.write_text(config.total_steps, "results", table)
        logger.info("\n" + table)
        if jax.process_index() == 0:
            with open(results_path, "w") as f:
                json.dump(results, f, indent=2)
    return results


def _finished_run(workdir: str, step: int, results_path: str) -> dict[str, dict[str, float]]:
    """A rerun of a finished run: its saved results, without training or evaluating again."""
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    if jax.process_index() == 0:
        print(f"The run in {workdir} is finished (step {step}); nothing was trained or evaluated again.", flush=True)
        if results:
            print("\n" + format_table(results, f"Results at step {step}, saved in {results_path}:"), flush=True)
    return results


def _train_loop(run: Run, state: TrainState, start: int, stop: preemption.StopSignals,
                checkpointer: checkpoint.Checkpointer, logger: MetricLogger) -> TrainState:
    config, workdir = run.config, run.workdir
    batches = pipeline.train_batches(run.train_source, run.augment, global_batch=config.batch_size,
                                     seed=config.seed, start_step=start, process_index=jax.process_index(),
                                     process_count=jax.process_count(), prefetch=config.data.prefetch,
                                     batch_transform=run.batch_transform)
    batches = parallel.prefetch_to_device(batches, parallel.batch_sharding(run.mesh))
    first_batch = next(batches)
    run.method.validate_batch({k: tuple(v.shape) for k, v in first_batch.items()})
    logger.write_pictures(start, run.views_pictures(first_batch))
    step_fn = run.compile_step().lower(state, first_batch).compile()
    step_flops = _flops(step_fn)  # per device: the compiled program is the partitioned one
    size = config.data.image_size  # 0: images keep their own sizes, so no single forward cost
    encoder_cost = f"encoder forward {run.encoder_flops() / 1e9:.3g} GFLOPs per image at {size}px; " if size else ""
    logger.info(f"{encoder_cost}train step {step_flops / 1e12:.3g} TFLOPs per device")
    batches = itertools.chain([first_batch], batches)
    pending: list[tuple[int, dict]] = []  # dispatched steps whose metrics are not fetched yet
    since_log: list[dict] = []  # fetched metrics of the steps since the last log line
    last_saved = start or None
    collapse = CollapseMonitor(logger)
    warned: set[str] = set()  # kinds of the method's training warnings already printed
    timer_step, timer_start = start, time.perf_counter()
    try:
        for step in range(start, config.total_steps):
            state, metrics = step_fn(state, next(batches))
            done = step + 1
            logger.advance(done)
            pending.append((done, metrics))
            is_last = done == config.total_steps
            stopping = stop.should_stop(done)  # every step, on every process (the processes agree)
            log_now = (config.log_every and done % config.log_every == 0) or is_last
            save_now = checkpointer.should_save(done) or is_last or stopping
            eval_now = config.eval_every > 0 and done % config.eval_every == 0 and not (is_last or stopping)
            pictures_now = (config.pictures_every and done % config.pictures_every == 0) or is_last
            if not (log_now or save_now or eval_now or pictures_now):
                continue
            since_log += _check_finite(pending, last_saved, config, workdir)
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
                collapse.observe(done, summary)
                for kind, message in run.method.training_warnings(done, summary).items():
                    if kind not in warned:
                        warned.add(kind)
                        logger.info(f"warning at step {done}: {message}")
                timer_step, timer_start = done, time.perf_counter()
            if save_now:
                bad = checkpoint.nonfinite_leaves(state)  # the loss can be finite while the update is not
                if bad:
                    raise _diverged(f"The train state became non-finite at step {done} ({len(bad)} arrays hold NaN "
                                    f"or infinity, e.g. {bad[0]})", last_saved, config, workdir)
                checkpointer.save(done, state, run.signature, force=is_last or stopping)
                last_saved = done
            if stopping:
                checkpointer.wait()
                raise Preempted(f"Stopped by {stop.received} after step {done}; its state is saved in "
                                f"{checkpointer.directory}.", done)
            if eval_now or pictures_now:
                logger.write_pictures(done, run.pictures(state))
            if eval_now and run.evaluators:
                all_results, pictures = run.evaluate_and_draw(state, with_baselines=False)
                results = all_results[config.method.name]
                logger.write(done, {f"eval/{k}": v for k, v in results.items()})
                logger.write_pictures(done, pictures)
                logger.write_text(done, "results", format_table(all_results, run.results_caption(done)))
                logger.info(f"step {done} eval: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
            if eval_now or pictures_now:
                timer_step, timer_start = done, time.perf_counter()
    finally:
        logger.end_progress()
        checkpointer.wait()
    return state
