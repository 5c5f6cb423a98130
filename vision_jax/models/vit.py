"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), ready for
supervised training, DINO (several input sizes in one step) and MAE (encoder on visible tokens).

Layout and sizes follow timm's `vit_*_patch*_224` (pre-norm blocks, LayerNorm eps 1e-6, exact
GELU, learned position embedding with a slot for the cls token), so parameter counts equal
timm's and `timm_vit.py` converts its weights one to one. Initialization follows MAE
(He et al. 2022, `models_mae.py`): xavier-uniform linear and patch-embedding weights (the
patch embedding seen as a [p*p*3, width] matrix), zero biases, N(0, 0.02) cls token and learned
position embedding; the classifier starts at zero as in big_vision (`head_zeroinit`).

Every parameter carries logical axis names (models/axes.py) so that the sharding rules can split
heads and MLP units (tensor parallel) or the model width (FSDP) without touching this file.

Precision: matmuls run in `dtype` with parameters stored in `param_dtype`; LayerNorm computes
in float32, and so does the attention softmax (`jax.nn.dot_product_attention` computes logits
and softmax in float32 for bfloat16 inputs, in its XLA path; cuDNN flash attention accumulates
in float32); pooled features and logits come out float32. The residual stream is in `dtype`.

Stochastic depth (`drop_path_rate` > 0) draws its masks from the 'dropout' stream of the
`nnx.Rngs` given at construction: each block keeps a forked stream (a key and a counter, both
non-Param state) and every training-mode call advances the counter, so the masks change from
step to step as long as the caller carries the model's non-Param state forward (the trainer's
`model_state` does). Build the model with `nnx.Rngs(params=..., dropout=...)`; without a
'dropout' (or 'default') stream, drop_path_rate > 0 is a ConfigError at construction.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import MODELS, conv
from vision_jax.models.axes import (
    CLASSES,
    CONV_IN,
    EMBED,
    HEAD_DIM,
    HEADS,
    MLP,
    partitioned,
)

# variant -> (width, depth, heads, mlp_dim), from the ViT paper (Table 1) and DeiT (Ti, S).
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
POOLS = ("cls", "gap")
POSEMBS = ("learned", "sincos2d")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
LAYER_NORM_EPS = 1e-6  # timm, big_vision and MAE all use 1e-6 for ViT (PyTorch's default is 1e-5)

zeros = nnx.initializers.zeros
ones = nnx.initializers.ones


class ParamKeys:
    """Initializer keys split off one key by a Python counter.

    Why not `rngs.params()` per parameter: under tracing (`nnx.eval_shape`, `jit` of the init,
    which the trainer does three times) each call updates nnx.Rngs' traced counter, and with
    JAX 0.10.2 + Flax 0.12.8 every such update costs time proportional to everything traced so
    far (Variable.set_value probes `tracer.sharding`, whose error message walks the whole trace;
    jax-ml/jax#40041). ViT-H's ~1,000 parameters took 13 s to trace under `nnx.eval_shape` on a
    2-core CPU that way, 0.6 s with one `rngs.params()` per model.
    """

    def __init__(self, key: jax.Array):
        self.key, self.count = key, 0

    def __call__(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with float32 statistics (two-pass variance, as PyTorch),
    output in the compute dtype; eps 1e-6 as timm, big_vision and MAE use for ViT."""

    def __init__(self, width: int, *, dtype, param_dtype):
        self.scale = nnx.Param(partitioned(ones, (EMBED,))(None, (width,), param_dtype))
        self.bias = nnx.Param(partitioned(zeros, (EMBED,))(None, (width,), param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


class Dense(nnx.Module):
    """y = x . W + b, contracting the last `len(in_shape)` dims of x; W is [*in_shape, *out_shape].

    Several input/output dims (e.g. [width] -> [heads, head_dim]) keep the head axis visible to
    the sharding rules. Xavier-uniform over the flattened [prod(in), prod(out)] view (MAE).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], names: tuple[str | None, ...], *,
                 dtype, param_dtype, keys: ParamKeys, kernel_init=None):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        n_in = len(in_shape)
        if kernel_init is None:
            kernel_init = nnx.initializers.xavier_uniform(
                in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + len(out_shape))))
        self.kernel = nnx.Param(partitioned(kernel_init, names)(keys(), in_shape + out_shape, param_dtype))
        self.bias = nnx.Param(partitioned(zeros, names[n_in:])(None, out_shape, param_dtype))
        self.num_in_dims, self.dtype = n_in, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.kernel[...].astype(self.dtype), self.bias[...].astype(self.dtype)
        batch_shape, in_shape = x.shape[:x.ndim - self.num_in_dims], kernel.shape[:self.num_in_dims]
        # One 2-D matmul over the flattened rows (reshapes of contiguous dims, no copies): its kernel
        # gradient then contracts the rows of x and dy where they lie. Contracting over [B, N] (a
        # tensordot of the 3-D activation) makes XLA:CPU copy one of them transposed first, an
        # activation-sized copy per layer (README, "Measured train step": the ViT's step +8%).
        # The same sums either way.
        rows = x.astype(self.dtype).reshape(-1, math.prod(in_shape))
        y = jnp.dot(rows, kernel.reshape(rows.shape[1], -1))
        return y.reshape(*batch_shape, *kernel.shape[self.num_in_dims:]) + bias


