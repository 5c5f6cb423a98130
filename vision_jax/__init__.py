"""vision_jax: vision pretraining in JAX.

Entry points: `python -m vision_jax.train` and `python -m vision_jax.evaluate`.
"""
