"""ResNet v1.5 (stride on the 3x3 conv) with an ImageNet stem or a CIFAR stem.

The CIFAR stem (3x3 conv, stride 1, no max-pool) is what SimCLR and solo-learn use on 32x32
images; the ImageNet stem (7x7 stride 2, then 3x3 max-pool) is the torchvision one.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.models import MODELS
from vision_jax.models.layers import batch_norm, conv

# depth -> (block type, blocks per stage)
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1, self.bn1 = conv(cin, width, 3, stride, rngs=rngs), batch_norm(width, rngs=rngs)
        self.conv2, self.bn2 = conv(width, cout, 3, rngs=rngs), batch_norm(cout, rngs=rngs)
        self.shortcut = nnx.data(_projection(cin, cout, stride, rngs=rngs))

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        return nnx.relu(y + _shortcut(self.shortcut, x, ura))


class BottleneckBlock(nnx.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1, self.bn1 = conv(cin, width, 1, rngs=rngs), batch_norm(width, rngs=rngs)
        self.conv2, self.bn2 = conv(width, width, 3, stride, rngs=rngs), batch_norm(width, rngs=rngs)
        self.conv3, self.bn3 = conv(width, cout, 1, rngs=rngs), batch_norm(cout, rngs=rngs)
        self.shortcut = nnx.data(_projection(cin, cout, stride, rngs=rngs))

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        return nnx.relu(y + _shortcut(self.shortcut, x, ura))


class Projection(nnx.Module):
    """1x1 conv + BN on the shortcut where the block changes shape."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv, self.bn = conv(cin, cout, 1, stride, rngs=rngs), batch_norm(cout, rngs=rngs)

    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=use_running_average)


def _projection(cin: int, cout: int, stride: int, *, rngs: nnx.Rngs) -> Projection | None:
    return Projection(cin, cout, stride, rngs=rngs) if stride != 1 or cin != cout else None


def _shortcut(projection: Projection | None, x: jax.Array, use_running_average: bool) -> jax.Array:
    return x if projection is None else projection(x, use_running_average)


class ResNet(nnx.Module):
    def __init__(self, depth: int, stem: str, *, rngs: nnx.Rngs):
        block_type, stage_sizes = DEPTHS[depth]
        block_cls = BasicBlock if block_type == "basic" else BottleneckBlock
        self.imagenet_stem = stem == "imagenet"
        self.stem_conv = conv(3, 64, 7 if self.imagenet_stem else 3, 2 if self.imagenet_stem else 1, rngs=rngs)
        self.stem_bn = batch_norm(64, rngs=rngs)
        blocks, cin = [], 64
        for stage, num_blocks in enumerate(stage_sizes):
            width = 64 * 2**stage
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block_cls(cin, width, stride, rngs=rngs))
                cin = width * block_cls.expansion
        self.blocks = nnx.List(blocks)
        self.num_features = cin

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        if self.imagenet_stem:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x, train)
        return jnp.mean(x, axis=(1, 2))


@MODELS.register("resnet")
def resnet(depth: int = 18, stem: str = "imagenet", *, rngs: nnx.Rngs) -> ResNet:
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth {depth} is not built here; choose one of {sorted(DEPTHS)}.")
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"ResNet stem {stem!r} is unknown; choose 'imagenet' or 'cifar'.")
    return ResNet(depth, stem, rngs=rngs)
