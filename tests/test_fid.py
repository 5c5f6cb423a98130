"""FID and KID maths against closed forms and written-out references, and the FID evaluator's
checks of its feature network (the evaluator end to end: tests/test_dcgan.py)."""
import itertools

import numpy as np
import pytest
import scipy.linalg

from vision_jax.errors import ConfigError, MissingDataError
from vision_jax.evaluators import distances
from vision_jax.evaluators.feature_networks import feature_network


def pytorch_fid_frechet_distance(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's `calculate_frechet_distance` (src/pytorch_fid/fid_score.py), written out."""
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert distances.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    assert distances.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_matches_pytorch_fids_formula_on_full_covariances():
    rng = np.random.default_rng(1)
    for dim in (3, 32):
        a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
        sigma1, sigma2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        assert distances.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
            pytorch_fid_frechet_distance(mu1, sigma1, mu2, sigma2), rel=1e-8)


def test_fid_of_samples_estimates_the_distance_of_their_gaussians():
    rng = np.random.default_rng(2)
    s1, s2, shift = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5]), np.array([1.0, 0.0, -0.5])
    x = rng.normal(size=(200_000, 3)) * np.sqrt(s1)
    y = shift + rng.normal(size=(200_000, 3)) * np.sqrt(s2)
    expected = np.sum(shift**2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))  # 1.25 + 0.3431...
    assert distances.fid(x, y) == pytest.approx(expected, abs=0.02)


def test_fewer_samples_than_feature_dimensions_warn():
    rng = np.random.default_rng(3)
    with pytest.warns(UserWarning, match="10 samples of 16-d features, fewer than the dimension"):
        distances.fid(rng.normal(size=(10, 16)), rng.normal(size=(50, 16)))


def unbiased_mmd2_loops(x, y):
    """Bińkowski et al. 2018, eq. 3 with k(a, b) = (a.b / d + 1)^3, as loops over the pairs."""
    m, d = x.shape
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
    same = sum(k(x[i], x[j]) + k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return same - 2 * cross


def test_polynomial_mmd_is_the_unbiased_estimator_written_out():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(7, 5))
    assert distances.polynomial_mmd2(x, y) == pytest.approx(unbiased_mmd2_loops(x, y), rel=1e-10)


def test_kid_is_zero_for_one_distribution_and_the_population_mmd_for_shifted_ones():
    """Distributions on 6 points (and the same points shifted), whose MMD^2 is exact: the mean
    kernel over all pairs of support points, with independent draws."""
    rng = np.random.default_rng(5)
    support = rng.normal(size=(6, 2))
    shifted = support + np.array([0.5, -0.25])

    def mean_kernel(a, b):
        return np.mean([(np.dot(p, q) / 2 + 1.0) ** 3 for p in a for q in b])

    expected = mean_kernel(support, support) - 2 * mean_kernel(support, shifted) + mean_kernel(shifted, shifted)
    # 1,000 copies of each point: the sets hold exactly the distributions (KID samples subsets of them).
    x, x2, y = (rng.permutation(np.repeat(points, 1000, axis=0)) for points in (support, support, shifted))
    same_mean, same_std = distances.kid(x, x2, subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std / np.sqrt(20)  # zero within its standard error
    shifted_mean, _ = distances.kid(x, y, subsets=20, subset_size=500)
    assert shifted_mean == pytest.approx(expected, rel=0.03)
    assert expected > 10 * same_std


def test_feature_networks_missing_or_misnamed_are_refused_before_any_compute(tmp_path):
    with pytest.raises(MissingDataError, match=r"FID weights file .*missing.npz does not exist: download pytorch-fid"):
        feature_network(f"inception:{tmp_path}/missing.npz")
    with pytest.raises(MissingDataError, match="holds no vision_jax run"):
        feature_network(f"checkpoint:{tmp_path}")
    with pytest.raises(ConfigError, match="use 'checkpoint:WORKDIR'"):
        feature_network("resnet:/somewhere")
    run = tmp_path / "supervised_run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert feature_network(f"checkpoint:{run}/").label == "vision_jax supervised_run features"
