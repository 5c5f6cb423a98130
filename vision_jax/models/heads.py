"""Heads that methods put on an encoder's pooled features.

Every head computes its Linear layers in `dtype`, keeps BatchNorm in float32 (layers.BatchNorm)
and returns float32, so losses never see half precision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models.axes import CLASSES, EMBED, MLP, partitioned
from vision_jax.models.layers import BatchNorm, Dtype, linear


class LinearClassifier(nnx.Module):
    """One Linear layer from features to class logits (supervised training, linear probes)."""

    def __init__(self, num_features: int, num_classes: int, *, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, kernel_init=nnx.initializers.lecun_normal(), rngs: nnx.Rngs):
        self.linear = linear(num_features, num_classes, (EMBED, CLASSES), dtype=dtype,
                             param_dtype=param_dtype, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x).astype(jnp.float32)


class ProjectionHead(nnx.Module):
    """SimCLR's MLP projection (Chen et al. 2020): (Linear-BN-ReLU) x (num_layers-1), then Linear.

    SimCLR v1 uses 2 layers, v2 3. The hidden Linears have no bias by default (a bias right before
    BN is cancelled by its mean subtraction); `hidden_bias=True` keeps one, as BYOL's reference
    does. No BN on the output unless `output_bn=True`, which adds one without scale and bias
    (MoCo v3's projector, "following SimCLR's design"); MoCo v3's output Linear has no bias
    either (`output_bias=False`).
    """

    def __init__(self, num_features: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 *, hidden_bias: bool = False, output_bias: bool = True, output_bn: bool = False,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        if num_layers < 1:
            raise ConfigError(f"A projection head needs num_layers >= 1, got {num_layers}.")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dims = [num_features] + [hidden_dim] * (num_layers - 1)
        # Only the first hidden layer's input is the encoder's EMBED axis; a hidden-to-hidden
        # layer names just its output so that no mesh axis appears twice in one spec.
        self.hidden = nnx.List([linear(a, b, (EMBED if i == 0 else None, MLP), use_bias=hidden_bias, **kw)
                                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.norms = nnx.List([BatchNorm(b, **kw) for b in dims[1:]])
        # A single layer maps EMBED to the head's own width (MLP); after hidden layers, MLP to EMBED.
        self.out = linear(dims[-1], out_dim, (MLP, EMBED) if num_layers > 1 else (EMBED, MLP),
                          use_bias=output_bias, **kw)
        self.out_norm = nnx.data(BatchNorm(out_dim, affine=False, **kw) if output_bn else None)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for layer, norm in zip(self.hidden, self.norms):
            x = nnx.relu(norm(layer(x), use_running_average=not train))
        x = self.out(x)
        if self.out_norm is not None:
            x = self.out_norm(x, use_running_average=not train)
        return x.astype(jnp.float32)


class MLPHead(ProjectionHead):
    """BYOL's projector and predictor (Grill et al. 2020): Linear(4096)-BN-ReLU-Linear(256).

    The reference (deepmind-research byol, `MLP`) gives the hidden Linear a bias; so does this.
    """

    def __init__(self, num_features: int, hidden_dim: int = 4096, out_dim: int = 256, *,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        super().__init__(num_features, hidden_dim, out_dim, num_layers=2, hidden_bias=True,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis, in float32 (torch.nn.functional.normalize)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class DINOHead(nnx.Module):
    """DINO's projection head (Caron et al. 2021; facebookresearch/dino `DINOHead`).

    A `num_layers` MLP (hidden 2048, GELU, optional BN) down to a 256-d bottleneck, which is
    l2-normalized, then a weight-normalized Linear (no bias) to `out_dim` = 65536 prototypes.
    The weight norm is W[:, k] = g_k * v[:, k] / ||v[:, k]||. With `norm_last_layer=True` (the
    reference's default) g is fixed to 1, so it is not a parameter here at all; with False g is a
    trainable parameter initialized to 1. Hidden Linears start from trunc_normal(0.02) and zero
    biases as the reference's `_init_weights`; `v` from PyTorch's default Linear init, since the
    reference builds the last layer after applying `_init_weights`.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, num_layers: int = 3, use_bn: bool = False,
                 norm_last_layer: bool = True, *, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        if num_layers < 1:
            raise ConfigError(f"A DINO head needs num_layers >= 1, got {num_layers}.")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        init = nnx.initializers.truncated_normal(stddev=0.02)
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.hidden = nnx.List([linear(a, b, (EMBED if i == 0 else None, MLP), kernel_init=init, **kw)
                                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.norms = nnx.List([BatchNorm(b, **kw) for b in dims[1:]] if use_bn else [])
        self.bottleneck = linear(dims[-1], bottleneck_dim, (MLP, EMBED) if num_layers > 1 else (EMBED, MLP),
                                 kernel_init=init, **kw)
        # PyTorch's Linear default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        torch_linear_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        self.direction = nnx.Param(partitioned(torch_linear_init, (EMBED, CLASSES))(
            rngs.params(), (bottleneck_dim, out_dim), param_dtype))
        self.gain = nnx.data(None if norm_last_layer else nnx.Param(
            partitioned(nnx.initializers.ones_init(), (CLASSES,))(rngs.params(), (out_dim,), param_dtype)))
        self.dtype = dtype

    def embed(self, x: jax.Array, train: bool) -> jax.Array:
        """The l2-normalized bottleneck features [B, bottleneck_dim], float32."""
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms:
                x = self.norms[i](x, use_running_average=not train)
            x = nnx.gelu(x, approximate=False)  # torch.nn.GELU is the exact (erf) GELU
        return l2_normalize(self.bottleneck(x))

    def prototype_logits(self, z: jax.Array) -> jax.Array:
        """Prototype logits [B, out_dim], float32, from `embed`'s output."""
        v = self.direction[...].astype(jnp.float32)
        weight = v / jnp.linalg.norm(v, axis=0, keepdims=True)
        if self.gain is not None:
            weight = weight * self.gain[...].astype(jnp.float32)
        return jnp.dot(z.astype(self.dtype), weight.astype(self.dtype)).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Prototype logits [B, out_dim], float32."""
        return self.prototype_logits(self.embed(x, train))
