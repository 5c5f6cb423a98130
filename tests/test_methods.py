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


def _normalized(x):
    return x / np.linalg.norm(x)


def test_byol_loss_matches_the_papers_formula_written_out():
    from vision_jax.methods.byol import regression_loss

    rng = np.random.default_rng(1)
    p1, p2, z1, z2 = (rng.normal(size=(5, 7)) for _ in range(4))
    # Grill et al. 2020, eq. 2 and the symmetrized loss: ||p/|p| - z/|z|||^2 summed over both directions.
    expected = np.mean([np.sum((_normalized(p1[i]) - _normalized(z2[i])) ** 2)
                        + np.sum((_normalized(p2[i]) - _normalized(z1[i])) ** 2) for i in range(5)])
    actual = jnp.mean(regression_loss(jnp.asarray(p1), jnp.asarray(z2)) + regression_loss(jnp.asarray(p2), jnp.asarray(z1)))
    np.testing.assert_allclose(float(actual), expected, rtol=1e-5)


def test_byol_loss_sends_no_gradient_into_the_target():
    from vision_jax.methods.byol import regression_loss

    p, z = jax.random.normal(jax.random.key(0), (2, 4, 8))
    grad_z = jax.grad(lambda z: regression_loss(p, z).sum())(z)
    assert float(jnp.abs(grad_z).max()) == 0.0


def reference_moco_loss(q, k, temperature):
    """moco-v3 builder.contrastive_loss, example by example: CE(q_i . k_j / T, target i) * 2T."""
    q = np.array([_normalized(x) for x in q])
    k = np.array([_normalized(x) for x in k])
    total = 0.0
    for i in range(len(q)):
        logits = np.array([q[i] @ k[j] / temperature for j in range(len(k))])
        total += -logits[i] + np.log(np.exp(logits).sum())
    return total / len(q) * 2 * temperature


def test_mocov3_loss_matches_reference():
    from vision_jax.methods.mocov3 import contrastive_loss

    rng = np.random.default_rng(2)
    q1, q2, k1, k2 = (rng.normal(size=(6, 5)) for _ in range(4))
    actual = contrastive_loss(jnp.asarray(q1), jnp.asarray(k2), 0.2) + contrastive_loss(jnp.asarray(q2), jnp.asarray(k1), 0.2)
    expected = reference_moco_loss(q1, k2, 0.2) + reference_moco_loss(q2, k1, 0.2)
    np.testing.assert_allclose(float(actual), expected, rtol=1e-5)


def reference_dino_loss(student, teacher, center, student_temp, teacher_temp):
    """main_dino.py DINOLoss.forward, element by element (views x examples x prototypes)."""
    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    total, terms = 0.0, 0
    for iq, t_view in enumerate(teacher):
        for v, s_view in enumerate(student):
            if v == iq:
                continue
            per_example = []
            for t, s in zip(t_view, s_view):
                q = softmax((t - center) / teacher_temp)
                log_p = np.log(softmax(s / student_temp))
                per_example.append(-sum(q[c] * log_p[c] for c in range(len(q))))
            total += np.mean(per_example)
            terms += 1
    return total / terms


def test_dino_loss_matches_reference_with_local_views():
    from vision_jax.methods.dino import dino_loss

    rng = np.random.default_rng(3)
    student = [rng.normal(size=(4, 6)) for _ in range(5)]  # 2 global + 3 local views
    teacher = [rng.normal(size=(4, 6)) for _ in range(2)]
    center = rng.normal(size=6) * 0.1
    actual = dino_loss([jnp.asarray(s) for s in student], [jnp.asarray(t) for t in teacher], jnp.asarray(center),
                       0.1, jnp.asarray(0.04))
    np.testing.assert_allclose(float(actual), reference_dino_loss(student, teacher, center, 0.1, 0.04), rtol=1e-4)


def test_soft_label_cross_entropy_matches_formula():
    from vision_jax.methods.base import classification_loss

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 4))
    soft = rng.dirichlet(np.ones(4), size=3)
    expected = np.mean([-np.sum(soft[i] * (logits[i] - np.log(np.exp(logits[i]).sum()))) for i in range(3)])
    loss, _ = classification_loss(jnp.asarray(logits), jnp.asarray(soft))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Integer labels are the one-hot case; smoothing moves eps/C of the mass to every class.
    labels = np.array([0, 3, 1])
    smoothed = np.full((3, 4), 0.1 / 4) + 0.9 * np.eye(4)[labels]
    expected = np.mean([-np.sum(smoothed[i] * (logits[i] - np.log(np.exp(logits[i]).sum()))) for i in range(3)])
    loss, _ = classification_loss(jnp.asarray(logits), jnp.asarray(labels), smoothing=0.1)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_embedding_spread_is_one_for_spread_embeddings_and_zero_at_collapse():
    from vision_jax.methods.base import embedding_spread

    spread = embedding_spread(jax.random.normal(jax.random.key(0), (4096, 64)))
    assert 0.95 < float(spread["embedding_std_ratio"]) < 1.05  # std of a unit vector's coordinate: 1/sqrt(d)
    np.testing.assert_allclose(float(spread["embedding_std"]), float(spread["embedding_std_ratio"]) / 8, rtol=1e-6)
    collapsed = jnp.ones((256, 64)) + 1e-4 * jax.random.normal(jax.random.key(1), (256, 64))
    assert float(embedding_spread(collapsed)["embedding_std_ratio"]) < 0.01
