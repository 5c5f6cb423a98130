"""Per-layer convolution timing on this machine: XLA's convolution against the CPU gradients.

For every distinct convolution of the models named (found by tracing the model, so the table
follows the real architectures), times one layer's forward pass, each gradient alone (kernel
and input) and its forward + backward (as in a train step, which also needs the input
gradient) under each backward formulation of vision_jax/models/conv.py: XLA's transposed
convolutions (the 'xla' impl), the matmul kernel gradient, the phase input gradient (strided
layers), and what conv_impl=auto chooses for the layer. The forward pass is XLA's convolution
in all of them. Each model's last line sums its layers (each shape times the number of layers
that have it).

Protocol: all variants of one shape are compiled first, then run in turn `--reps` times
(interleaved, so that load from other processes spreads over all of them) and the minimum is
kept. `--clock=cpu` times process CPU time instead of wall time: with XLA on one thread it is
far less disturbed by other processes on the machine than wall time, e.g.
`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 python bench/conv_cpu.py --clock=cpu`.
`--chunk_mib` reruns the auto choice with other chunk sizes of the matmul kernel gradient, to re-check
the choice on another machine or JAX version. The load average is printed before and after.

    PYTHONPATH=. python bench/conv_cpu.py
    PYTHONPATH=. python bench/conv_cpu.py --models=resnet18 --reps=5 --chunk_mib=2,8,32
"""
from __future__ import annotations

import argparse
import collections
import os
import time

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

from vision_jax.models import MODELS, conv

# name -> (registry name, options, input shape): the models and batches of bench/train_step.py,
# DCGAN at the PyTorch example's batch and ViT-S/16 at bench/models.py's.
MODELS_TO_TIME = {
    "resnet18": ("resnet", {"depth": 18, "stem": "cifar"}, (128, 32, 32, 3)),
    "resnet50": ("resnet", {"depth": 50, "stem": "imagenet"}, (16, 224, 224, 3)),
    "cnn": ("cnn", {}, (128, 32, 32, 3)),
    "vit_p4": ("vit", {"variant": "S", "patch_size": 4, "image_size": 32, "pool": "gap"}, (128, 32, 32, 3)),
    "vit_s16": ("vit", {"variant": "S", "patch_size": 16, "image_size": 224}, (16, 224, 224, 3)),
    "dcgan_g": ("dcgan_generator", {"image_size": 64}, (128, 100)),
    "dcgan_d": ("dcgan_discriminator", {"image_size": 64}, (128, 64, 64, 3)),
}

# input_dilation > 1: a transposed convolution.
Layer = collections.namedtuple("Layer", "x_shape kernel_shape strides padding dilation input_dilation")


def model_convs(name: str) -> collections.Counter:
    """Counter of the distinct convolutions (Layer) in the model's forward pass."""
    registry_name, options, input_shape = MODELS_TO_TIME[name]
    model = MODELS.build(registry_name, options, rngs=nnx.Rngs(0))
    jaxpr = jax.make_jaxpr(lambda x: model(x, train=False))(jax.ShapeDtypeStruct(input_shape, jnp.float32))
    layers = collections.Counter()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                p = eqn.params
                layers[Layer(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, p["window_strides"],
                             tuple(map(tuple, p["padding"])), p["rhs_dilation"], p["lhs_dilation"])] += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return layers


# Variants: name -> the gradients taken in the backward pass (None: XLA's convolution throughout,
# the 'xla' impl; "auto": what conv_impl=auto chooses for the layer).
VARIANTS = {"xla": None, "dW matmul": conv._Gradients(kernel_by_matmul=True, input_by_phases=False),
            "dx phases": conv._Gradients(kernel_by_matmul=False, input_by_phases=True), "auto": "auto"}