def attention_implementation(requested: str, dtype, head_dim: int) -> str:
    """The `implementation` passed to `jax.nn.dot_product_attention`.

    JAX 0.10 does not pick cuDNN by itself (`implementation=None` means XLA). 'auto' asks for
    cuDNN flash attention where it can run: on a GPU, in bfloat16/float16 (cuDNN has no float32
    kernel), with a head dimension that is a multiple of 8 and at most 128 (every ViT variant
    here: 64, or 80 for H). Elsewhere, CPU and TPU included, the XLA implementation.
    """
    if requested != "auto":
        return requested
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if jax.default_backend() == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


class MultiHeadAttention(nnx.Module):
    """Self-attention with separate q/k/v kernels [width, heads, head_dim] (timm fuses them; the
    converter splits), through `jax.nn.dot_product_attention` (softmax(QK^T / sqrt(d)) V)."""

    def __init__(self, width: int, heads: int, *, attention_impl: str = "auto", dtype, param_dtype,
                 keys: ParamKeys):
        head_dim = width // heads
        project_in = functools.partial(Dense, (width,), (heads, head_dim), (EMBED, HEADS, HEAD_DIM),
                                       dtype=dtype, param_dtype=param_dtype, keys=keys)
        self.query, self.key, self.value = project_in(), project_in(), project_in()
        self.out = Dense((heads, head_dim), (width,), (HEADS, HEAD_DIM, EMBED), dtype=dtype,
                         param_dtype=param_dtype, keys=keys)
        self.implementation = attention_implementation(attention_impl, dtype, head_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, N, heads, head_dim]
        return self.out(jax.nn.dot_product_attention(q, k, v, implementation=self.implementation))


