"""Training-step throughput on this machine: vision_jax's jitted train step against a PyTorch peer.

Measures images/s of `trainer.Run.compile_step()` (the step the trainer runs) with the
supervised method on random 32x32 images for
  - cnn:      the small CNN (default widths), AdamW (the default optimizer);
  - resnet18: ResNet-18 with the CIFAR stem, SGD momentum 0.9, weight decay 5e-4;
and, in the same invocation, the PyTorch peer `../shared/peer/torch_train_step.py resnet18 BATCH`
(run with --torch_python), giving the JAX/PyTorch ratio for ResNet-18. Protocol, as the peer's:
2 warm-up steps, then the median of 5 timed steps, each waited on (jax.block_until_ready).
Compile time (lower + compile, before any step) is printed too.

    PYTHONPATH=. python bench/train_step.py
    PYTHONPATH=. python bench/train_step.py --models=resnet18 --batch=64

Figures are noisy (other work shares the CPU) and only comparable within one invocation.
"""
import argparse
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
WARMUP, TIMED, IMAGE_SIZE = 2, 5, 32


def make_config(model: str, batch: int):
    c = config_lib.default_config()
    c.method.name = "supervised"
    c.batch_size, c.data.image_size = batch, IMAGE_SIZE
    if model == "resnet18":
        c.model.name, c.model.depth, c.model.stem = "resnet", 18, "cifar"
        c.optimizer.name, c.optimizer.lr = "sgd", 0.1
        c.optimizer.momentum, c.optimizer.weight_decay = 0.9, 5e-4
    else:
        c.model.name = "cnn"
    config_lib.validate(c)
    return c


def time_jax(model: str, batch: int) -> dict:
    workdir = tempfile.mkdtemp(prefix="bench_train_step_")
    try:
        run = trainer.Run(make_config(model, batch), workdir)
        rs = np.random.RandomState(0)
        local = {"image": rs.randn(batch, IMAGE_SIZE, IMAGE_SIZE, 3).astype(np.float32),
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
    return {"ms": median * 1e3, "ips": batch / median}


def time_torch(torch_python: str, batch: int) -> dict | None:
    if not os.path.exists(torch_python):
        print(f"torch peer skipped: {torch_python} not found. Install it with: {TORCH_INSTALL}")
        return None
    proc = subprocess.run([torch_python, PEER, "resnet18", str(batch)], capture_output=True, text=True)
    match = re.search(r"median_step_ms=([\d.]+) images_per_s=([\d.]+)", proc.stdout)
    if proc.returncode or not match:
        print(f"torch peer failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return None
    print(proc.stdout.strip(), flush=True)
    return {"ms": float(match[1]), "ips": float(match[2])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--torch_python", default="/tmp/torchenv/bin/python")
    parser.add_argument("--models", default="cnn,resnet18", help="comma-separated: cnn, resnet18")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - {"cnn", "resnet18"}
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from cnn, resnet18")

    rows = [(f"jax {m}", m, time_jax(m, args.batch)) for m in models]
    torch_result = time_torch(args.torch_python, args.batch) if "resnet18" in models else None
    if torch_result:
        rows.append(("torch resnet18", "resnet18", torch_result))

    print(f"\n{'model':<16}{'batch':>6}{'ms/step':>10}{'images/s':>10}{'vs torch':>10}")
    for label, model, r in rows:
        ratio = f"{r['ips'] / torch_result['ips']:.2f}x" if model == "resnet18" and torch_result else "-"
        print(f"{label:<16}{args.batch:>6}{r['ms']:>10.1f}{r['ips']:>10.1f}{ratio:>10}")


if __name__ == "__main__":
    main()
