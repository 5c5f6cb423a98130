"""Per-model train-step speed and memory: compile time, step time, images/s, MFU, peak memory.

One TRAIN step per model, jitted with the state donated, on random data at the model's usual
resolution, built only through the registry (`vision_jax.models.MODELS.build`):
  - encoders (cnn 32px, resnet18 with the CIFAR stem 32px, resnet50 224px, vit S/16 and B/16
    224px): encoder (BatchNorm in train mode) + a `LinearClassifier` head (10 classes at 32px,
    1000 at 224px), softmax cross-entropy on integer labels, backward, optax AdamW update;
  - dcgan (64px, z of 100): the `dcgan` method's update (methods/dcgan.py), the PyTorch DCGAN
    example's step: one discriminator update (real and fake batches), then one generator update
    through the updated D, G's forward running once; non-saturating losses, AdamW(2e-4, betas
    (0.5, 0.999), weight decay 0.05 on kernels) for each net, plus the method's logged metrics.
    images/s counts the real images (the batch) per step.
AdamW is optax's (lr 1e-3, weight decay 0.05 on every parameter: the update's cost is what counts).
Protocol: lower + compile (the compile time), --warmup untimed steps (1 on CPU, 5 elsewhere), then
the median of --steps timed steps (3 on CPU, 20 elsewhere), each waited on (jax.block_until_ready).

MFU = the compiled step's FLOPs (`compiled.cost_analysis()["flops"]`, XLA's count, a multiply-add
being 2) / median step time / the device's peak FLOP/s. Peaks are NVIDIA's datasheet figures
(dense, i.e. half the "with sparsity" numbers) for known GPUs, picked by
`jax.devices()[0].device_kind`: bfloat16 compute uses the BF16 Tensor Core peak; float32 compute
uses TF32 Tensor Core peak, because JAX's default matmul precision runs float32 matmuls and convs
in TF32 on Ampere/Hopper (jax.lax.Precision.DEFAULT), or the plain FP32 peak when
jax_default_matmul_precision is 'highest'/'float32'. CPUs (and unknown accelerators) publish no
peak: the script measures the achievable FLOP/s of a large jitted matmul (float32 on CPU, the
compute dtype elsewhere) and reports MFU against that; the header says which. `--peak_tflops`
overrides both. The 'step/fwd' column divides the step's FLOPs by the forward pass's (lowered,
unoptimized HLO, `models/flops.py`): about 3 for an encoder (forward + backward), about 5.5 for
the DCGAN step; well below that means the compiled program's count missed ops that the HLO has
(e.g. convolutions rewritten into library calls) and the MFU is an underestimate. Custom calls
that are already in the HLO (cuDNN fused attention) may be missing from both counts; for ViT-B/16
at 224px attention's two matmuls are about 4% of the FLOPs.

Memory: 'XLA GiB' is the compiled step's own estimate (arguments + outputs - donated aliases +
temporaries, `compiled.memory_analysis()`; available on every backend); 'peak GiB' is the
allocator's high-water mark (`device.memory_stats()["peak_bytes_in_use"]`) where the device
reports it (GPU/TPU, not CPU). That mark cannot be reset within a process, so every model runs in
a fresh child process of this script: the figure belongs to that model alone, one model failing
(out of memory, say) leaves the others' rows, and no compiled program lingers between models.

    PYTHONPATH=. python bench/models.py                                   # defaults per backend
    PYTHONPATH=. python bench/models.py --models=cnn,resnet18 --batch=16 --steps=3
    PYTHONPATH=. python bench/models.py --batch=resnet50=128,vit_b16=64 --dtype=float32

CPU figures are noisy when other work shares the machine; compare rows within one invocation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "BENCH_RESULT "
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Benchmark:
    model: str  # registry name (for the GAN, its discriminator: the dcgan method's config.model)
    options: dict
    image_size: int
    num_classes: int  # of the linear head; 0 for the GAN
    cpu_batch: int  # defaults that keep a CPU run of all models within ~10 minutes on 2 cores
    gpu_batch: int  # realistic single-accelerator batches


BENCHMARKS = {
    "cnn": Benchmark("cnn", {}, 32, 10, cpu_batch=32, gpu_batch=512),
    "resnet18": Benchmark("resnet", {"depth": 18, "stem": "cifar"}, 32, 10, cpu_batch=16, gpu_batch=512),
    "resnet50": Benchmark("resnet", {"depth": 50, "stem": "imagenet"}, 224, 1000, cpu_batch=8, gpu_batch=256),
    "vit_s16": Benchmark("vit", {"variant": "S", "patch_size": 16, "image_size": 224}, 224, 1000,
                         cpu_batch=8, gpu_batch=256),
    "vit_b16": Benchmark("vit", {"variant": "B", "patch_size": 16, "image_size": 224}, 224, 1000,
                         cpu_batch=8, gpu_batch=128),
    "dcgan": Benchmark("dcgan_discriminator", {"image_size": 64, "latent_dim": 100}, 64, 0,
                       cpu_batch=16, gpu_batch=256),
}

# device_kind substring -> {precision: dense peak FLOP/s}; the first match wins, so the PCIe/NVL
# variants come before the bare names. Sources: NVIDIA H100 datasheet (SXM: BF16 1,979 / TF32 989
# TFLOPS with sparsity, FP32 67; PCIe: 1,513 / 756, 51; NVL: 1,671 / 835, 60), H200 datasheet
# (SXM as H100 SXM; NVL as H100 NVL), A100 datasheet (BF16 624 / TF32 312 with sparsity, FP32 19.5).
PEAK_FLOPS = [
    ("H100 PCIe", {"bf16": 756.5e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}),
    ("H200 NVL", {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}),
    ("H100", {"bf16": 989.5e12, "tf32": 494.5e12, "fp32": 67e12}),  # H100 SXM: "NVIDIA H100 80GB HBM3"
    ("H200", {"bf16": 989.5e12, "tf32": 494.5e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
]


# --- parent: runs one child per model, prints the table --------------------------------------


def parse_batch_flag(text: str) -> int | dict[str, int] | None:
    """`--batch`: '' (the defaults), 'N' (every model) or 'name=N,name=N' (those models)."""
    if not text:
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    batches = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in BENCHMARKS or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--batch item {item!r} is not NAME=N with NAME one of {', '.join(BENCHMARKS)} "
                             f"and N a positive integer; or give one N for every model.")
        batches[name] = int(value)
    return batches


def batch_for(name: str, flag: int | dict[str, int] | None, backend: str) -> int:
    if isinstance(flag, int):
        return flag
    if flag and name in flag:
        return flag[name]
    return BENCHMARKS[name].cpu_batch if backend == "cpu" else BENCHMARKS[name].gpu_batch


def run_child(args: list[str]) -> dict:
    """Runs this script with `args` in a fresh process; returns its result dict or an error."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                          env=env, cwd=REPO)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return {"error": f"child exited {proc.returncode} without a result:\n{tail}"}


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="", help=f"comma list of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--batch", default="", help="N for every model, or name=N,name=N (default per backend)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="compute dtype (params stay float32); auto: bfloat16 on GPU/TPU, float32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 elsewhere)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 1 on CPU, 5 elsewhere)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="peak for MFU, instead of table/measured")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a model name, or 'probe'
    args = parser.parse_args()
    if args.child:
        result = probe(args) if args.child == "probe" else measure(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    names = [n for n in args.models.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error("--peak_tflops must be > 0")
    batch_flag = parse_batch_flag(args.batch)

    # The parent never touches a device: on a GPU its client would hold memory the children need.
    device = run_child(["--child=probe", f"--dtype={args.dtype}"] +
                       ([f"--peak_tflops={args.peak_tflops}"] if args.peak_tflops else []))
    if "error" in device:
        raise SystemExit(f"Could not start JAX in a child process: {device['error']}")
    on_cpu = device["backend"] == "cpu"
    steps = args.steps or (3 if on_cpu else 20)
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 5)
    batches = {n: batch_for(n, batch_flag, device["backend"]) for n in names}

    print(f"device: {device['device_kind']} ({device['backend']}, {device['device_count']} device(s), "
          f"timing on 1) | jax {device['jax']} flax {device['flax']} | compute {device['dtype']}, params float32 "
          f"| {warmup} warm-up + median of {steps} steps", flush=True)
    print(f"peak for MFU: {device['peak_flops'] / 1e12:.3g} TFLOP/s ({device['peak_source']})", flush=True)
    print("batch: " + ", ".join(f"{n}={batches[n]}" for n in names), flush=True)
    print("step: forward + backward + AdamW update, jitted, state donated, BatchNorm in train mode; encoders: "
          "cross-entropy on a linear head; dcgan: one D update (real + fake) and one G update", flush=True)

    rows = []
    for name in names:
        result = run_child([f"--child={name}", f"--batch={batches[name]}", f"--steps={steps}",
                            f"--warmup={warmup}", f"--dtype={args.dtype}"])
        if "error" in result or "skipped" in result:
            print(f"{name}: {'SKIPPED' if 'skipped' in result else 'FAILED'}: "
                  f"{result.get('skipped') or result['error']}", flush=True)
        else:
            mfu = result["step_flops"] / result["step_s"] / device["peak_flops"]
            result.update(mfu=mfu, images_per_s=result["batch"] / result["step_s"])
            print(f"{name}: batch={result['batch']} compile_s={result['compile_s']:.1f} "
                  f"step_ms={result['step_s'] * 1e3:.1f} images_per_s={result['images_per_s']:.1f} "
                  f"mfu={mfu:.1%} loss={result['loss']:.3f}", flush=True)
        rows.append((name, result))

    print("\n| model | px | batch | compile s | step ms | images/s | step GFLOP | step/fwd | MFU | XLA GiB "
          "| peak GiB |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        if "error" in r or "skipped" in r:
            why = "skipped" if "skipped" in r else "failed"
            print(f"| {name} | {BENCHMARKS[name].image_size} | {batches[name]} | {why} |  |  |  |  |  |  |  |")
            continue
        peak = r["device_peak_bytes"] / GiB if r["device_peak_bytes"] is not None else None
        print(f"| {name} | {r['image_size']} | {r['batch']} | {r['compile_s']:.1f} | {r['step_s'] * 1e3:.1f} "
              f"| {r['images_per_s']:.1f} | {r['step_flops'] / 1e9:.1f} | {fmt(r['step_over_forward'], '.2f')} "
              f"| {r['mfu']:.1%} | {r['xla_bytes'] / GiB:.2f} | {fmt(peak, '.2f')} |")


# --- children: everything below runs JAX ------------------------------------------------------


def probe(args) -> dict:
    """The device, versions, compute dtype and the peak FLOP/s that MFU divides by."""
    import flax
    import jax

    from vision_jax import precision

    device = jax.devices()[0]
    dtype = precision.compute_dtype(args.dtype)
    dtype_name = jax.numpy.dtype(dtype).name
    peak, source = None, None
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, "given by --peak_tflops"
    elif device.platform == "gpu":
        peak, source = table_peak(device.device_kind, dtype_name, jax.config.jax_default_matmul_precision)
    if peak is None:
        # float32 on CPU as the brief's reference point; elsewhere the dtype the models compute in.
        measure_dtype = jax.numpy.float32 if device.platform == "cpu" else dtype
        peak, n = measured_matmul_flops(measure_dtype)
        source = (f"measured: best of a jitted {n}x{n} {jax.numpy.dtype(measure_dtype).name} matmul on this "
                  f"{device.platform}; no published peak for {device.device_kind!r}")
    return {"backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "flax": flax.__version__, "dtype": dtype_name, "peak_flops": peak,
            "peak_source": source}


def table_peak(device_kind: str, dtype_name: str, matmul_precision: str | None):
    """(peak FLOP/s, description) from PEAK_FLOPS, or (None, None) for a GPU not in the table."""
    for key, peaks in PEAK_FLOPS:
        if key in device_kind:
            if dtype_name == "bfloat16":
                kind = "bf16"
            else:  # float32: TF32 Tensor Cores unless full float32 matmuls were asked for
                kind = "fp32" if matmul_precision in ("highest", "float32", "F32_F32_F32") else "tf32"
            return peaks[kind], f"NVIDIA datasheet, {key} dense {kind.upper()}"
    return None, None


def measured_matmul_flops(dtype, repeats: int = 5) -> tuple[float, int]:
    """The best FLOP/s of a large jitted matmul: what this device achieves on the easiest kernel."""
    import jax
    import jax.numpy as jnp

    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best, n


def measure(args) -> dict:
    """Builds, compiles and times one model's train step; returns its figures."""
    import jax

    from vision_jax import precision
    from vision_jax.errors import ConfigError
    from vision_jax.models import MODELS
    from vision_jax.models import flops as flops_lib

    bench = BENCHMARKS[args.child]
    if bench.model not in MODELS.names():
        return {"skipped": f"model {bench.model!r} is not registered in vision_jax.models "
                           f"(registered: {', '.join(MODELS.names())})"}
    dtype = precision.compute_dtype(args.dtype)
    batch = int(args.batch)
    try:
        build = gan_step if bench.num_classes == 0 else encoder_step
        step, state, data, forward_flops = build(bench, batch, dtype, MODELS, flops_lib)
    except ConfigError as e:
        return {"skipped": f"its options {bench.options} are not accepted: {e}"}

    t = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, data).compile()
    compile_s = time.perf_counter() - t
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        state, loss = jax.block_until_ready(compiled(state, data))  # the state is donated: keep the new one
        if i >= args.warmup:
            times.append(time.perf_counter() - t)

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                 + mem.temp_size_in_bytes)
    stats = jax.devices()[0].memory_stats() or {}
    return {"batch": batch, "image_size": bench.image_size, "compile_s": compile_s,
            "step_s": statistics.median(times), "step_flops": float(cost["flops"]),
            "step_over_forward": float(cost["flops"]) / forward_flops if forward_flops else None,
            "xla_bytes": xla_bytes, "device_peak_bytes": stats.get("peak_bytes_in_use"),
            "loss": float(loss)}


