"""Training-step throughput on this machine: vision_jax's jitted train step against a PyTorch peer.

Measures images/s of `trainer.Run.compile_step()` (the step the trainer runs) with the
supervised method on random images, and in the same invocation the PyTorch peer
`../shared/peer/torch_train_step.py MODEL BATCH` (run with --torch_python) on the same model:
  - resnet18: ResNet-18 with the CIFAR stem, 32 px, batch 128, SGD momentum 0.9, weight decay 5e-4;
  - resnet50: ResNet-50 (torchvision layout), 224 px, batch 16, SGD momentum 0.9, weight decay 1e-4
    (our head has the source's 10 classes, the peer's 1000: 0.05% of the FLOPs);
  - cnn:      the small CNN (default widths), 32 px, batch 128, AdamW;
  - vit:      the peer's small ViT: patch 4, width 384, depth 6, 6 heads, MLP 1536, mean-pooled
    tokens, 32 px, batch 128, AdamW.
Protocol, as the peer's: 2 warm-up steps, then the median of 5 timed steps, each waited on
(jax.block_until_ready). Compile time (lower + compile, before any step) is printed too, and the
load average before and after each model: other work on the machine slows both sides, the JAX
step more (see README), so compare the ratio within a run. `--rounds=N` repeats JAX then
PyTorch N times per model and prints the medians over the rounds.

    PYTHONPATH=. python bench/train_step.py
    PYTHONPATH=. python bench/train_step.py --models=resnet18 --rounds=2
    PYTHONPATH=. python bench/train_step.py --models=resnet18 --config.conv_impl=xla   # XLA's convolution

Figures are noisy (other work shares the CPU) and only comparable within one invocation.
"""
import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time

import jax
import numpy as np

from vision_jax import config as config_lib
from vision_jax import parallel, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "..", "shared", "peer", "torch_train_step.py")
TORCH_INSTALL = "python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy"
WARMUP, TIMED = 2, 5


@dataclasses.dataclass(frozen=True)
class Model:
    options: dict  # config.model
    optimizer: dict  # config.optimizer overrides
    image_size: int
    batch: int


SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
ADAMW = {"name": "adamw", "lr": 1e-3}
MODELS = {
    "resnet18": Model({"name": "resnet", "depth": 18, "stem": "cifar"}, {**SGD, "weight_decay": 5e-4}, 32, 128),
    "resnet50": Model({"name": "resnet", "depth": 50, "stem": "imagenet"}, {**SGD, "weight_decay": 1e-4}, 224, 16),
    "cnn": Model({"name": "cnn"}, ADAMW, 32, 128),
    "vit": Model({"name": "vit", "variant": "S", "depth": 6, "patch_size": 4, "image_size": 32, "pool": "gap"},
                 ADAMW, 32, 128),
}


def make_config(model: str, batch: int, overrides: list[str]):
    spec = MODELS[model]
    c = config_lib.default_config()
    c.method.name = "supervised"
    c.batch_size, c.data.image_size = batch, spec.image_size
    c.model = config_lib.ConfigDict(spec.options)
    c.optimizer.update(spec.optimizer)
    for override in overrides:  # "field.name=value", as the trainer's --config.field.name=value
        key, _, raw = override.partition("=")
        config_lib.apply_override(c, key, raw)
    config_lib.validate(c)
    return c


def time_jax(model: str, batch: int, overrides: list[str]) -> dict:
    workdir = tempfile.mkdtemp(prefix="bench_train_step_")
    size = MODELS[model].image_size
    try:
        run = trainer.Run(make_config(model, batch, overrides), workdir)
        rs = np.random.RandomState(0)
        local = {"image": rs.randn(batch, size, size, 3).astype(np.float32),
                 "label": rs.randint(0, 10, batch).astype(np.int32)}
        batch_arrays = parallel.to_global_batch(local, parallel.batch_sharding(run.mesh))
        state = run.init_state()
        t = time.perf_counter()
        step = run.compile_step().lower(state, batch_arrays).compile()
        compile_s = time.perf_counter() - t
        times = []
        for i in range(WARMUP + TIMED):
            t = time.perf_counter()
            state, metrics = jax.block_until_ready(step(state, batch_arrays))  # state is donated: reuse the new one
            if i >= WARMUP:
                times.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median = sorted(times)[len(times) // 2]
    print(f"jax {model} batch={batch} devices={jax.device_count()} compile_s={compile_s:.1f} "
          f"median_step_ms={median * 1e3:.1f} images_per_s={batch / median:.1f} loss={float(metrics['loss']):.3f}",
          flush=True)
    return {"ms": median * 1e3, "ips": batch / median, "compile_s": compile_s}


def time_torch(torch_python: str, model: str, batch: int) -> dict | None:
    if not os.path.exists(torch_python):
        print(f"torch peer skipped: {torch_python} not found. Install it with: {TORCH_INSTALL}")
        return None
    proc = subprocess.run([torch_python, PEER, model, str(batch)], capture_output=True, text=True)
    match = re.search(r"median_step_ms=([\d.]+) images_per_s=([\d.]+)", proc.stdout)
    if proc.returncode or not match:
        print(f"torch peer failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return None
    print(proc.stdout.strip(), flush=True)
    return {"ms": float(match[1]), "ips": float(match[2])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=0, help="batch for every model (default: the model's)")
    parser.add_argument("--rounds", type=int, default=1, help="JAX then PyTorch, this many times per model")
    parser.add_argument("--torch_python", default="/tmp/torchenv/bin/python")
    args, unknown_args = parser.parse_known_args()
    # Config overrides for the JAX side, spelled as the trainer's: --config.conv_impl=xla.
    overrides = [a[len("--config."):] for a in unknown_args if a.startswith("--config.")]
    stray = [a for a in unknown_args if not a.startswith("--config.")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}; config fields are set as --config.field=value")
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if args.batch < 0 or args.rounds < 1:
        parser.error("--batch must be >= 0 and --rounds >= 1")

    rows = []
    for model in models:
        batch = args.batch or MODELS[model].batch
        for _ in range(args.rounds):
            load_before = os.getloadavg()[0]
            jax_result = time_jax(model, batch, overrides)
            torch_result = time_torch(args.torch_python, model, batch)
            rows.append((model, batch, jax_result, torch_result, load_before, os.getloadavg()[0]))

    print(f"\n{'model':<10}{'batch':>6}{'jax img/s':>11}{'torch img/s':>13}{'jax/torch':>11}{'compile s':>11}"
          f"{'load':>12}")
    for model, batch, j, t, load_before, load_after in rows:
        torch_ips = f"{t['ips']:.1f}" if t else "-"
        ratio = f"{j['ips'] / t['ips']:.2f}x" if t else "-"
        print(f"{model:<10}{batch:>6}{j['ips']:>11.1f}{torch_ips:>13}{ratio:>11}{j['compile_s']:>11.1f}"
              f"{f'{load_before:.1f}-{load_after:.1f}':>12}")
    if args.rounds > 1:  # one round's figure moves by up to 40% on a shared machine; its median less
        print("\nmedian over rounds (the ratio: median of the per-round ratios)")
        for model in models:
            rounds = [(j, t) for m, _, j, t, _, _ in rows if m == model and t]
            if rounds:
                print(f"{model:<10} jax {np.median([j['ips'] for j, _ in rounds]):.1f}  "
                      f"torch {np.median([t['ips'] for _, t in rounds]):.1f}  "
                      f"ratio {np.median([j['ips'] / t['ips'] for j, t in rounds]):.2f}x  ({len(rounds)} rounds)")


if __name__ == "__main__":
    main()
