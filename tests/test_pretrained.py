"""config.init.source with a timm file: the trainer's encoder starts from timm-layout weights in a .safetensors file
(the file is written here in torchvision/timm ResNet-18 layout; tests/test_timm.py checks the
converters against timm itself when torch is installed)."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from vision_jax import config as config_lib
from vision_jax import parallel
from vision_jax.data import pipeline
from vision_jax.errors import MissingDataError
from vision_jax.trainer import Run

WIDTHS = (64, 128, 256, 512)


def resnet18_timm_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {}

    def conv(name, cout, cin, k):
        weights[f"{name}.weight"] = rng.normal(0, 0.05, (cout, cin, k, k)).astype(np.float32)

    def bn(name, c):
        weights.update({f"{name}.weight": rng.uniform(0.5, 1.5, c), f"{name}.bias": rng.normal(0, 0.1, c),
                        f"{name}.running_mean": rng.normal(0, 0.1, c), f"{name}.running_var": rng.uniform(0.5, 2, c)})
        weights[f"{name}.num_batches_tracked"] = np.array(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, width in enumerate(WIDTHS, start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1", width, cin, 3)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width, 3)
            bn(f"{prefix}.bn2", width)
            if block == 0 and stage > 1:
                conv(f"{prefix}.downsample.0", width, cin, 1)
                bn(f"{prefix}.downsample.1", width)
            cin = width
    weights["fc.weight"] = rng.normal(0, 0.01, (1000, 512))
    weights["fc.bias"] = np.zeros(1000)
    return {k: np.asarray(v, np.float32 if v.dtype.kind == "f" else v.dtype) for k, v in weights.items()}


def resnet18_config(workdir, pretrained: str):
    c = config_lib.load_config("configs/supervised_digits.py:runlocal")
    c.model = dict(name="resnet", depth=18, stem="imagenet")
    c.init.source = pretrained
    return c


def test_encoder_starts_from_the_pretrained_weights_and_random_init_does_not(tmp_path):
    weights = resnet18_timm_state_dict()
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    run = Run(resnet18_config(tmp_path, str(path)), str(tmp_path))
    state = run.init_state()
    encoder, stats = state["params"]["encoder"], state["model_state"]["encoder"]
    np.testing.assert_array_equal(np.asarray(encoder["stem_conv"]["kernel"]),
                                  weights["conv1.weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
    np.testing.assert_array_equal(np.asarray(encoder["blocks"][7]["conv2"]["kernel"]),
                                  weights["layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(stats["blocks"][2]["shortcut"]["bn"]["var"]),
                                  weights["layer2.0.downsample.1.running_var"])
    # The method's own head is not in the file: it keeps its fresh initialization, as does the
    # random_init baseline's encoder.
    fresh = run.init_state(from_init=False)
    np.testing.assert_array_equal(np.asarray(state["params"]["classifier"]["linear"]["kernel"]),
                                  np.asarray(fresh["params"]["classifier"]["linear"]["kernel"]))
    assert not np.allclose(np.asarray(fresh["params"]["encoder"]["stem_conv"]["kernel"]),
                           np.asarray(encoder["stem_conv"]["kernel"]))


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    run = Run(resnet18_config(tmp_path, str(tmp_path / "nope.safetensors")), str(tmp_path))
    with pytest.raises(MissingDataError, match=r"config\.init\.source=.*nope\.safetensors.* does not exist"):
        run.init_state()


def test_followers_start_from_the_pretrained_encoder_and_train(tmp_path):
    # BYOL's EMA target must begin as the loaded encoder (not the random one), in buffers of its own
    # (the step donates the state: a shared buffer would be donated twice).
    path = tmp_path / "model.safetensors"
    save_file(resnet18_timm_state_dict(), str(path))
    c = config_lib.load_config("configs/ssl_digits.py:method=byol,runlocal",
                               ["method.projection_hidden_dim=16", "method.prediction_hidden_dim=16", "batch_size=8"])
    c.model = dict(name="resnet", depth=18, stem="imagenet")
    c.init.source = str(path)
    run = Run(c, str(tmp_path))
    state = run.init_state()
    np.testing.assert_array_equal(np.asarray(state["ema"]["target_encoder"]["stem_conv"]["kernel"]),
                                  np.asarray(state["params"]["encoder"]["stem_conv"]["kernel"]))
    batch = next(pipeline.train_batches(run.train_source, run.augment, global_batch=8, seed=0, start_step=0))
    state, metrics = run.compile_step()(state, parallel.to_global_batch(batch, parallel.batch_sharding(run.mesh)))
    assert bool(metrics["finite"])
