"""ResNet v1.5 (He et al. 2016; stride on the 3x3 conv, as torchvision) with an ImageNet or CIFAR stem.

The CIFAR stem (3x3 conv, stride 1, no max-pool) is what SimCLR and solo-learn use on 32x32
images; the ImageNet stem (7x7 stride 2, then 3x3 max-pool) is the torchvision one.
`width_multiplier` widens every stage and the stem, as SimCLR's ResNet-50 (2x) / (4x)
(Chen et al. 2020, Kolesnikov et al. 2019) and BYOL's wide ResNets.

The module is an encoder: `model(images, train)` returns pooled float32 features of size
`model.num_features`. With `num_classes > 0` it also owns a torchvision-style `fc` layer, applied
by `model.logits(images, train)`; that is for loading pretrained classifiers (models/timm_resnet.py)
and for checking parameter counts against published ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import MODELS
from vision_jax.models.axes import CLASSES, EMBED
from vision_jax.models.layers import BatchNorm, Dtype, conv, linear

# depth -> (block type, blocks per stage); 18-152 as torchvision, 200 as timm's resnet200
# (He et al. 2016b, "Identity mappings", used the same stage sizes).
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STEMS = ("imagenet", "cifar")


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, zero_init_last_bn: bool, dtype: Dtype,
                 param_dtype: Dtype, rngs: nnx.Rngs):
        cout = width * self.expansion
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1, self.bn1 = conv(cin, width, 3, stride, **kw), BatchNorm(width, **kw)
        self.conv2, self.bn2 = conv(width, cout, 3, **kw), BatchNorm(cout, scale_init=_last_bn_init(zero_init_last_bn), **kw)
        self.shortcut = nnx.data(_projection(cin, cout, stride, **kw))

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        return nnx.relu(y + _shortcut(self.shortcut, x, ura))


class BottleneckBlock(nnx.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, zero_init_last_bn: bool, dtype: Dtype,
                 param_dtype: Dtype, rngs: nnx.Rngs):
        cout = width * self.expansion
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1, self.bn1 = conv(cin, width, 1, **kw), BatchNorm(width, **kw)
        self.conv2, self.bn2 = conv(width, width, 3, stride, **kw), BatchNorm(width, **kw)
        self.conv3, self.bn3 = conv(width, cout, 1, **kw), BatchNorm(cout, scale_init=_last_bn_init(zero_init_last_bn), **kw)
        self.shortcut = nnx.data(_projection(cin, cout, stride, **kw))

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        return nnx.relu(y + _shortcut(self.shortcut, x, ura))


def _last_bn_init(zero: bool):
    # Zero gamma on a block's last BN makes every residual block start as the identity, which
    # Goyal et al. 2017 ("Accurate, large minibatch SGD") found helps large-batch training.
    return nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init()


class Projection(nnx.Module):
    """1x1 conv + BN on the shortcut where the block changes shape."""

    def __init__(self, cin: int, cout: int, stride: int, *, dtype: Dtype, param_dtype: Dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv, self.bn = conv(cin, cout, 1, stride, **kw), BatchNorm(cout, **kw)

    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=use_running_average)


def _projection(cin: int, cout: int, stride: int, **kw) -> Projection | None:
    return Projection(cin, cout, stride, **kw) if stride != 1 or cin != cout else None


def _shortcut(projection: Projection | None, x: jax.Array, use_running_average: bool) -> jax.Array:
    return x if projection is None else projection(x, use_running_average)


def _call_block(block: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
    return block(x, train)


# Activation checkpointing per residual block: the backward pass recomputes a block's activations
# from its input instead of keeping them, trading about one extra forward for memory.
_call_block_remat = nnx.remat(_call_block, static_argnums=(2,))


class ResNet(nnx.Module):
    def __init__(self, depth: int, stem: str, *, width_multiplier: int = 1,
                 zero_init_last_bn: bool = False, num_classes: int = 0, remat: bool = False,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        block_type, self.stage_sizes = DEPTHS[depth]
        block_cls = BasicBlock if block_type == "basic" else BottleneckBlock
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.imagenet_stem = stem == "imagenet"
        self.remat = remat
        stem_width = 64 * width_multiplier
        self.stem_conv = conv(3, stem_width, 7 if self.imagenet_stem else 3,
                              2 if self.imagenet_stem else 1, **kw)
        self.stem_bn = BatchNorm(stem_width, **kw)
        blocks, cin = [], stem_width
        for stage, num_blocks in enumerate(self.stage_sizes):
            width = 64 * width_multiplier * 2**stage
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block_cls(cin, width, stride, zero_init_last_bn=zero_init_last_bn, **kw))
                cin = width * block_cls.expansion
        self.blocks = nnx.List(blocks)
        self.num_features = cin
        self.num_classes = num_classes
        self.fc = nnx.data(linear(cin, num_classes, (EMBED, CLASSES), **kw) if num_classes else None)

    def forward_features(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        """{'feature_map': [B, h, w, C] (before pooling), 'pooled': [B, C]}, both float32."""
        x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        if self.imagenet_stem:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        call = _call_block_remat if self.remat else _call_block
        for block in self.blocks:
            x = call(block, x, train)
        feature_map = x.astype(jnp.float32)
        return {"feature_map": feature_map, "pooled": jnp.mean(feature_map, axis=(1, 2))}

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Pooled float32 features [B, num_features]."""
        return self.forward_features(x, train)["pooled"]

    def logits(self, x: jax.Array, train: bool) -> jax.Array:
        """Class logits [B, num_classes] in float32 from the `fc` layer (needs num_classes > 0)."""
        if self.fc is None:
            raise ConfigError("This ResNet has no classifier; build it with num_classes > 0 to get logits.")
        return self.fc(self(x, train)).astype(jnp.float32)


@MODELS.register("resnet")
def resnet(depth: int = 18, stem: str = "imagenet", width_multiplier: int = 1,
           zero_init_last_bn: bool = False, num_classes: int = 0, remat: bool = False, *,
           dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> ResNet:
    """ResNet-{18,34,50,101,152,200} v1.5; see the module docstring for the options."""
    if depth not in DEPTHS:
        raise ConfigError(f"ResNet depth {depth} is not built here; choose one of "
                          f"{', '.join(map(str, sorted(DEPTHS)))}.")
    if stem not in STEMS:
        raise ConfigError(f"ResNet stem {stem!r} is unknown; choose 'imagenet' (224px images) or "
                          f"'cifar' (32px images).")
    if not isinstance(width_multiplier, int) or width_multiplier < 1:
        raise ConfigError(f"ResNet width_multiplier must be a positive integer (1, 2 or 4 as in "
                          f"SimCLR), got {width_multiplier!r}.")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"ResNet num_classes must be 0 (no classifier) or a positive integer, "
                          f"got {num_classes!r}.")
    return ResNet(depth, stem, width_multiplier=width_multiplier, zero_init_last_bn=zero_init_last_bn,
                  num_classes=num_classes, remat=remat, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