class MlpBlock(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, *, dtype, param_dtype, keys: ParamKeys):
        self.fc1 = Dense((width,), (mlp_dim,), (EMBED, MLP), dtype=dtype, param_dtype=param_dtype, keys=keys)
        self.fc2 = Dense((mlp_dim,), (width,), (MLP, EMBED), dtype=dtype, param_dtype=param_dtype, keys=keys)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Exact (erf) GELU, as timm's nn.GELU; the tanh approximation would drift from its weights.
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class LayerScale(nnx.Module):
    """Per-channel scale of a residual branch, initialized small (CaiT, Touvron et al. 2021; DINOv2)."""

    def __init__(self, width: int, init_value: float, *, param_dtype):
        self.gamma = nnx.Param(partitioned(nnx.initializers.constant(init_value), (EMBED,))(
            None, (width,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].astype(x.dtype)


class EncoderBlock(nnx.Module):
    """Pre-norm block: x + DropPath(LS(Attn(LN(x)))), then x + DropPath(LS(MLP(LN(x))))."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, drop_path: float = 0.0,
                 layer_scale_init: float | None = None, attention_impl: str = "auto", dtype, param_dtype,
                 keys: ParamKeys, rngs: nnx.Rngs | None = None):
        """`rngs` (its 'dropout' stream) is needed only when drop_path > 0."""
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        self.norm1 = LayerNorm(width, **kw)
        self.attn = MultiHeadAttention(width, heads, attention_impl=attention_impl, keys=keys, **kw)
        self.norm2 = LayerNorm(width, **kw)
        self.mlp = MlpBlock(width, mlp_dim, keys=keys, **kw)
        self.ls1 = nnx.data(LayerScale(width, layer_scale_init, param_dtype=param_dtype) if layer_scale_init else None)
        self.ls2 = nnx.data(LayerScale(width, layer_scale_init, param_dtype=param_dtype) if layer_scale_init else None)
        # Stochastic depth (Huang et al. 2016) is dropout of a whole residual branch per example:
        # one mask entry per example, broadcast over tokens and channels. One stream serves both
        # branches; each call draws a fresh key, so their masks are independent.
        self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2),
                                     rngs=_dropout_stream(rngs) if drop_path > 0 else None)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x + self._branch(self.attn(self.norm1(x)), self.ls1, train)
        return x + self._branch(self.mlp(self.norm2(x)), self.ls2, train)

    def _branch(self, y: jax.Array, layer_scale: LayerScale | None, train: bool) -> jax.Array:
        y = y if layer_scale is None else layer_scale(y)
        return self.drop_path(y, deterministic=not train)


def _dropout_stream(rngs: nnx.Rngs | None) -> nnx.RngStream:
    if rngs is None or ("dropout" not in rngs and "default" not in rngs):
        raise ConfigError(
            "drop_path_rate > 0 needs random numbers in training: build the model with an nnx.Rngs "
            "that has a 'dropout' stream, e.g. nnx.Rngs(params=key1, dropout=key2) (this one has "
            f"only {sorted(name for name, _ in (rngs.items() if rngs else ()))}).")
    return rngs["dropout"]


def posemb_sincos_2d(grid: tuple[int, int], width: int, temperature: float = 10_000.0,
                     endpoint: bool = True) -> jax.Array:
    """Fixed 2-D sin-cos position embedding [1, h*w, width]: a quarter of the channels each for
    sin/cos of the column and of the row, at frequencies temperature**-e for width/4 exponents e
    evenly spaced from 0, reaching 1 with `endpoint` (k / (width/4 - 1)) or stopping one step
    short of it without (k / (width/4)).

    endpoint=True is big_vision's `posemb_sincos_2d` (the encoder's posemb='sincos2d');
    endpoint=False is MAE's `get_2d_sincos_pos_embed` (He et al. 2022, `util/pos_embed.py`; MoCo
    v3's spacing too), which the MAE decoder uses."""
    if width % 4:
        raise ConfigError(f"posemb='sincos2d' needs a width divisible by 4, got {width}.")
    y, x = np.mgrid[:grid[0], :grid[1]]
    num_frequencies = width // 4
    omega = 1.0 / temperature ** (np.arange(num_frequencies) / max(num_frequencies - int(endpoint), 1))
    y = np.einsum("m,d->md", y.reshape(-1), omega)
    x = np.einsum("m,d->md", x.reshape(-1), omega)
    posemb = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(posemb, jnp.float32)[None]


def resize_posemb(posemb: jax.Array, new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> jax.Array:
    """Resamples a learned position embedding [1, prefix + g*g, D] to a grid [gh, gw].

    The first `num_prefix_tokens` slots (the cls token's) are kept as they are; the g x g patch
    grid is resized bicubically with antialiasing, which is what timm's `resample_abs_pos_embed`
    does by default (PyTorch's antialiased bicubic and `jax.image`'s are the same Keys kernel).
    Used when loading a checkpoint made at another resolution and, on the fly, when the encoder
    sees images of another size than it was built for.
    """
    prefix, patches = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ValueError(f"A position embedding with {posemb.shape[1]} slots, {num_prefix_tokens} of them "
                         f"prefix (cls) slots, has no square patch grid; check num_prefix_tokens.")
    gh, gw = new_grid
    width = posemb.shape[-1]
    grid = patches.reshape(1, old, old, width).astype(jnp.float32)
    resized = jax.image.resize(grid, (1, gh, gw, width), method="bicubic", antialias=True)
    return jnp.concatenate([prefix, resized.reshape(1, gh * gw, width).astype(posemb.dtype)], axis=1)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], each patch flattened row, column, channel (MAE)."""
    _check_divisible(images.shape[1:3], patch_size)
    return einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: jax.Array, patch_size: int, grid: tuple[int, int] | None = None,
               channels: int = 3) -> jax.Array:
    """Inverse of `patchify`; `grid` (patch rows, columns) defaults to a square one."""
    n = patches.shape[1]
    gh, gw = grid if grid is not None else (math.isqrt(n),) * 2
    if gh * gw != n:
        raise ValueError(f"{n} patches do not fill a {gh}x{gw} grid; pass the grid explicitly.")
    return einops.rearrange(patches, "b (h w) (p q c) -> b (h p) (w q) c", h=gh, w=gw, p=patch_size,
                            q=patch_size, c=channels)


def _check_divisible(size: tuple[int, int], patch_size: int) -> None:
    if size[0] % patch_size or size[1] % patch_size:
        raise ValueError(f"Image size {size[0]}x{size[1]} is not a multiple of the patch size {patch_size}; "
                         f"resize or crop the images to a multiple of {patch_size}.")


class PatchEmbedding(nnx.Module):
    """A p x p convolution with stride p: a linear map of each flattened patch to the width.

    Kernel [p, p, 3, width] (a convolution's HWIO layout, so the timm converter only transposes),
    xavier-uniform over its [p*p*3, width] view as MAE initializes it.
    """

    def __init__(self, patch_size: int, width: int, *, dtype, param_dtype, keys: ParamKeys):
        init = nnx.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3)
        self.kernel = nnx.Param(partitioned(init, (None, None, CONV_IN, EMBED))(
            keys(), (patch_size, patch_size, 3, width), param_dtype))
        self.bias = nnx.Param(partitioned(zeros, (EMBED,))(None, (width,), param_dtype))
        self.patch_size, self.dtype = patch_size, dtype

    def __call__(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] -> [B, H/p, W/p, width]."""
        p = self.patch_size
        y = conv.conv_general_dilated(images.astype(self.dtype), self.kernel[...].astype(self.dtype),
                                         window_strides=(p, p), padding="VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...].astype(self.dtype)


class VisionTransformer(nnx.Module):
    """ViT encoder: `model(images, train)` -> pooled float32 features [B, width].

    pool='cls' prepends a cls token and pools it; pool='gap' has no cls token and averages the
    patch tokens (big_vision). Both pool after the final LayerNorm.
    """

    def __init__(self, *, width: int, depth: int, heads: int, mlp_dim: int, patch_size: int = 16,
                 image_size: int = 224, pool: str = "cls", posemb: str = "learned", drop_path_rate: float = 0.0,
                 layer_scale_init: float | None = None, num_classes: int = 0, remat: bool = False,
                 attention_impl: str = "auto", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_options(width, heads, patch_size, image_size, pool, posemb, drop_path_rate, layer_scale_init,
                       num_classes, attention_impl)
        keys = ParamKeys(rngs.params())
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        self.num_features, self.patch_size, self.dtype = width, patch_size, dtype
        self.grid_size = (image_size // patch_size,) * 2
        self.num_prefix_tokens = 1 if pool == "cls" else 0
        self.pool, self.posemb_type, self.remat = pool, posemb, remat

        self.patch_embed = PatchEmbedding(patch_size, width, keys=keys, **kw)
        token_init = nnx.initializers.normal(0.02)
        self.cls_token = nnx.data(nnx.Param(partitioned(token_init, (None, None, EMBED))(
            keys(), (1, 1, width), param_dtype)) if pool == "cls" else None)
        # Learned: one slot per patch plus the cls token's (timm's layout; fixed sincos gives the
        # cls token no position, as MoCo v3 does with its zero slot).
        num_slots = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embedding = nnx.data(nnx.Param(partitioned(token_init, (None, None, EMBED))(
            keys(), (1, num_slots, width), param_dtype)) if posemb == "learned" else None)

        # Stochastic depth grows linearly with depth, 0 for the first block (timm, DeiT).
        rates = np.linspace(0.0, drop_path_rate, depth)
        self.blocks = nnx.List([EncoderBlock(width, heads, mlp_dim, drop_path=float(rate),
                                             layer_scale_init=layer_scale_init, attention_impl=attention_impl,
                                             keys=keys, rngs=rngs, **kw) for rate in rates])
        self.norm = LayerNorm(width, **kw)
        self.head = nnx.data(Dense((width,), (num_classes,), (EMBED, CLASSES), kernel_init=zeros, keys=keys, **kw)
                             if num_classes else None)

    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        return self.pool_tokens(self.forward_tokens(images, train))

    def logits(self, images: jax.Array, train: bool) -> jax.Array:
        """Class logits (float32) from the model's own head; needs num_classes > 0."""
        if self.head is None:
            raise ValueError("This ViT has no classifier head (num_classes=0); use its pooled features.")
        return self.head(self(images, train)).astype(jnp.float32)

    def pool_tokens(self, tokens: jax.Array) -> jax.Array:
        """Pooled float32 features [B, width] from `forward_tokens`' output."""
        tokens = tokens.astype(jnp.float32)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, self.num_prefix_tokens:].mean(axis=1)

    def forward_tokens(self, images: jax.Array, train: bool, keep_indices: jax.Array | None = None) -> jax.Array:
        """Token sequence after the final LayerNorm, [B, prefix + N, width] in the compute dtype,
        the cls token first when pool='cls'.

        `keep_indices` [B, K] (from `random_masking`) keeps K of the N patch tokens, chosen after
        the position embedding is added, so the blocks run on the visible tokens only (MAE).
        Images of another size than `image_size` (DINO's local crops) get the position embedding
        resampled to their grid.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ViT expects images [batch, height, width, 3], got shape {images.shape}.")
        _check_divisible(images.shape[1:3], self.patch_size)
        x = self.patch_embed(images.astype(self.dtype))
        b, gh, gw, width = x.shape
        x = x.reshape(b, gh * gw, width)
        if self.pos_embedding is not None:
            posemb = self.pos_embedding[...]
            if (gh, gw) != self.grid_size:
                posemb = resize_posemb(posemb, (gh, gw), self.num_prefix_tokens)
            prefix_posemb, patch_posemb = posemb[:, :self.num_prefix_tokens], posemb[:, self.num_prefix_tokens:]
        else:
            prefix_posemb, patch_posemb = 0.0, posemb_sincos_2d((gh, gw), width)
        x = x + patch_posemb.astype(self.dtype)
        if keep_indices is not None:
            x = jnp.take_along_axis(x, keep_indices[:, :, None], axis=1)
        if self.cls_token is not None:
            cls = (self.cls_token[...] + prefix_posemb).astype(self.dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, width)), x], axis=1)
        for block in self.blocks:
            x = _run_block(block, x, train, self.remat)
        return self.norm(x)


def _run_block(block: EncoderBlock, x: jax.Array, train: bool, remat: bool) -> jax.Array:
    if not remat:
        return block(x, train)
    # Recompute the block's activations in the backward pass instead of storing them: memory
    # per block drops to its input, for about one extra forward pass of compute.
    return nnx.remat(lambda block, x: block(x, train))(block, x)


def _check_options(width, heads, patch_size, image_size, pool, posemb, drop_path_rate, layer_scale_init,
                   num_classes, attention_impl) -> None:
    if pool not in POOLS:
        raise ConfigError(f"ViT pool={pool!r} is unknown; choose one of {POOLS}.")
    if posemb not in POSEMBS:
        raise ConfigError(f"ViT posemb={posemb!r} is unknown; choose one of {POSEMBS}.")
    if attention_impl not in ATTENTION_IMPLS:
        raise ConfigError(f"ViT attention_impl={attention_impl!r} is unknown; choose one of {ATTENTION_IMPLS}.")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ConfigError(f"ViT patch_size must be a positive integer, got {patch_size!r}.")
    if image_size % patch_size:
        raise ConfigError(f"ViT image_size={image_size} is not a multiple of patch_size={patch_size}; the "
                          f"position-embedding grid must be whole.")
    if width % heads:
        raise ConfigError(f"ViT width {width} is not divisible by its {heads} heads.")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ConfigError(f"ViT drop_path_rate must be in [0, 1), got {drop_path_rate}.")
    if layer_scale_init is not None and layer_scale_init <= 0:
        raise ConfigError(f"ViT layer_scale_init must be None or > 0 (e.g. 1e-5), got {layer_scale_init}.")
    if num_classes < 0:
        raise ConfigError(f"ViT num_classes must be >= 0 (0: no head), got {num_classes}.")


@MODELS.register("vit")
def vit(variant: str = "B", patch_size: int = 16, image_size: int = 224, pool: str = "cls",
        posemb: str = "learned", drop_path_rate: float = 0.0, layer_scale_init: float | None = None,
        num_classes: int = 0, remat: bool = False, attention_impl: str = "auto", depth: int = 0, *,
        rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32) -> VisionTransformer:
    """ViT-{Ti,S,B,L,H}/`patch_size`; `depth` > 0 overrides the variant's number of blocks (e.g. a
    6-block ViT-S for small images). See `VisionTransformer` and the module docstring."""
    if variant not in VARIANTS:
        raise ConfigError(f"ViT variant {variant!r} is unknown; choose one of {', '.join(VARIANTS)}.")
    if not isinstance(depth, int) or depth < 0:
        raise ConfigError(f"ViT depth must be 0 (the variant's) or a positive number of blocks, got {depth!r}.")
    width, variant_depth, heads, mlp_dim = VARIANTS[variant]
    depth = depth or variant_depth
    return VisionTransformer(width=width, depth=depth, heads=heads, mlp_dim=mlp_dim, patch_size=patch_size,
                             image_size=image_size, pool=pool, posemb=posemb, drop_path_rate=drop_path_rate,
                             layer_scale_init=layer_scale_init, num_classes=num_classes, remat=remat,
                             attention_impl=attention_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


# --- MAE (He et al. 2022) -----------------------------------------------------------------------

def random_masking(rng: jax.Array, batch: int, num_patches: int, mask_ratio: float):
    """Per-example random subset of patches to keep, as MAE's `random_masking`.

    Returns (keep_indices [B, K] int32, mask [B, N] float32 with 1 = masked (hidden from the
    encoder, predicted by the decoder), restore_indices [B, N] int32 that put the kept-then-
    masked order back into patch order). K = int(N * (1 - mask_ratio)).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio} (MAE uses 0.75).")
    num_keep = int(num_patches * (1 - mask_ratio))
    if num_keep < 1:
        raise ConfigError(f"mask_ratio={mask_ratio} keeps no patch of {num_patches}; lower it.")
    noise = jax.random.uniform(rng, (batch, num_patches))
    shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    restore = jnp.argsort(shuffle, axis=1).astype(jnp.int32)
    mask_in_shuffled_order = (jnp.arange(num_patches) >= num_keep).astype(jnp.float32)
    mask = jnp.take_along_axis(jnp.broadcast_to(mask_in_shuffled_order, (batch, num_patches)), restore, axis=1)
    return shuffle[:, :num_keep], mask, restore


class MAEDecoder(nnx.Module):
    """MAE's lightweight decoder: visible tokens plus mask tokens, in patch order, through a small
    transformer, predicting each patch's p*p*3 pixels. Defaults are He et al.'s (width 512, 8
    blocks, 16 heads, fixed sin-cos position embedding).

    Build it from the encoder, e.g. `MAEDecoder(enc.num_features, enc.grid_size, enc.patch_size,
    enc.num_prefix_tokens, rngs=rngs)`.
    """

    def __init__(self, encoder_width: int, grid_size: tuple[int, int], patch_size: int,
                 num_prefix_tokens: int = 1, *, decoder_width: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, attention_impl: str = "auto", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if decoder_width % decoder_heads or decoder_width % 4:
            raise ConfigError(f"MAE decoder_width={decoder_width} must be divisible by decoder_heads="
                              f"{decoder_heads} and by 4 (sin-cos position embedding).")
        keys = ParamKeys(rngs.params())
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        self.grid_size, self.num_prefix_tokens, self.dtype = tuple(grid_size), num_prefix_tokens, dtype
        self.embed = Dense((encoder_width,), (decoder_width,), (EMBED, EMBED), keys=keys, **kw)
        self.mask_token = nnx.Param(partitioned(nnx.initializers.normal(0.02), (None, None, EMBED))(
            keys(), (1, 1, decoder_width), param_dtype))
        self.blocks = nnx.List([EncoderBlock(decoder_width, decoder_heads, 4 * decoder_width,
                                             attention_impl=attention_impl, keys=keys, **kw)
                                for _ in range(decoder_depth)])
        self.norm = LayerNorm(decoder_width, **kw)
        self.predict = Dense((decoder_width,), (patch_size * patch_size * 3,), (EMBED, None), keys=keys, **kw)

    def __call__(self, tokens: jax.Array, restore_indices: jax.Array, train: bool = True) -> jax.Array:
        """tokens: the encoder's `forward_tokens` on the kept patches [B, prefix + K, D];
        restore_indices from `random_masking`. Returns float32 pixel predictions [B, N, p*p*3]
        for every patch, in patch order (the loss uses the masked ones)."""
        x = self.embed(tokens)
        b, n = restore_indices.shape
        prefix, visible = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        masked = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, n - visible.shape[1], x.shape[-1]))
        x = jnp.take_along_axis(jnp.concatenate([visible, masked], axis=1), restore_indices[:, :, None], axis=1)
        x = x + posemb_sincos_2d(self.grid_size, x.shape[-1], endpoint=False).astype(x.dtype)  # MAE's
        x = jnp.concatenate([prefix, x], axis=1)  # the cls token takes part in attention, as in MAE
        for block in self.blocks:
            x = block(x, train)
        return self.predict(self.norm(x))[:, self.num_prefix_tokens:].astype(jnp.float32)
