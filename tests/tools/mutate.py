"""Mutation testing, on demand: injects plausible bugs, one at a time, into a temporary copy of the
repository and runs the test files that should catch each; reports the bugs no test caught.

    python tests/tools/mutate.py                          # all of them (tens of minutes on 2 cores)
    python tests/tools/mutate.py --only knn linear_probe  # names starting with these
    python tests/tools/mutate.py --list

Each set of test files first runs on the unmutated copy: a mutation only counts as caught when
its tests pass without it ('baseline fails' otherwise). The copy sits beside a link to ../shared
when there is one, so the tests see the data they see here. Not part of the test suite (pytest
collects only test_*.py). A mutation whose original text is no longer found exactly once in its
file is reported 'stale': update MUTATIONS when the code moves.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # test files (or node ids) that should catch it, fastest first
    note: str = ""


EVAL = ("tests/test_evaluators.py",)
CKPT = ("tests/test_checkpoint.py",)
OPTIM = ("tests/test_optim.py",)
OPTIONS_RESNET = ("tests/test_model_options.py", "tests/test_models.py")
OPTIONS_VIT = ("tests/test_model_options.py", "tests/test_vit.py")
SHARDING = ("tests/test_parallel.py",)
METHODS = ("tests/test_methods.py",)
TRAINER = ("tests/test_trainer.py",)
SCHEDULES = ("tests/test_schedules.py", "tests/test_optim.py")
GROUPS = ("tests/test_param_groups.py",)
TS = "tests/test_teacher_student.py::"
TEACHER_STUDENT_EMA = (f"{TS}test_followers_are_an_ema_of_the_updated_params_and_stay_out_of_the_optimizer",)
TEACHER_STUDENT_DINO = (f"{TS}test_dino_freezes_its_last_layer_in_epoch_one_moves_its_center_and_evaluates_the_teacher",)
ACCUMULATION = (f"{TS}test_gradient_accumulation_equals_the_full_batch_update_without_batchnorm",)
EMA_SCHEDULE = (*TEACHER_STUDENT_EMA, f"{TS}test_each_methods_ema_momentum_is_the_cosine_from_base_to_one")
FOLLOWER_DROPOUT = (f"{TS}test_followers_are_built_without_drop_path",)
PROBE = (f"{TS}test_online_probe_gradient_stops_at_the_features",
         f"{TS}test_online_probe_learns_at_its_own_rate_without_weight_decay")
TM = "tests/test_methods.py::"
BYOL = (f"{TM}test_byol_loss_matches_the_papers_formula_written_out",
        f"{TM}test_byol_method_loss_pairs_each_views_prediction_with_the_other_views_target")
MOCO = (f"{TM}test_mocov3_loss_matches_reference",
        f"{TM}test_mocov3_method_loss_is_symmetric_infonce_of_predictor_queries_and_momentum_keys")
DINO = (f"{TM}test_dino_loss_matches_reference_with_local_views",
        f"{TM}test_dino_teacher_temperature_and_frozen_last_layer_follow_the_epochs",
        f"{TM}test_dino_method_loss_and_center_update_follow_main_dino")
MOCO_GLOBAL_KEYS = (f"{TS}test_each_method_gives_the_same_losses_on_one_and_eight_devices",)  # slow

MUTATIONS = [
    # --- evaluators
    Mutation("knn_unweighted_votes", "vision_jax/evaluators/knn.py",
             " * jnp.exp(top_similarity / temperature)[..., None]", "", EVAL, "every neighbour counts 1"),
    Mutation("knn_k_minus_1", "vision_jax/evaluators/knn.py",
             "k = min(self.k, len(train_x))", "k = min(self.k, len(train_x)) - 1", EVAL),
    Mutation("knn_temperature_multiplies", "vision_jax/evaluators/knn.py",
             "jnp.exp(top_similarity / temperature)", "jnp.exp(top_similarity * temperature)", EVAL),
    Mutation("knn_dot_product", "vision_jax/evaluators/knn.py",
             "jax.lax.top_k(normalize(test_x) @ normalize(train_x).T, k)", "jax.lax.top_k(test_x @ train_x.T, k)", EVAL,
             "no cosine normalization"),
    Mutation("knn_train_features_not_normalized", "vision_jax/evaluators/knn.py",
             "normalize(test_x) @ normalize(train_x).T", "normalize(test_x) @ train_x.T", EVAL),
    Mutation("knn_test_features_not_normalized", "vision_jax/evaluators/knn.py",
             "normalize(test_x) @ normalize(train_x).T", "test_x @ normalize(train_x).T", EVAL),
    Mutation("linear_probe_test_statistics", "vision_jax/evaluators/linear_probe.py",
             "logits = ((test_x - mean) / std)", "logits = ((test_x - test_x.mean(0)) / (test_x.std(0) + 1e-6))",
             EVAL, "test features standardized with their own mean and std"),
    Mutation("linear_probe_one_more_epoch", "vision_jax/evaluators/linear_probe.py",
             "epochs = max(epochs, -(-min_steps // steps_per_epoch))",
             "epochs = max(epochs + 1, -(-min_steps // steps_per_epoch))", EVAL),
    Mutation("linear_probe_half_the_epochs", "vision_jax/evaluators/linear_probe.py",
             "epochs = max(epochs, -(-min_steps // steps_per_epoch))",
             "epochs = max(epochs // 2, -(-min_steps // steps_per_epoch))", EVAL),
    Mutation("linear_probe_min_steps_ignored", "vision_jax/evaluators/linear_probe.py",
             "epochs = max(epochs, -(-min_steps // steps_per_epoch))", "epochs = epochs", EVAL),
    Mutation("linear_probe_no_weight_decay", "vision_jax/evaluators/linear_probe.py",
             '\n                + 0.5 * weight_decay * jnp.sum(p["w"] ** 2))', ")", EVAL),
    Mutation("classification_scored_on_train_split", "vision_jax/evaluators/classification.py",
             'data.outputs(representation, self.output, "test")',
             'data.outputs(representation, self.output, "train")', EVAL),
    Mutation("eval_padding_kept", "vision_jax/evaluators/features.py",
             "keep = np.concatenate(masks) > 0", "keep = np.concatenate(masks) >= 0", EVAL,
             "the padded slots of the last batch are scored"),
    # --- checkpoints
    Mutation("checkpoint_zeroed_rng", "vision_jax/checkpoint.py",
             "state=ocp.args.StandardSave(state)",
             'state=ocp.args.StandardSave({**state, "rng": jax.numpy.zeros_like(state["rng"])})', CKPT),
    Mutation("checkpoint_zeroed_rng_resume_test_only", "vision_jax/checkpoint.py",
             "state=ocp.args.StandardSave(state)",
             'state=ocp.args.StandardSave({**state, "rng": jax.numpy.zeros_like(state["rng"])})',
             ("tests/test_resume.py",), "the resume test alone (about 3 minutes)"),
    Mutation("checkpoint_keeps_one_more", "vision_jax/checkpoint.py",
             "max_to_keep=keep,", "max_to_keep=keep + 1,", CKPT),
    Mutation("checkpoint_every_step", "vision_jax/checkpoint.py",
             "save_interval_steps=every_steps or None,", "save_interval_steps=1,", CKPT),
    # --- models
    Mutation("resnet_zero_init_not_passed_to_blocks", "vision_jax/models/resnet.py",
             "block_cls(cin, width, stride, zero_init_last_bn=zero_init_last_bn, **kw)",
             "block_cls(cin, width, stride, zero_init_last_bn=False, **kw)", OPTIONS_RESNET),
    Mutation("resnet_zero_init_on_first_bn", "vision_jax/models/resnet.py",
             "self.conv1, self.bn1 = conv(cin, width, 3, stride, **kw), BatchNorm(width, **kw)",
             "self.conv1, self.bn1 = conv(cin, width, 3, stride, **kw), "
             "BatchNorm(width, scale_init=_last_bn_init(zero_init_last_bn), **kw)", OPTIONS_RESNET),
    Mutation("vit_factory_ignores_pool", "vision_jax/models/vit.py",
             "image_size=image_size, pool=pool, posemb=posemb,", 'image_size=image_size, pool="cls", posemb=posemb,',
             OPTIONS_VIT),
    Mutation("vit_factory_ignores_drop_path_rate", "vision_jax/models/vit.py",
             "posemb=posemb, drop_path_rate=drop_path_rate,", "posemb=posemb, drop_path_rate=0.0,", OPTIONS_VIT),
    Mutation("vit_factory_ignores_remat", "vision_jax/models/vit.py",
             "num_classes=num_classes, remat=remat,", "num_classes=num_classes, remat=False,", OPTIONS_VIT),
    Mutation("vit_same_drop_path_in_every_block", "vision_jax/models/vit.py",
             "rates = np.linspace(0.0, drop_path_rate, depth)", "rates = np.full(depth, drop_path_rate)", OPTIONS_VIT),
    Mutation("vit_layer_scale_not_passed_to_blocks", "vision_jax/models/vit.py",
             "layer_scale_init=layer_scale_init, attention_impl=attention_impl,",
             "layer_scale_init=None, attention_impl=attention_impl,", OPTIONS_VIT),
    Mutation("vit_attention_impl_ignored", "vision_jax/models/vit.py",
             "jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)",
             "jax.nn.dot_product_attention(q, k, v)", OPTIONS_VIT),
    Mutation("dcgan_generator_ignores_channels", "vision_jax/models/dcgan.py",
             "for i in range(n)] + [channels]", "for i in range(n)] + [3]", ("tests/test_model_options.py",)),
    Mutation("conv_ignores_compute_dtype", "vision_jax/models/layers.py",
             "kernel_init=partitioned(kernel_init, CONV_KERNEL_AXES),\n                    dtype=dtype,",
             "kernel_init=partitioned(kernel_init, CONV_KERNEL_AXES),\n                    dtype=jnp.float32,",
             ("tests/test_model_options.py", "tests/test_models.py")),
    Mutation("batch_norm_momentum", "vision_jax/models/layers.py",
             "momentum=0.9, epsilon=epsilon", "momentum=0.99, epsilon=epsilon", ("tests/test_models.py",)),
    Mutation("batch_norm_epsilon", "vision_jax/models/layers.py",
             "epsilon: float = 1e-5, rngs", "epsilon: float = 1e-3, rngs", ("tests/test_models.py",)),
    # --- sharding
    Mutation("vit_fc2_axis_names_swapped", "vision_jax/models/vit.py",
             "self.fc2 = Dense((mlp_dim,), (width,), (MLP, EMBED),", "self.fc2 = Dense((mlp_dim,), (width,), (EMBED, MLP),",
             ("tests/test_vit.py", *SHARDING)),
    Mutation("small_arrays_sharded", "vision_jax/parallel.py",
             "MIN_SHARDED_SIZE = 2**14", "MIN_SHARDED_SIZE = 2**8", SHARDING),
    Mutation("tensor_parallel_leaves_mlp_whole", "vision_jax/parallel.py",
             '"tensor_parallel": {axes.HEADS: "model", axes.MLP: "model"},', '"tensor_parallel": {axes.HEADS: "model"},',
             SHARDING),
    # --- schedules, optimizer and parameter groups
    Mutation("schedule_at_count_plus_1", "vision_jax/optim.py",
             "scaled_lr = lambda step: group.lr_scale * lr(step)",
             "scaled_lr = lambda step: group.lr_scale * lr(step + 1)", OPTIM),
    Mutation("logged_lr_at_step_plus_1", "vision_jax/methods/gradient_step.py",
             '"learning_rate": optimizer.learning_rate(step)', '"learning_rate": optimizer.learning_rate(step + 1)',
             OPTIM),
    Mutation("warmup_one_step_longer", "vision_jax/optim.py",
             "schedules.warmup_cosine(opt_config.lr, opt_config.warmup_steps, total_steps",
             "schedules.warmup_cosine(opt_config.lr, opt_config.warmup_steps + 1, total_steps", OPTIM),
    Mutation("cosine_ends_at_total_minus_warmup", "vision_jax/schedules.py",
             "decay_steps = max(total_steps - warmup_steps, 1)", "decay_steps = max(total_steps - 2 * warmup_steps, 1)",
             SCHEDULES),
    Mutation("cosine_decays_over_total_steps", "vision_jax/schedules.py",
             "decay_steps = max(total_steps - warmup_steps, 1)", "decay_steps = max(total_steps, 1)", SCHEDULES,
             "the cosine ignores the warmup and ends above `end`"),
    Mutation("warmup_reaches_peak_one_step_early", "vision_jax/schedules.py",
             "warm = peak * step / max(warmup_steps, 1)", "warm = peak * (step + 1) / max(warmup_steps, 1)", SCHEDULES),
    Mutation("constant_schedule_warmup_doubled", "vision_jax/optim.py",
             "schedules.warmup_constant(opt_config.lr, opt_config.warmup_steps)",
             "schedules.warmup_constant(opt_config.lr, 2 * opt_config.warmup_steps)", OPTIM),
    Mutation("sgd_momentum_ignored", "vision_jax/optim.py",
             "hold(optax.trace(decay=opt_config.momentum, nesterov=opt_config.nesterov))",
             "hold(optax.trace(decay=0.0, nesterov=opt_config.nesterov))", OPTIM),
    Mutation("sgd_nesterov", "vision_jax/optim.py",
             "hold(optax.trace(decay=opt_config.momentum, nesterov=opt_config.nesterov))",
             "hold(optax.trace(decay=opt_config.momentum, nesterov=not opt_config.nesterov))", OPTIM),
    Mutation("weight_decay_on_biases", "vision_jax/optim.py",
             "lambda p: p.ndim > 1", "lambda p: p.ndim >= 1", OPTIM),
    Mutation("lars_trust_ratio_on_biases", "vision_jax/optim.py",
             "optax.masked(optax.scale_by_trust_ratio(trust_coefficient=opt_config.trust_coefficient), _kernels)",
             "optax.scale_by_trust_ratio(trust_coefficient=opt_config.trust_coefficient)", OPTIM),
    Mutation("gradient_clipping_ignored", "vision_jax/optim.py",
             "if opt_config.grad_clip_norm > 0:", "if opt_config.grad_clip_norm > 1e30:", OPTIM),
    Mutation("weight_decay_cosine_reversed", "vision_jax/optim.py",
             "schedules.cosine(opt_config.weight_decay, opt_config.weight_decay_end, total_steps)",
             "schedules.cosine(opt_config.weight_decay_end, opt_config.weight_decay, total_steps)", GROUPS),
    Mutation("group_wd_scale_ignored", "vision_jax/optim.py",
             "lambda step: group.wd_scale * wd(step)", "lambda step: wd(step)", GROUPS,
             "weight decay applied to a group that excludes it (the online probe)"),
    Mutation("group_lr_scale_ignored", "vision_jax/optim.py",
             "scaled_lr = lambda step: group.lr_scale * lr(step)", "scaled_lr = lambda step: lr(step)", GROUPS),
    Mutation("group_frozen_one_step_longer", "vision_jax/optim.py",
             "        frozen = state.count < frozen_steps\n        updates =",
             "        frozen = state.count <= frozen_steps\n        updates =", GROUPS),
    Mutation("group_moments_not_held_while_frozen", "vision_jax/optim.py",
             "jnp.where(frozen, old, new), state.inner, new_inner)", "new, state.inner, new_inner)", GROUPS,
             "Adam's moments and count advance while the group is frozen"),
    Mutation("group_last_match_wins", "vision_jax/optim.py",
             "next((g.name for g in groups if re.search(g.pattern, text)), DEFAULT_GROUP)",
             "next((g.name for g in reversed(groups) if re.search(g.pattern, text)), DEFAULT_GROUP)", GROUPS),
    Mutation("per_parameter_clip_uses_global_norm", "vision_jax/optim.py",
             "else clip_each_by_norm(opt_config.grad_clip_norm))", "else optax.clip_by_global_norm(opt_config.grad_clip_norm))",
             GROUPS),
    # --- EMA followers and the update (schedules.py, methods/base.py, methods/gradient_step.py)
    Mutation("ema_update_weights_swapped", "vision_jax/schedules.py",
             "(momentum * f + (1.0 - momentum) * o)", "((1.0 - momentum) * f + momentum * o)", SCHEDULES,
             "m and 1-m swapped"),
    Mutation("ema_from_params_before_the_step", "vision_jax/methods/gradient_step.py",
             "schedules.ema_update(momentum, ema[follower], params[online])",
             'schedules.ema_update(momentum, ema[follower], state["params"][online])', TEACHER_STUDENT_EMA,
             "the EMA applied before the optimizer step (from the old params)"),
    Mutation("ema_momentum_at_step_plus_1", "vision_jax/methods/base.py",
             "schedules.cosine(self.base_momentum, 1.0, self.length.total_steps)(step)",
             "schedules.cosine(self.base_momentum, 1.0, self.length.total_steps)(step + 1)", EMA_SCHEDULE),
    Mutation("ema_momentum_linear", "vision_jax/methods/base.py",
             "return schedules.cosine(self.base_momentum, 1.0, self.length.total_steps)(step)",
             "return self.base_momentum + (1.0 - self.base_momentum) * jnp.minimum(step / self.length.total_steps, 1.0)",
             EMA_SCHEDULE, "not a cosine"),
    Mutation("ema_momentum_constant", "vision_jax/methods/base.py",
             "return schedules.cosine(self.base_momentum, 1.0, self.length.total_steps)(step)",
             "return jnp.asarray(self.base_momentum, jnp.float32)", EMA_SCHEDULE),
    Mutation("cosine_progress_not_clipped", "vision_jax/schedules.py",
             "progress = jnp.minimum(jnp.asarray(step, jnp.float32) / total, 1.0)",
             "progress = jnp.asarray(step, jnp.float32) / total", SCHEDULES, "the momentum comes back down after the end"),
    Mutation("followers_keep_dropout", "vision_jax/methods/base.py",
             "            sub.rate = 0.0", "            pass", FOLLOWER_DROPOUT),
    Mutation("grad_accumulation_sum_not_mean", "vision_jax/methods/gradient_step.py",
             "jax.tree.map(lambda g: g / k, grad_sum)", "grad_sum", ACCUMULATION,
             "gradients summed over microbatches, not averaged"),
    Mutation("grad_accumulation_divides_by_batch_size", "vision_jax/methods/gradient_step.py",
             "jax.tree.map(lambda g: g / k, grad_sum)",
             'jax.tree.map(lambda g: g / batch["label"].shape[0], grad_sum)', ACCUMULATION),
    Mutation("batch_norm_statistics_not_carried", "vision_jax/methods/gradient_step.py",
             '"ema": ema, "model_state": model_state,', '"ema": ema, "model_state": state["model_state"],',
             TEACHER_STUDENT_EMA),
    Mutation("online_probe_gradient_reaches_the_encoder", "vision_jax/methods/base.py",
             "logits = model.online_probe(jax.lax.stop_gradient(out.probe_features))",
             "logits = model.online_probe(out.probe_features)", PROBE, "missing stop_gradient"),
    Mutation("online_probe_weight_decayed", "vision_jax/methods/base.py",
             "                                           wd_scale=0.0))",
             "                                           wd_scale=1.0))", PROBE),
    Mutation("online_probe_lr_not_relative", "vision_jax/methods/base.py",
             "lr_scale=self.setup.online_probe.lr / self.setup.optimizer_lr,",
             "lr_scale=self.setup.online_probe.lr,", PROBE),
    Mutation("embedding_spread_unnormalized", "vision_jax/methods/base.py",
             "z = l2_normalize(jax.lax.stop_gradient(embeddings))", "z = jax.lax.stop_gradient(embeddings)", METHODS,
             "the collapse metric on unnormalised embeddings"),
    # --- methods (losses, centers, temperatures, groups)
    Mutation("simclr_temperature_ignored", "vision_jax/methods/simclr.py",
             "nt_xent(z[:n], z[n:], self.temperature)", "nt_xent(z[:n], z[n:], 0.5)", METHODS),
    Mutation("simclr_self_similarity_unmasked", "vision_jax/methods/simclr.py",
             "logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)", "logits = logits", METHODS),
    Mutation("supervised_label_smoothing_ignored", "vision_jax/methods/supervised.py",
             'classification_loss(logits, batch["label"], self.label_smoothing)',
             'classification_loss(logits, batch["label"], 0.0)', METHODS),
    Mutation("byol_loss_not_symmetric", "vision_jax/methods/byol.py",
             "jnp.mean(regression_loss(predictions[0], targets[1]) + regression_loss(predictions[1], targets[0]))",
             "jnp.mean(2.0 * regression_loss(predictions[0], targets[1]))", BYOL, "one direction, doubled"),
    Mutation("byol_pairs_a_view_with_its_own_target", "vision_jax/methods/byol.py",
             "regression_loss(predictions[0], targets[1]) + regression_loss(predictions[1], targets[0])",
             "regression_loss(predictions[0], targets[0]) + regression_loss(predictions[1], targets[1])", BYOL),
    Mutation("byol_prediction_not_normalized", "vision_jax/methods/byol.py",
             "jnp.sum(l2_normalize(prediction) * ", "jnp.sum(prediction * ", BYOL),
    Mutation("byol_target_not_normalized", "vision_jax/methods/byol.py",
             "l2_normalize(jax.lax.stop_gradient(target))", "jax.lax.stop_gradient(target)", BYOL),
    Mutation("mocov3_loss_not_scaled_by_2t", "vision_jax/methods/mocov3.py",
             ".mean() * (2.0 * temperature)", ".mean()", MOCO),
    Mutation("mocov3_keys_from_the_local_batch_only", "vision_jax/methods/mocov3.py",
             "    labels = jnp.arange(queries.shape[0])\n",
             "    labels = jnp.arange(queries.shape[0])\n"
             "    local = queries.shape[0] // jax.device_count()\n"
             "    logits = jnp.where(labels[:, None] // local == labels[None, :] // local, logits, -jnp.inf)\n",
             MOCO_GLOBAL_KEYS, "each device's queries see only its own keys"),
    Mutation("mocov3_queries_from_the_projector", "vision_jax/methods/mocov3.py",
             "contrastive_loss(queries[0], keys[1], t) + contrastive_loss(queries[1], keys[0], t)",
             "contrastive_loss(projections[0], keys[1], t) + contrastive_loss(projections[1], keys[0], t)", MOCO,
             "the predictor skipped"),
    Mutation("mocov3_patch_embedding_not_frozen", "vision_jax/methods/mocov3.py",
             'r"^encoder/patch_embed/", frozen=True)', 'r"^encoder/patch_embed/", frozen_steps=1)', GROUPS),
    Mutation("dino_center_not_updated", "vision_jax/methods/dino.py",
             "model.center[...] = self.center_momentum * model.center[...] + (1 - self.center_momentum) * batch_center",
             "model.center[...] = model.center[...]", DINO),
    Mutation("dino_center_from_the_student", "vision_jax/methods/dino.py",
             "batch_center = jnp.mean(jax.lax.stop_gradient(teacher), axis=0)",
             "batch_center = jnp.mean(jax.lax.stop_gradient(student[:2 * n]), axis=0)", DINO),
    Mutation("dino_center_momentum_swapped", "vision_jax/methods/dino.py",
             "self.center_momentum * model.center[...] + (1 - self.center_momentum) * batch_center",
             "(1 - self.center_momentum) * model.center[...] + self.center_momentum * batch_center", DINO),
    Mutation("dino_center_not_subtracted", "vision_jax/methods/dino.py",
             "(jax.lax.stop_gradient(t) - center) / teacher_temp", "jax.lax.stop_gradient(t) / teacher_temp", DINO),
    Mutation("dino_teacher_temp_warmup_one_epoch_longer", "vision_jax/methods/dino.py",
             "warmup_teacher_temp_epochs, length.steps_per_epoch)",
             "warmup_teacher_temp_epochs + 1, length.steps_per_epoch)", DINO),
    Mutation("teacher_temp_linspace_off_by_one", "vision_jax/schedules.py",
             "epoch.astype(jnp.float32) / max(warmup_epochs - 1, 1)", "epoch.astype(jnp.float32) / max(warmup_epochs, 1)",
             SCHEDULES, "reaches the final temperature one epoch late"),
    Mutation("dino_last_layer_frozen_one_step", "vision_jax/schedules.py",
             "return int(round(epochs * self.steps_per_epoch))", "return int(round(epochs))", DINO,
             "the frozen-last-layer group frozen for 1 step, not epoch 1"),
    Mutation("dino_last_layer_not_frozen", "vision_jax/methods/dino.py",
             "frozen_steps=self.frozen_last_layer_steps))", "frozen_steps=0))", TEACHER_STUDENT_DINO),
    Mutation("dino_evaluates_the_student", "vision_jax/methods/dino.py",
             "return model.teacher_encoder(images, train=False)", "return model.encoder(images, train=False)",
             TEACHER_STUDENT_DINO),
    Mutation("dino_teacher_views_swapped", "vision_jax/methods/dino.py",
             "jnp.split(student, student.shape[0] // n), jnp.split(teacher, 2)",
             "jnp.split(student, student.shape[0] // n), jnp.split(teacher, 2)[::-1]", DINO,
             "teacher views paired with the wrong student views (the loss skips the wrong pairs)"),
    Mutation("train_step_rng_not_folded_with_step", "vision_jax/trainer.py",
             'rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])',
             'rng = jax.random.wrap_key_data(state["rng"])', ("tests/test_device_augment.py", *TRAINER),
             "the same on-device views at every step"),
]


def copy_repository(destination: Path) -> None:
    """Tracked files and untracked ones git does not ignore (what a commit would hold)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run_tests(workdir: Path, tests: tuple[str, ...], timeout: int) -> tuple[str, str, float]:
    """(result, first failing test, seconds): result is 'passed', 'failed' or 'timeout'."""
    env = dict(os.environ, PYTHONPATH=str(workdir), JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if result.returncode == 0:
        return "passed", "", seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE)
    return "failed", failed[0] if failed else f"pytest exit {result.returncode}", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="run the mutations whose names start with these")
    parser.add_argument("--list", action="store_true", help="list the mutations (marking stale ones) and exit")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per mutation")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(m.name.startswith(p) for p in args.only)]
    if args.list:
        for m in chosen:
            stale = "" if (REPO / m.path).read_text().count(m.original) == 1 else " (stale)"
            print(f"{m.name:45s} {m.path:40s} {' '.join(m.tests)}{stale}")
        return
    if not chosen:
        sys.exit(f"No mutation name starts with {args.only}; see --list.")

    rows, baseline = [], {}
    with tempfile.TemporaryDirectory(prefix="vision_jax_mutants_") as tmp:
        workdir = Path(tmp) / REPO.name
        copy_repository(workdir)
        if (REPO.parent / "shared").is_dir():
            (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")
        for mutation in chosen:
            target = workdir / mutation.path
            original = target.read_text()
            if mutation.tests not in baseline:
                baseline[mutation.tests] = run_tests(workdir, mutation.tests, args.timeout)
                print(f"baseline {' '.join(mutation.tests)}: {baseline[mutation.tests][0]} "
                      f"{baseline[mutation.tests][1]}", flush=True)
            if original.count(mutation.original) != 1:
                rows.append((mutation, "stale", "", 0.0))
            elif baseline[mutation.tests][0] != "passed":
                rows.append((mutation, "baseline fails", baseline[mutation.tests][1], 0.0))
            else:
                target.write_text(original.replace(mutation.original, mutation.mutated))
                try:
                    result, first_failure, seconds = run_tests(workdir, mutation.tests, args.timeout)
                finally:
                    target.write_text(original)
                outcome = {"passed": "survived", "failed": "caught"}.get(result, result)
                rows.append((mutation, outcome, first_failure, seconds))
            outcome, caught_by, seconds = rows[-1][1:]
            print(f"{mutation.name}: {outcome} {caught_by} ({seconds:.0f} s)", flush=True)

    print("\n| mutation | file | outcome | first failing test | s |\n|---|---|---|---|---|")
    for mutation, outcome, caught_by, seconds in rows:
        print(f"| {mutation.name} | {mutation.path} | {outcome} | {caught_by} | {seconds:.0f} |")
    caught = sum(outcome == "caught" for _, outcome, _, _ in rows)
    print(f"\nCaught {caught} of {len(rows)}.")
    for mutation, outcome, _, _ in rows:
        if outcome != "caught":
            print(f"  {outcome}: {mutation.name} ({mutation.path}) {mutation.note}".rstrip())


if __name__ == "__main__":
    main()
