"""The distances between two sets of features that FID and KID report, in float64 numpy.

- Fréchet distance (Heusel et al. 2017) between Gaussians fitted to each set:
  ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), with sample covariances (ddof 1) as
  pytorch-fid's `calculate_frechet_distance`. pytorch-fid takes sqrt(S1 S2) with scipy's sqrtm;
  here tr(sqrt(S1 S2)) is the sum of the square roots of the eigenvalues of the symmetric
  sqrt(S1) S2 sqrt(S1) (the same eigenvalues as S1 S2), which stays real and finite when the
  covariances are singular.
- KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the polynomial
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets, as torch-fidelity's
  `kernel_inception_distance` (100 subsets of 1,000 by default, each set sampled without
  replacement, numpy RandomState seeded) and clean-fid compute it.
"""
from __future__ import annotations

import warnings

import numpy as np


def mean_and_covariance(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _psd_sqrt(sigma1)
    product_eigenvalues = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sum(np.sqrt(np.clip(product_eigenvalues, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def warn_if_too_few(num_samples: int, dim: int, what: str) -> None:
    """Fewer samples than feature dimensions leave the covariance singular: FID is then biased
    far upward and varies with the sample count more than with the generator."""
    if num_samples < dim:
        warnings.warn(f"{what}: {num_samples} samples of {dim}-d features, fewer than the dimension, so the "
                      f"covariance is singular and the FID is biased upward; compare only numbers with the same "
                      f"sample counts, or use at least {dim} samples (published Inception FIDs use 10,000-50,000).",
                      stacklevel=2)


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """The FID between two sets of features [n, d]."""
    warn_if_too_few(min(len(features1), len(features2)), np.shape(features1)[1], "FID")
    return frechet_distance(*mean_and_covariance(features1), *mean_and_covariance(features2))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD of two equal-sized sets under k(a, b) = (a.b / d + 1)^3."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, d = x.shape

    def kernel(a, b):
        base = a @ b.T / d + 1.0
        return base * base * base  # twice as fast as ** 3

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_diagonal - 2.0 * k_xy.sum() / m**2)


def kid(features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> tuple[float, float]:
    """(mean, std) over `subsets` random subsets of the squared MMD between the two sets. A subset
    holds min(subset_size, the smaller set's size) examples of each set."""
    size = min(subset_size, len(features1), len(features2))
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        a = features1[rng.choice(len(features1), size, replace=False)]
        b = features2[rng.choice(len(features2), size, replace=False)]
        values.append(polynomial_mmd2(a, b))
    return float(np.mean(values)), float(np.std(values))
