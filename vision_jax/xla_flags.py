"""XLA options the package sets for itself, in `XLA_FLAGS`, before JAX starts its backend.

XLA reads `XLA_FLAGS` once, when the first computation starts the backend, so this runs on
`import vision_jax` (the package's __init__), which every entry point and notebook does before
any JAX work. A process that ran JAX code before importing vision_jax keeps XLA's defaults:
correct, slower.

- `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot`: XLA:CPU
  (jaxlib 0.10.2) hands each convolution to YNNPACK, which runs it on one thread; without that
  fusion type XLA runs convolutions with its Eigen kernels on every core. Its dots are faster
  on Eigen too (the ViT's train step ~10%, the small CNN's ~15% on the 2-core machine). YNNPACK
  keeps the reductions and elementwise work: without any YNNPACK fusion the ViT step ran at
  16.6-20.2 images/s against 25.5-29.7 with them. models/conv.py and README ("Measured train
  step") have the figures.

A user's own setting of an option wins: it is left as it is. An option this jaxlib does not
define is not added, because an unknown flag in XLA_FLAGS aborts the process.
"""
import importlib.util
import mmap
import os

EIGEN_CPU_CONVOLUTIONS_AND_DOTS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"


def _jaxlib_defines(option: str) -> bool:
    """Whether jaxlib's XLA library contains the flag name (found in its read-only data); False where
    that library is not libjax_common.so (a jaxlib laid out otherwise keeps XLA's defaults)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    library = os.path.join(list(spec.submodule_search_locations)[0], "libjax_common.so")
    try:
        with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(option.encode()) >= 0
    except (OSError, ValueError):
        return False


def add_default_xla_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    option = EIGEN_CPU_CONVOLUTIONS_AND_DOTS.split("=")[0]
    if option not in flags and _jaxlib_defines(option.lstrip("-")):
        os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CPU_CONVOLUTIONS_AND_DOTS}".strip()
