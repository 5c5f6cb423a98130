"""Models match their published sizes and behave as their options say."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax.models import MODELS


def param_count(name, **options) -> int:
    # eval_shape: counts without allocating (ResNet-50 would be 100 MB).
    model = nnx.eval_shape(lambda: MODELS.build(name, options, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("depth,published", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_resnet_parameter_counts_match_torchvision(depth, published):
    # torchvision's counts include the 1000-class fc head; our encoders end at the pooled features.
    features = 512 if depth < 50 else 2048
    head = features * 1000 + 1000
    assert param_count("resnet", depth=depth, stem="imagenet") + head == published


def test_cifar_stem_keeps_resolution_and_imagenet_stem_reduces_it():
    x = jnp.ones((2, 32, 32, 3))
    cifar = MODELS.build("resnet", {"depth": 18, "stem": "cifar"}, rngs=nnx.Rngs(0))
    imagenet = MODELS.build("resnet", {"depth": 18, "stem": "imagenet"}, rngs=nnx.Rngs(0))
    # Same parameters but the stem conv (3x3 vs 7x7 kernel).
    assert param_count("resnet", depth=18, stem="imagenet") - param_count("resnet", depth=18, stem="cifar") == (49 - 9) * 3 * 64
    stem_out_cifar = cifar.stem_conv(x)
    assert stem_out_cifar.shape == (2, 32, 32, 64)
    assert imagenet.stem_conv(x).shape == (2, 16, 16, 64)
    assert cifar(x, train=False).shape == imagenet(x, train=False).shape == (2, 512)


def test_train_mode_updates_batch_norm_statistics_and_eval_mode_does_not():
    model = MODELS.build("cnn", {"widths": (8, 16)}, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)) * 3 + 1
    before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    model(x, train=False)
    unchanged = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    model(x, train=True)
    after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, unchanged)
    assert not np.allclose(before["norms"][0]["mean"], after["norms"][0]["mean"])


def test_unsupported_resnet_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="depth 19.*18, 34, 50"):
        MODELS.build("resnet", {"depth": 19}, rngs=nnx.Rngs(0))