def adamw(learning_rate: float = 1e-3, **kw):
    import optax

    return optax.adamw(learning_rate, weight_decay=0.05, **kw)


def encoder_step(bench: Benchmark, batch: int, dtype, MODELS, flops_lib):
    """Encoder + linear head, cross-entropy, AdamW: (step, state, data, forward FLOPs)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from vision_jax.models.heads import LinearClassifier

    kw = dict(dtype=dtype, param_dtype=jnp.float32)
    encoder = MODELS.build(bench.model, bench.options, rngs=nnx.Rngs(0), **kw)
    head = LinearClassifier(encoder.num_features, bench.num_classes, rngs=nnx.Rngs(1), **kw)
    graphdef, params, rest = nnx.split((encoder, head), nnx.Param, ...)
    tx = adamw()
    image_shape = (batch, bench.image_size, bench.image_size, 3)
    forward = flops_lib.model_flops(encoder, jax.ShapeDtypeStruct(image_shape, jnp.float32), train=True)
    rs = jax.random.split(jax.random.key(0))
    data = {"image": jax.random.normal(rs[0], image_shape, jnp.float32),
            "label": jax.random.randint(rs[1], (batch,), 0, bench.num_classes)}

    def step(state, data):
        params, rest, opt_state = state

        def loss_fn(params):
            encoder, head = nnx.merge(graphdef, params, rest, copy=True)
            logits = head(encoder(data["image"], train=True))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, data["label"]).mean()
            # The Variables in `rest` belong to the jit trace; merge copies them so that BatchNorm
            # may update its statistics inside this grad trace.
            return loss, nnx.split((encoder, head), nnx.Param, ...)[2]  # updated BatchNorm statistics

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), rest, opt_state), loss

    return step, (params, rest, tx.init(params)), data, forward


def gan_step(bench: Benchmark, batch: int, dtype, MODELS, flops_lib):
    """One update of the dcgan method (one D and one G update): (step, state, data, forward FLOPs)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vision_jax import schedules
    from vision_jax.config import default_config
    from vision_jax.methods import METHODS
    from vision_jax.methods.base import MethodSetup

    kw = dict(dtype=dtype, param_dtype=jnp.float32)
    make_model = lambda name, options, rngs: MODELS.build(name, options, rngs=rngs, **kw)
    setup = MethodSetup(lambda rngs: make_model("dcgan_discriminator", bench.options, rngs), num_classes=0,
                        length=schedules.RunLength(1000, 1), model_name="dcgan_discriminator", make_model=make_model)
    method = METHODS.build("dcgan", {"generator": {"latent_dim": bench.options["latent_dim"]}}, setup=setup)
    model = method.init_model(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    opt_config = default_config().optimizer
    opt_config.update(lr=2e-4, betas=(0.5, 0.999), weight_decay=0.05, schedule="constant")  # Radford et al. 2016's Adam
    optimizer = method.make_optimizer(opt_config, params)
    image_shape = (batch, bench.image_size, bench.image_size, 3)
    z_shape = (batch, bench.options["latent_dim"])
    forward = (flops_lib.model_flops(model.generator, jax.ShapeDtypeStruct(z_shape, jnp.float32), train=True)
               + flops_lib.model_flops(model.discriminator, jax.ShapeDtypeStruct(image_shape, jnp.float32), train=True))
    data = {"image": jnp.tanh(jax.random.normal(jax.random.key(0), image_shape, jnp.float32))}
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "ema": {}, "model_state": rest,
             "opt_state": optimizer.tx.init(params)}

    def step(state, data):
        state, metrics = method.update(graphdef, optimizer, state, data, jax.random.key(1))
        return state, metrics["loss"]

    return step, state, data, forward


if __name__ == "__main__":
    main()
