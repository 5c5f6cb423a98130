"""The evaluation and fine-tuning protocols as recipe arguments: layer-wise lr decay, linear
evaluation with a frozen encoder (BatchNorm in inference mode), MAE's head options, the transfer
run whose head trains alone before everything unfreezes (resuming across the boundary), and the
class-balanced low-label subset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import saved_state

from vision_jax import config as config_lib
from vision_jax import parallel, trainer
from vision_jax.data import pipeline
from vision_jax.data.sources import build_source, class_balanced_subset
from vision_jax.errors import ConfigError
from vision_jax.optim import param_path

TINY_CNN = ["data.image_size=16", "model.widths=(8,16,16,16)", "batch_size=16"]


def supervised_run(tmp_path, *overrides: str, base: tuple[str, ...] = TINY_CNN) -> trainer.Run:
    return trainer.Run(config_lib.load_config("configs/supervised_digits.py:runlocal", [*base, *overrides]),
                       str(tmp_path))


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def train_steps(run: trainer.Run, state, steps: int):
    batches = pipeline.train_batches(run.train_source, run.augment, global_batch=run.config.batch_size,
                                     seed=run.config.seed, start_step=int(state["step"]))
    step_fn = run.compile_step()
    for _ in range(steps):
        state, _ = step_fn(state, parallel.to_global_batch(next(batches), parallel.batch_sharding(run.mesh)))
    return state


def lr_scales(run: trainer.Run) -> dict[str, float]:
    """Each trained parameter's learning-rate scale: the update of plain SGD (lr 1, no momentum or
    decay) for a gradient of ones is minus that scale."""
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), run.abstract_state["params"])
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = run.optimizer.tx.update(grads, run.optimizer.tx.init(params), params)
    return {param_path(path): -float(u.reshape(-1)[0]) for path, u in jax.tree_util.tree_leaves_with_path(updates)}


SGD_LR_1 = ["optimizer.name=sgd", "optimizer.momentum=0.0", "optimizer.lr=1.0", "optimizer.weight_decay=0.0",
            "optimizer.warmup_steps=0", "optimizer.schedule=constant"]


def test_layer_decay_scales_each_parameter_as_mae_and_per_resnet_stage(tmp_path):
    # MAE's lr_decay.py, written out: num_layers = depth + 1; cls_token, pos_embed and patch_embed are
    # layer 0, blocks.i is layer i + 1, everything else num_layers; scale = decay ** (num_layers - layer).
    def mae_layer_id(name: str, num_layers: int) -> int:
        name = name.removeprefix("encoder/")
        if name in ("cls_token", "pos_embedding") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks/"):
            return int(name.split("/")[1]) + 1
        return num_layers

    vit = supervised_run(tmp_path, *SGD_LR_1, "optimizer.layer_decay=0.65", "model.name=vit", "model.variant=Ti",
                         "model.patch_size=4", "model.image_size=16", "model.depth=3", "model.pool=cls", base=())
    scales = lr_scales(vit)
    assert len(scales) > 40 and "classifier/linear/kernel" in scales and "encoder/norm/scale" in scales
    for name, scale in scales.items():
        assert scale == pytest.approx(0.65 ** (4 - mae_layer_id(name, 4)), rel=1e-6), name
    # ResNet-18 per stage: stem 0, the two blocks of stage s (blocks 2s-2, 2s-1) layer s, head layer 5.
    resnet = supervised_run(tmp_path, *SGD_LR_1, "optimizer.layer_decay=0.75", "model.name=resnet",
                            "model.depth=18", "model.stem=cifar", base=())
    for name, scale in lr_scales(resnet).items():
        layer = (0 if name.startswith("encoder/stem_") else int(name.split("/")[2]) // 2 + 1
                 if name.startswith("encoder/blocks/") else 5)
        assert scale == pytest.approx(0.75 ** (5 - layer), rel=1e-6), name
    for bad in ("0.0", "1.5", "-0.65"):
        with pytest.raises(ConfigError, match=rf"config\.optimizer\.layer_decay={bad} must be in \(0, 1\]"):
            config_lib.load_config("configs/supervised_digits.py:runlocal", [f"optimizer.layer_decay={bad}"])


def test_linear_evaluation_moves_only_the_head_and_never_the_encoder_statistics(tmp_path):
    run = supervised_run(tmp_path, "method.frozen_encoder=True", "method.head_norm=True",
                         "optimizer.weight_decay=0.5", "optimizer.warmup_steps=0")
    start = host(run.init_state())
    end = host(train_steps(run, run.init_state(), 3))
    jax.tree.map(np.testing.assert_array_equal, end["params"]["encoder"], start["params"]["encoder"])
    jax.tree.map(np.testing.assert_array_equal, end["model_state"]["encoder"], start["model_state"]["encoder"])
    assert not np.allclose(end["params"]["classifier"]["linear"]["kernel"],
                           start["params"]["classifier"]["linear"]["kernel"])
    # MAE's head norm has no parameters and tracks the features' statistics in training.
    assert "head_norm" not in start["params"]
    assert not np.allclose(end["model_state"]["head_norm"]["mean"], start["model_state"]["head_norm"]["mean"])
    # Head initializations: zeros (big_vision), trunc_normal std 2e-5 cut at 2 std (MAE).
    zeros = host(supervised_run(tmp_path, "method.head_init=zeros").init_state())
    assert not zeros["params"]["classifier"]["linear"]["kernel"].any()
    kernel = host(supervised_run(tmp_path, "model.widths=(8,16,16,256)", "method.head_init=trunc_normal")
                  .init_state())["params"]["classifier"]["linear"]["kernel"]
    assert np.abs(kernel).max() <= 4e-5 and 1.2e-5 < kernel.std() < 2e-5  # truncation narrows it (0.88 std)


def test_transfer_trains_the_head_alone_then_everything_and_resumes_across_the_boundary(tmp_path):
    transfer = ["optimizer.warmup_steps=0", "optimizer.schedule=constant", "checkpoint.every_steps=1",
                "checkpoint.keep=5", "checkpoint.use_async=False"]

    def config(steps: int):
        c = config_lib.load_config("configs/supervised_digits.py:runlocal", [*TINY_CNN, *transfer])
        c.optimizer.groups.backbone = dict(pattern="^encoder/", frozen_steps=2)
        c.total_steps = steps
        c.evaluators = {}
        return c

    trainer.train(config(4), str(tmp_path / "whole"))
    trainer.train(config(3), str(tmp_path / "stopped"))  # stops one step after the boundary
    trainer.train(config(4), str(tmp_path / "stopped"))  # resumes from step 3
    steps = {step: host(saved_state(tmp_path / "whole", step)) for step in (1, 2, 3)}
    initial = host(trainer.Run(config(4), str(tmp_path / "whole")).init_state())["params"]["encoder"]
    for step in (1, 2):  # the encoder is frozen while the head trains alone (saved keys are strings)
        for saved, fresh in zip(jax.tree.leaves(steps[step]["params"]["encoder"]), jax.tree.leaves(initial)):
            np.testing.assert_array_equal(saved, fresh)
    assert not np.allclose(steps[2]["params"]["classifier"]["linear"]["kernel"],
                           steps[1]["params"]["classifier"]["linear"]["kernel"])
    assert not np.allclose(steps[3]["params"]["encoder"]["convs"]["0"]["kernel"],
                           steps[2]["params"]["encoder"]["convs"]["0"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, host(saved_state(tmp_path / "stopped", 4)),
                 host(saved_state(tmp_path / "whole", 4)))


def test_low_label_subset_is_class_balanced_seeded_and_made_of_the_source_examples(tmp_path):
    source = build_source({"name": "digits"}, "train[:80%]", 8)
    subset = class_balanced_subset(source, 0.1, seed=0)
    assert subset.num_examples == 140  # round(0.1 * 1437 / 10) = 14 of each class
    assert np.bincount(subset.labels).tolist() == [14] * 10
    assert np.array_equal(class_balanced_subset(source, 0.1, seed=0).labels, subset.labels)
    other = class_balanced_subset(source, 0.1, seed=1)
    images = lambda s: np.stack([s.load(np.int64(i))["image"].numpy() for i in range(s.num_examples)])  # noqa: E731
    assert not np.array_equal(images(other), images(subset))
    # Every example of the subset is one of the source's, with its own label.
    everything = images(source)
    for image, label in zip(images(subset), subset.labels):
        matches = np.flatnonzero((everything == image).all(axis=(1, 2, 3)))
        assert label in source.labels[matches]
    run = supervised_run(tmp_path, "data.image_size=8", "data.label_fraction=0.1")
    assert run.train_source.num_examples == run.eval_sources["train"].num_examples == 140
    assert run.eval_sources["test"].num_examples == 360  # the held-out split is whole
    with pytest.raises(ConfigError, match=r"label_fraction=0.001 asks for 0 examples of each of 10 classes"):
        class_balanced_subset(source, 0.001, seed=0)


def test_weight_ema_follows_weights_and_statistics_with_a_constant_decay_and_is_what_evaluation_reads(tmp_path):
    run = supervised_run(tmp_path, "method.ema_decay=0.5", "optimizer.warmup_steps=0")
    state = run.init_state()
    p = [host(state)]
    for _ in range(2):  # the step donates its input: keep host copies
        state = train_steps(run, state, 1)
        p.append(host(state))
    # timm's ModelEmaV2 written out: ema_t = d * ema_(t-1) + (1 - d) * online_t, from ema_0 = online_0.
    ema_params, ema_stats = p[0]["params"]["encoder"], p[0]["model_state"]["encoder"]
    for t in (1, 2):
        ema_params = jax.tree.map(lambda e, o: 0.5 * e + 0.5 * o, ema_params, p[t]["params"]["encoder"])
        ema_stats = jax.tree.map(lambda e, o: 0.5 * e + 0.5 * o, ema_stats, p[t]["model_state"]["encoder"])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                     p[t]["ema"]["ema_encoder"], ema_params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                     p[t]["model_state"]["ema_encoder"], ema_stats)
    assert set(p[2]["ema"]) == {"ema_encoder", "ema_classifier"}
    # Evaluation reads the EMA networks: moving them alone moves the logits.
    images = jnp.zeros((2, 16, 16, 3))
    predict = run._output_fns["method"]["logits"]
    logits = lambda s: np.asarray(predict(s["params"], s["ema"], s["model_state"], images))  # noqa: E731
    moved = {**state, "ema": {**state["ema"], "ema_classifier": jax.tree.map(lambda x: x + 1.0,
                                                                              state["ema"]["ema_classifier"])}}
    assert not np.allclose(logits(moved), logits(state))
