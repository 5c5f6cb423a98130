"""Method losses against independent references."""
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.methods.simclr import nt_xent


def reference_nt_xent(z1, z2, temperature):
    """NT-Xent written out example by example (Chen et al. 2020, eq. 1)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        similarities = np.array([z[i] @ z[k] / temperature for k in range(2 * n) if k != i])
        positive = z[i] @ z[j] / temperature
        total += -positive + np.log(np.exp(similarities).sum())
    return total / (2 * n)


def test_nt_xent_matches_reference():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    loss, _ = nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.5)
    np.testing.assert_allclose(float(loss), reference_nt_xent(z1, z2, 0.5), rtol=1e-5)


def test_nt_xent_rewards_aligned_pairs():
    z1 = jax.random.normal(jax.random.key(0), (8, 16))
    aligned_loss, aligned_accuracy = nt_xent(z1, z1 * 2.0, 0.1)  # scale does not matter after l2-norm
    random_loss, _ = nt_xent(z1, jax.random.normal(jax.random.key(1), (8, 16)), 0.1)
    assert float(aligned_accuracy) == 1.0
    assert float(aligned_loss) < float(random_loss)
