"""OOD residual diagnostics: closed forms, chi-square laws, detection, null-space blind spot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kstest

from latentda.observations import (
    Arctan,
    GaussianNoise,
    Identity,
    Linear,
    ObservationOperator,
    Square,
    Subset,
)
from latentda.ood import (
    OODResult,
    check_differentiable,
    manifold_distance,
    ood_residual,
    torch_operator,
)
from latentda.priors import LinearGaussianPrior, load

N, K, M = 20, 4, 12  # state, latent and observation dimensions of the linear tests
VAE_PATH = Path(__file__).resolve().parents[1] / "models" / "l96_vae_k32.pt"


def _linear_prior(seed: int = 0) -> tuple[LinearGaussianPrior, np.ndarray, np.ndarray]:
    """An exact float64 linear prior ``x = W z + b`` (sigma2 = 0: G(E(x)) projects on range W)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, K))
    b = rng.standard_normal(N)
    prior = LinearGaussianPrior(N, K, sigma2=0.0, dtype="float64")
    with torch.no_grad():
        prior.W.copy_(torch.as_tensor(W))
        prior.b.copy_(torch.as_tensor(b))
    return prior, W, b


def _lstsq_residual(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``min_z ||y - A z||^2`` per row of ``Y``."""
    coef = np.linalg.lstsq(A, Y.T, rcond=None)[0]
    return ((Y.T - A @ coef) ** 2).sum(axis=0)


def _random_spd(rng: np.random.Generator, m: int) -> np.ndarray:
    Q = rng.standard_normal((m, m))
    return Q @ Q.T / m + 0.5 * np.eye(m)


class _Custom(ObservationOperator):
    """A numpy-only operator the prior cannot be differentiated through."""

    name = "custom"

    def __init__(self, n: int) -> None:
        self.state_dim, self.obs_dim = n, n

    def _apply(self, E: np.ndarray) -> np.ndarray:
        return np.tanh(E)


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize("make", [
    lambda rng: Identity(N),
    lambda rng: Subset(N, [3, 0, 7, 19]),
    lambda rng: Linear(rng.standard_normal((6, N))),
    lambda rng: Arctan(N, [1, 4, 5]),
    lambda rng: Square(N, [2, 11]),
], ids=["identity", "subset", "linear", "arctan", "square"])
def test_torch_operator_matches_numpy_values_and_jacobian(make, rng):
    op = make(rng)
    check_differentiable(op)
    h = torch_operator(op, "cpu", torch.float64)
    X = rng.standard_normal((5, N))
    np.testing.assert_allclose(h(torch.as_tensor(X)).numpy(), op(X), rtol=1e-14, atol=1e-14)
    x = X[0]
    J = torch.autograd.functional.jacobian(lambda v: h(v[None])[0], torch.as_tensor(x))
    np.testing.assert_allclose(J.numpy(), op.jacobian(x), rtol=1e-13, atol=1e-14)


def test_unsupported_operator_is_rejected_everywhere():
    prior, _, _ = _linear_prior()
    op = _Custom(N)
    for call in (lambda: check_differentiable(op), lambda: torch_operator(op),
                 lambda: ood_residual(prior, op, np.zeros((2, N)), 1.0)):
        with pytest.raises(ValueError, match="observation operator") as err:
            call()
        assert "Identity" in str(err.value) and "Linear" in str(err.value)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("full_R", [False, True], ids=["diag-R", "full-R"])
def test_linear_prior_matches_closed_form_least_squares(full_R, rng):
    prior, W, b = _linear_prior()
    op = Linear(rng.standard_normal((M, N)))
    H = op.matrix()
    R = _random_spd(rng, M) if full_R else rng.uniform(0.3, 2.0, M)
    Rm = R if full_R else np.diag(R)
    Y = rng.standard_normal((50, M)) * 3.0 + H @ b
    res = ood_residual(prior, op, Y, R)
    Li = np.linalg.inv(np.linalg.cholesky(Rm))  # R^{-1/2} (any square root whitens)
    want = _lstsq_residual(Li @ H @ W, (Y - H @ b) @ Li.T) / M
    np.testing.assert_allclose(res.residual, want, rtol=1e-9)
    assert res.dof == M - K and res.converged.all()
    # the minimiser reproduces the fit: whitened residual orthogonal to range(L^-1 H W)
    fit = (Y - H @ b - (res.z @ W.T) @ H.T) @ Li.T
    assert np.abs(fit @ (Li @ H @ W)).max() < 1e-8 * np.abs(fit).max()

    lat = ood_residual(prior, op, Y, R, latent_prior=True)
    C = H @ W @ W.T @ H.T + Rm
    D = Y - H @ b
    quad = np.einsum("bi,ij,bj->b", D, np.linalg.inv(C), D)
    np.testing.assert_allclose(M * lat.residual, quad, rtol=1e-9)
    assert lat.dof == M
    # forward differences (one batched decoder call per Jacobian) reach the same minimum
    fd = ood_residual(prior, op, Y, R, latent_prior=True, jacobian="fd")
    np.testing.assert_allclose(M * fd.residual, quad, rtol=1e-7)


def test_one_observation_vector_and_gaussian_noise_R(rng):
    prior, _, b = _linear_prior()
    op = Subset(N, np.arange(M))
    y = b[:M] + rng.standard_normal(M)
    v = rng.uniform(0.5, 2.0, M)
    res = ood_residual(prior, op, y, v)
    assert isinstance(res, OODResult)
    assert res.residual.shape == res.score.shape == res.flag.shape == (1,)
    assert res.z.shape == (1, K) and res.flag.dtype == bool
    same = ood_residual(prior, op, y[None], GaussianNoise.diagonal(v))
    np.testing.assert_allclose(same.residual, res.residual, rtol=1e-12)
    full = ood_residual(prior, op, y[None], np.diag(v))
    np.testing.assert_allclose(full.residual, res.residual, rtol=1e-12)


# --------------------------------------------------------------------------- null law


@pytest.mark.parametrize("latent_prior", [False, True], ids=["no-latent", "latent"])
def test_chi_square_law_on_the_manifold(latent_prior, rng):
    prior, W, b = _linear_prior(1)
    op = Subset.random_sites(N, M, rng)
    H = op.matrix()
    Bn = 2000
    R = _random_spd(rng, M) if latent_prior else rng.uniform(0.3, 2.0, M)
    noise = GaussianNoise.full(R) if latent_prior else GaussianNoise.diagonal(R)
    Z = rng.standard_normal((Bn, K))
    Y = (Z @ W.T + b) @ H.T + noise.sample(rng, Bn)
    level = 0.05
    res = ood_residual(prior, op, Y, R, latent_prior=latent_prior, level=level)
    dof = M if latent_prior else M - K
    assert res.dof == dof
    q = M * res.residual
    assert abs(q.mean() - dof) < 3.0 * np.sqrt(2.0 * dof / Bn)
    assert abs(q.var(ddof=1) / (2.0 * dof) - 1.0) < 0.2
    rate = res.flag.mean()
    assert abs(rate - level) < 3.0 * np.sqrt(level * (1 - level) / Bn)
    assert kstest(res.score, "uniform").pvalue > 1e-3


def test_nonlinear_operator_small_noise_follows_chi_square(rng):
    prior, W, b = _linear_prior(2)
    op = Arctan(N, np.arange(M))
    sd = 0.01
    Bn = 300
    X = rng.standard_normal((Bn, K)) @ W.T + b
    Y = op(X) + sd * rng.standard_normal((Bn, M))
    res = ood_residual(prior, op, Y, sd * sd)
    q = M * res.residual
    assert res.converged.mean() > 0.95
    assert abs(q.mean() - (M - K)) < 4.0 * np.sqrt(2.0 * (M - K) / Bn)


# --------------------------------------------------------------------------- detection


def test_off_manifold_observations_are_flagged(rng):
    prior, W, b = _linear_prior()
    op = Subset(N, np.arange(M))
    H = op.matrix()
    v = rng.uniform(0.5, 2.0, M)
    Bn = 40
    Z = rng.standard_normal((Bn, K))
    eps = rng.standard_normal((Bn, M)) * np.sqrt(v)
    clean = (Z @ W.T + b) @ H.T + eps
    # an anomaly whose whitened observation is orthogonal to range(R^-1/2 H W)
    A = (H @ W) / np.sqrt(v)[:, None]
    Q = np.linalg.qr(A, mode="complete")[0][:, K:]
    c = (Q @ rng.standard_normal(M - K)) * np.sqrt(v)
    c *= np.sqrt(200.0) / np.linalg.norm(c / np.sqrt(v))  # whitened size^2 = 200
    r0 = ood_residual(prior, op, clean, v)
    r1 = ood_residual(prior, op, clean + c, v)
    assert r1.flag.all() and r1.score.max() < 1e-10
    assert r0.flag.mean() < 0.1
    # exact for a linear prior: the anomaly adds its (orthogonal) whitened energy
    np.testing.assert_allclose(M * r1.residual, M * r0.residual + 200.0
                               + 2.0 * _cross(clean - H @ b, c, A, v), rtol=1e-9)


def _cross(Y: np.ndarray, c: np.ndarray, A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``<P_perp y_w, c_w>``: cross term of the expanded residual (``c_w`` is orthogonal)."""
    Pw = np.eye(A.shape[0]) - A @ np.linalg.pinv(A)
    return (Y / np.sqrt(v)) @ Pw @ (c / np.sqrt(v))


def test_blind_spot_null_space_anomaly_is_invisible_to_observations(rng):
    prior, W, b = _linear_prior()
    obs = np.arange(M)  # variables M..N-1 are unobserved (null space of H)
    op = Subset(N, obs)
    v = np.ones(M)
    Bn = 10
    X = rng.standard_normal((Bn, K)) @ W.T + b
    eps = rng.standard_normal((Bn, M))
    # anomaly supported on unobserved variables and orthogonal to range(W)
    Wu = W[M:]
    a_u = np.linalg.qr(Wu, mode="complete")[0][:, K:] @ rng.standard_normal(N - M - K)
    a = np.zeros(N)
    a[M:] = a_u
    a *= 5.0 / np.sqrt(np.mean(a * a))  # RMS 5: far off the manifold
    assert np.abs(W.T @ a).max() < 1e-10 and np.abs(op.matrix() @ a).max() == 0.0

    clean = ood_residual(prior, op, op(X) + eps, v)
    anom = ood_residual(prior, op, op(X + a) + eps, v)
    np.testing.assert_array_equal(anom.residual, clean.residual)
    assert not anom.flag.any()
    # the state-space distance sees what the observations cannot
    np.testing.assert_allclose(manifold_distance(prior, X + a), 5.0, rtol=1e-10)
    assert manifold_distance(prior, X).max() < 1e-10
    # the same anomaly moved onto observed variables is flagged
    moved = np.roll(a, -(N - M))
    assert np.abs(op.matrix() @ moved).max() > 1.0
    assert ood_residual(prior, op, op(X + moved) + eps, v).flag.all()


# --------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_field(rng):
    prior, _, _ = _linear_prior()
    op = Subset(N, np.arange(M))
    Y = rng.standard_normal((3, M))
    with pytest.raises(ValueError, match=r"y must have shape \(N, 12\)"):
        ood_residual(prior, op, Y[:, :-1], 1.0)
    with pytest.raises(ValueError, match="y must be finite"):
        ood_residual(prior, op, np.where(Y > 1, np.nan, Y), 1.0)
    with pytest.raises(ValueError, match=r"R as observation-error variances must have shape"):
        ood_residual(prior, op, Y, np.ones(M + 1))
    with pytest.raises(ValueError, match=r"R must be a \(12,\) vector"):
        ood_residual(prior, op, Y, np.eye(M + 1))
    with pytest.raises(ValueError, match="R must be positive definite"):
        ood_residual(prior, op, Y, -np.eye(M))
    with pytest.raises(ValueError, match="R variances must be > 0"):
        ood_residual(prior, op, Y, np.zeros(M))
    with pytest.raises(ValueError, match="z0 must have shape"):
        ood_residual(prior, op, Y, 1.0, z0=np.zeros((2, K)))
    with pytest.raises(ValueError, match="observation operator reads states of size 21"):
        ood_residual(prior, Subset(N + 1, np.arange(M)), Y, 1.0)
    with pytest.raises(ValueError, match="level must lie strictly between 0 and 1"):
        ood_residual(prior, op, Y, 1.0, level=1.0)
    few = Subset(N, np.arange(K))
    with pytest.raises(ValueError, match="latent_prior=True"):
        ood_residual(prior, few, Y[:, :K], 1.0)
    res = ood_residual(prior, few, Y[:, :K], 1.0, latent_prior=True)  # allowed with the prior
    assert res.dof == K
    with pytest.raises(ValueError, match=r"X must have shape \(N, 20\)"):
        manifold_distance(prior, np.zeros((2, N - 1)))


# --------------------------------------------------------------------------- shipped VAE


@pytest.mark.skipif(not VAE_PATH.is_file(), reason="shipped VAE checkpoint missing")
def test_vae_full_observation_residual():
    vae = load(VAE_PATH, device="cpu")
    n, k = vae.state_dim, vae.latent_dim
    Bn = 48
    X = vae.sample(Bn, seed=3)
    Y = X + np.random.default_rng(4).standard_normal(X.shape)
    res = ood_residual(vae, Identity(n), Y, 1.0)
    q = n * res.residual
    assert res.dof == n - k
    assert n - k - 3.0 < q.mean() < n - k + 3.0  # nonlinear G: approximately chi2(m - k)
    assert res.converged.mean() >= 0.9
    at_encoder = np.sum((Y - vae.decode(vae.encode(Y))) ** 2, axis=1) / n
    assert np.all(res.residual <= at_encoder * (1 + 1e-9))
    assert np.median(res.residual / at_encoder) < 0.95  # the optimiser improves on the encoder
    # the minimiser's code reproduces the reported residual
    np.testing.assert_allclose(np.sum((Y - vae.decode(res.z)) ** 2, axis=1) / n,
                               res.residual, rtol=1e-4)


def test_fd_and_forward_jacobians_agree_on_the_vae():
    prior = load(VAE_PATH, device="cpu")
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((6, prior.latent_dim))
    Y = prior.decode(Z) + rng.standard_normal((6, prior.state_dim))
    z0 = prior.encode(Y)
    a = ood_residual(prior, Identity(prior.state_dim), Y, 1.0, z0=z0, latent_prior=True,
                     jacobian="forward")
    b = ood_residual(prior, Identity(prior.state_dim), Y, 1.0, z0=z0, latent_prior=True,
                     jacobian="fd", tol=1e-4, steps=20)
    np.testing.assert_allclose(b.residual, a.residual, rtol=0.02)
    with pytest.raises(ValueError, match="jacobian"):
        ood_residual(prior, Identity(prior.state_dim), Y, 1.0, latent_prior=True,
                     jacobian="reverse")
