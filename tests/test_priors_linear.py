"""Prior protocol on the analytic linear-Gaussian (PPCA) prior: the reference family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from latentda.priors import LinearGaussianPrior, load, resolve_device, save


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, k = 6, 2
    W = rng.standard_normal((n, k)) * 2.0
    b = rng.standard_normal(n)
    Z = rng.standard_normal((50_000, k))
    X = Z @ W.T + b + 0.3 * rng.standard_normal((50_000, n))
    return X, W @ W.T + 0.09 * np.eye(n), b


def test_fit_recovers_the_gaussian_marginal(data):
    X, C, b = data
    p = LinearGaussianPrior.fit(X, 2, dtype="float64")
    # sample covariance error ~ sqrt((C_ij^2 + C_ii C_jj) / N): 5 standard errors
    se = np.sqrt((C**2 + np.outer(np.diag(C), np.diag(C))) / len(X))
    assert np.all(np.abs(p.covariance() - C) < 5 * se + 1e-12)
    assert float(p.sigma2) == pytest.approx(0.09, rel=0.05)
    np.testing.assert_allclose(p.b.numpy(), b, atol=5 * np.sqrt(np.diag(C).max() / len(X)))


def test_log_prob_is_the_exact_gaussian_marginal(data):
    X, _, _ = data
    p = LinearGaussianPrior.fit(X, 2, dtype="float64")
    ref = multivariate_normal(p.b.numpy(), p.covariance()).logpdf(X[:20])
    np.testing.assert_allclose(p.log_prob(X[:20]), ref, rtol=1e-10)


def test_shapes_dtypes_device_and_round_trips(data, tmp_path):
    X, _, _ = data
    p = LinearGaussianPrior.fit(X, 2)
    assert p.dtype == torch.float32 and p.device.type == "cpu"
    Z = p.encode(X[:7])
    assert Z.shape == (7, 2) and Z.dtype == np.float64
    assert p.decode(Z).shape == (7, 6) and p.sample(5, seed=1).shape == (5, 6)
    np.testing.assert_array_equal(p.sample(5, seed=1), p.sample(5, seed=1))
    # encode is the posterior mean of z: decode(encode(x)) = W M^-1 W^T (x - b) + b
    W, b, s2 = p.W.double().numpy(), p.b.double().numpy(), float(p.sigma2)
    M = W.T @ W + s2 * np.eye(2)
    expect = (X[:7] - b) @ W @ np.linalg.solve(M, W.T) + b
    np.testing.assert_allclose(p.decode(Z), expect, rtol=1e-4, atol=1e-4)
    path = save(p, tmp_path / "lin.pt", meta={"trained_on": "test"})
    q = load(path, device="cpu", state_dim=6, latent_dim=2)
    np.testing.assert_array_equal(q.decode(Z), p.decode(Z))
    assert q.meta == {"trained_on": "test"}


def test_full_rank_without_noise_is_invertible():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 4)) @ rng.standard_normal((4, 4))
    p = LinearGaussianPrior.fit(X, 4, dtype="float64")
    assert float(p.sigma2) == 0.0
    np.testing.assert_allclose(p.decode(p.encode(X[:10])), X[:10], atol=1e-10)
    np.testing.assert_allclose(p.residual_cov, 0.0, atol=1e-10)


def test_residual_covariance_matches_samples(data):
    X, _, _ = data
    p = LinearGaussianPrior.fit(X, 2, dtype="float64")
    R = X[:20_000] - p.decode(p.encode(X[:20_000]))
    np.testing.assert_allclose(np.cov(R, rowvar=False), p.residual_cov, atol=0.01)


def test_bad_input_and_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="latent_dim"):
        LinearGaussianPrior(3, 4)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3\)"):
        LinearGaussianPrior(3, 2).encode(np.zeros((2, 5)))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupted"):
        load(tmp_path / "bad.pt")
    path = save(LinearGaussianPrior(3, 2), tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="state_dim 3, but 40 is needed"):
        load(path, state_dim=40)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")
