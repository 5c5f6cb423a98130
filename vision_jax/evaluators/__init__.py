"""Evaluator registry. An evaluator scores a `Representation` on `EvalData` and returns metrics.

Configs name them: `config.evaluators.knn = dict(k=20, temperature=0.07)`.
"""
from vision_jax.registry import Registry

EVALUATORS = Registry("evaluator")

from vision_jax.evaluators import classification, fid, knn, linear_probe  # noqa: E402,F401