def compile_layer(layer: Layer, gradients, chunk_bytes: int, x, kernel, dy) -> dict:
    """{part: compiled}: the layer's forward, forward + backward and each gradient alone, with the
    backward pass taking `gradients` (see VARIANTS)."""
    conv.set_conv_impl("xla" if gradients is None else "auto")
    default_chunk, conv._CHUNK_BYTES = conv._CHUNK_BYTES, chunk_bytes  # read while tracing, in lower()
    choices = conv._matmul_kernel_grad_is_faster, conv._phase_input_grad_is_faster
    if isinstance(gradients, conv._Gradients):  # forced for this layer, where the path applies
        conv._matmul_kernel_grad_is_faster = lambda *_: gradients.kernel_by_matmul
        conv._phase_input_grad_is_faster = lambda x_shape, geometry: (
            gradients.input_by_phases and conv._phases_apply(geometry))

    def forward(x, kernel):
        return conv.conv_general_dilated(x, kernel, layer.strides, layer.padding, layer.input_dilation,
                                         layer.dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def forward_backward(x, kernel, dy):
        y, vjp = jax.vjp(forward, x, kernel)
        return y, vjp(dy)

    def kernel_grad(x, kernel, dy):
        return jax.vjp(lambda k: forward(x, k), kernel)[1](dy)

    def input_grad(x, kernel, dy):
        return jax.vjp(lambda x: forward(x, kernel), x)[1](dy)

    try:
        return {part: (jax.jit(fn).lower(*args).compile(), args)
                for part, fn, args in (("fwd", forward, (x, kernel)), ("fwd+bwd", forward_backward, (x, kernel, dy)),
                                       ("dW", kernel_grad, (x, kernel, dy)), ("dx", input_grad, (x, kernel, dy)))}
    finally:
        conv._CHUNK_BYTES = default_chunk
        conv._matmul_kernel_grad_is_faster, conv._phase_input_grad_is_faster = choices
        conv.set_conv_impl("auto")


def time_layer(layer: Layer, variants: dict[str, tuple], reps: int, clock) -> dict:
    """{variant: {part: seconds}} for variants {name: (gradients, chunk bytes)}, min over `reps`
    interleaved runs."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], layer.x_shape)
    kernel = 0.1 * jax.random.normal(keys[1], layer.kernel_shape)
    y_shape = jax.eval_shape(lambda x, k: jax.lax.conv_general_dilated(
        x, k, layer.strides, layer.padding, layer.input_dilation, layer.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC")), x, kernel).shape
    dy = jax.random.normal(keys[2], y_shape)
    runs = {(variant, part): run for variant, (gradients, chunk) in variants.items()
            for part, run in compile_layer(layer, gradients, chunk, x, kernel, dy).items()}
    best = {key: float("inf") for key in runs}
    for _ in range(reps + 1):  # the first round warms up
        for key, (compiled, args) in runs.items():
            t = clock()
            jax.block_until_ready(compiled(*args))
            best[key] = min(best[key], clock() - t)
    out = collections.defaultdict(dict)
    for (variant, part), seconds in best.items():
        out[variant][part] = seconds
    return out


def describe(layer: Layer) -> str:
    n, h, w, cin = layer.x_shape
    kh, kw, _, cout = layer.kernel_shape
    pad = "x".join(f"{lo}{hi}" if lo != hi else str(lo) for lo, hi in layer.padding)
    dil = "" if layer.dilation == (1, 1) else f" d{layer.dilation[0]}"
    stride = f"/{layer.strides[0]}" if layer.input_dilation == (1, 1) else f" T{layer.input_dilation[0]}"
    return f"{n}x{h}x{w}x{cin}->{cout} {kh}x{kw}{stride} p{pad}{dil}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS_TO_TIME), help=f"comma list of {', '.join(MODELS_TO_TIME)}")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="wall time or process CPU time")
    parser.add_argument("--chunk_mib", default="", help="extra cpu-impl variants with these kernel-gradient chunk sizes")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = set(names) - set(MODELS_TO_TIME)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS_TO_TIME)}")
    chunk_sizes = [float(c) for c in args.chunk_mib.split(",") if c]
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}; min of {args.reps} runs; {args.clock} ms per layer", flush=True)
    for name in names:
        layers = model_convs(name)
        print(f"\n{name}: {sum(layers.values())} conv layers, {len(layers)} distinct")
        columns = [("fwd", "xla", "fwd"), ("dW xla", "xla", "dW"), ("dW matmul", "dW matmul", "dW"),
                   ("dx xla", "xla", "dx"), ("dx phases", "dx phases", "dx"),
                   ("fwd+bwd xla", "xla", "fwd+bwd"), ("fwd+bwd auto", "auto", "fwd+bwd")]
        columns += [(f"auto {c:g}MiB", f"auto {c:g}MiB", "fwd+bwd") for c in chunk_sizes]
        print(f"{'layer':<34}{'count':>6}" + "".join(f"{title:>{len(title) + 2}}" for title, _, _ in columns)
              + f"{'speed-up':>10}")
        totals = collections.Counter()
        for layer, count in layers.items():
            variants = {variant: (gradients, conv._CHUNK_BYTES) for variant, gradients in VARIANTS.items()}
            variants.update({f"auto {c:g}MiB": ("auto", int(c * 2**20)) for c in chunk_sizes})
            t = time_layer(layer, variants, args.reps, clock)
            for variant in t:
                totals[variant] += count * t[variant]["fwd+bwd"]
            print(f"{describe(layer):<34}{count:>6}"
                  + "".join(f"{t[variant][part] * 1e3:>{len(title) + 2}.1f}" for title, variant, part in columns)
                  + f"{t['xla']['fwd+bwd'] / t['auto']['fwd+bwd']:>9.2f}x", flush=True)
        sums = [(title, totals[variant]) for title, variant, part in columns if part == "fwd+bwd"]
        print(f"{'all layers (sum of count x fwd+bwd)':<40}"
              + "".join(f"  {title} {seconds * 1e3:.1f}" for title, seconds in sums)
              + f"  speed-up {totals['xla'] / totals['auto']:.2f}x", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
