"""Latent MAP, Laplace (latent and variable space) and flow-prior inference: analytic answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from latentda.inference.gauss_newton import HessianWarning, gauss_newton, laplace_posterior
from latentda.inference.latent import (
    flow_map,
    latent_laplace,
    latent_map,
    variable_space_laplace,
)
from latentda.observations import Identity, Linear, Square, Subset
from latentda.priors import LinearGaussianPrior, RealNVPPrior

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def linear_prior(n: int = 6, k: int = 3, sigma2: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = LinearGaussianPrior(n, k, sigma2, dtype="float64")
    with torch.no_grad():
        p.W.copy_(torch.as_tensor(rng.standard_normal((n, k)) * 1.5))
        p.b.copy_(torch.as_tensor(rng.standard_normal(n)))
    return p


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    p = linear_prior()
    H = rng.standard_normal((4, 6))
    R = np.diag(rng.uniform(0.2, 0.8, 4))
    y = rng.standard_normal(4) * 2
    W, b = p.W.numpy().copy(), p.b.numpy().copy()
    # the exact latent posterior of z ~ N(0, I), y = H (W z + b) + eps
    M = np.linalg.cholesky(np.linalg.inv(R)).T @ H @ W  # any R^{-1/2}: M^T M is invariant
    P = np.eye(3) + M.T @ M
    cz = np.linalg.inv(P)
    mz = cz @ W.T @ H.T @ np.linalg.solve(R, y - H @ b)
    return p, Linear(H), y, R, mz, cz, W, b


def test_latent_map_is_the_exact_posterior_mean(problem):
    p, op, y, R, mz, _, W, b = problem
    res = latent_map(p, op, y, R)
    assert res.converged and res.iterations <= 2  # quadratic: one Gauss-Newton step
    np.testing.assert_allclose(res.z, mz, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.x, W @ mz + b, rtol=1e-8, atol=1e-10)
    # the whitened observed Jacobian M has M^T M = W^T H^T R^-1 H W
    H = op.matrix()
    np.testing.assert_allclose(res.M.T @ res.M, W.T @ H.T @ np.linalg.solve(R, H @ W),
                               rtol=1e-10)


def test_latent_laplace_is_the_exact_gaussian_posterior(problem):
    p, op, y, R, mz, cz, W, b = problem
    lap = latent_laplace(p, op, y, R)
    np.testing.assert_allclose(lap.z_mean, mz, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(lap.z_cov, cz, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(lap.x_cov, W @ cz @ W.T, rtol=1e-8, atol=1e-12)
    assert lap.damping == 0.0
    # the exact Hessian of a quadratic is the Gauss-Newton one
    ex = latent_laplace(p, op, y, R, hessian="exact")
    np.testing.assert_allclose(ex.z_cov, cz, rtol=1e-8, atol=1e-12)
    # noisy-manifold prior: the residual covariance is added in state space
    lr = latent_laplace(p, op, y, R, add_residual=True)
    np.testing.assert_allclose(lr.x_cov, W @ cz @ W.T + p.residual_cov, rtol=1e-8, atol=1e-12)


def test_variable_space_laplace_equals_latent_laplace_on_the_manifold(problem):
    p, op, y, R, mz, cz, W, b = problem
    for z0 in (None, np.array([0.7, -1.0, 2.0])):  # a linear G: any linearization point
        v = variable_space_laplace(p, op, y, R, z0=z0, residual=False)
        np.testing.assert_allclose(v.x_mean, W @ mz + b, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(v.x_cov, W @ cz @ W.T, rtol=1e-8, atol=1e-10)


def test_variable_space_laplace_is_the_kalman_posterior_of_the_noisy_prior(problem):
    p, op, y, R, *_ = problem
    W, b, H = p.W.numpy(), p.b.numpy(), op.matrix()
    C = W @ W.T + p.residual_cov
    K = C @ H.T @ np.linalg.inv(H @ C @ H.T + R)
    for RR in (R, np.diag(R)):  # a full covariance, and variances
        v = variable_space_laplace(p, op, y, RR, residual=True)
        np.testing.assert_allclose(v.prior_cov, C, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(v.x_mean, b + K @ (y - H @ b), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(v.x_cov, C - K @ H @ C, rtol=1e-8, atol=1e-10)


def sign_ambiguous():
    """x = 2 z with z ~ N(0, 1) (so x ~ N(0, 4), symmetric), y = x^2 + eps, sigma = 0.5."""
    p = LinearGaussianPrior(1, 1, 0.0, dtype="float64")
    with torch.no_grad():
        p.W.fill_(2.0)
    return p, Square(1), np.array([4.0]), np.array([0.25])


def test_laplace_reports_one_mode_of_a_bimodal_posterior():
    p, op, y, R = sign_ambiguous()
    grid = np.linspace(-4, 4, 80_001)
    logp = -grid**2 / 8 - (4 - grid**2) ** 2 / (2 * 0.25)
    wts = np.exp(logp - logp.max())
    wts /= wts.sum()
    assert wts[grid > 0].sum() == pytest.approx(0.5, abs=1e-9)  # two equal modes
    xpos = (wts * grid)[grid > 0].sum() / wts[grid > 0].sum()
    lap = latent_laplace(p, op, y, R, z0=np.array([0.3]))
    # one Gaussian on the positive mode: essentially no mass at x < 0
    mean, sd = lap.x_mean[0], np.sqrt(lap.x_cov[0, 0])
    assert mean == pytest.approx(xpos, abs=0.02)
    assert mean / sd > 10
    lap_neg = latent_laplace(p, op, y, R, z0=np.array([-0.3]))
    assert lap_neg.x_mean[0] == pytest.approx(-mean, rel=1e-8)


def test_indefinite_exact_hessian_is_damped_with_a_warning():
    p, op, y, R = sign_ambiguous()
    # from z = 0 (a stationary point between the modes) the exact Hessian is negative
    with pytest.warns(HessianWarning, match="raised"):
        lap = latent_laplace(p, op, y, R, z0=np.array([0.0]), hessian="exact")
    assert lap.damping > 100  # d2J/dz2 = 1 - 128 at z = 0
    assert np.all(np.isfinite(lap.z_cov)) and np.all(np.linalg.eigvalsh(lap.z_cov) > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gn = latent_laplace(p, op, y, R, z0=np.array([0.0]))  # Gauss-Newton: never indefinite
    assert gn.damping == 0.0


def test_gauss_newton_converges_on_a_nonlinear_problem_and_reports_it():
    rng = np.random.default_rng(3)
    A = torch.as_tensor(rng.standard_normal((5, 3)))

    def F(w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w @ A.T) * 3.0

    yw = np.array([1.0, -2.0, 0.5, 2.5, -1.0])
    res = gauss_newton(F, yw, 3, steps=50, tol=1e-10)
    assert res.converged and res.grad_norm < 1e-7  # sqrt(eps): J is flat to round-off beyond
    # stationarity of J(w) = |w|^2/2 + |yw - F(w)|^2/2, checked by autograd
    w = torch.as_tensor(res.w).requires_grad_(True)
    J = 0.5 * (w @ w + ((torch.as_tensor(yw) - F(w[None])[0]) ** 2).sum())
    g, = torch.autograd.grad(J, w)
    assert float(g.abs().max()) < 1e-7
    short = gauss_newton(F, yw, 3, steps=1)
    assert not short.converged and short.iterations == 1
    post = laplace_posterior(res)
    np.testing.assert_allclose(np.linalg.inv(post.cov), np.eye(3) + res.jacobian.T @ res.jacobian,
                               rtol=1e-10)


def test_flow_map_with_a_gaussian_density_is_the_kalman_mean():
    p = linear_prior(n=4, k=2, sigma2=0.5, seed=5)
    op = Subset(4, [0, 2])
    R = np.array([0.3, 0.6])
    y = np.array([1.5, -0.5])
    C, b, H = p.covariance(), p.b.numpy(), op.matrix()
    K = C @ H.T @ np.linalg.inv(H @ C @ H.T + np.diag(R))
    res = flow_map(p, op, y, R)
    assert res.converged
    np.testing.assert_allclose(res.x, b + K @ (y - H @ b), rtol=1e-7, atol=1e-8)


def nonlinear_flow() -> RealNVPPrior:
    """A 2-D RealNVP moved well off its (Gaussian) identity initialization, seeded."""
    torch.manual_seed(3)
    p = RealNVPPrior(2, arch={"kind": "mlp", "hidden": [8]}, n_layers=4, scale_bound=0.7,
                     dtype="float64")
    p.set_normalization([1.0, -2.0], [0.5, 2.0])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(0.4 * torch.randn(q.shape, generator=g, dtype=q.dtype))
    return p


def test_flow_map_is_the_mode_of_a_nonlinear_flow_posterior():
    p = nonlinear_flow()
    op = Identity(2)
    y, R = np.array([1.2, -1.0]), np.array([0.5, 2.0])
    res = flow_map(p, op, y, R)
    # compare with the maximum of the log posterior on a fine grid around it
    x0 = np.linspace(res.x[0] - 0.3, res.x[0] + 0.3, 201)
    x1 = np.linspace(res.x[1] - 0.6, res.x[1] + 0.6, 201)
    G = np.stack(np.meshgrid(x0, x1, indexing="ij"), -1).reshape(-1, 2)
    lp = p.log_prob(G) - 0.5 * (((y - G) ** 2) / R).sum(1)
    assert res.log_posterior >= lp.max() - 1e-9
    np.testing.assert_allclose(res.x, G[np.argmax(lp)], atol=0.01)


def test_non_differentiable_operator_is_refused_naming_the_method_and_alternative(problem):
    p, _, y, R, *_ = problem

    class Custom(Identity):
        """A user operator torch knows nothing about."""

    with pytest.raises(ValueError, match=r"latent_laplace needs gradients.*ETKF"):
        latent_laplace(p, Custom(6), np.zeros(6), 1.0)
    with pytest.raises(ValueError, match="y must be a finite vector of length m = 4"):
        latent_map(p, Linear(np.ones((4, 6))), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="states of size 5"):
        latent_map(p, Identity(5), np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="hessian must be"):
        latent_laplace(p, Identity(6), np.zeros(6), 1.0, hessian="newton")


def test_flow_inference_needs_a_tractable_density():
    from latentda.priors import VAEPrior

    vae = VAEPrior(4, 2, arch={"kind": "mlp", "hidden": [8]})
    with pytest.raises(ValueError, match="tractable density"):
        flow_map(vae, Identity(4), np.zeros(4), 1.0)


def test_latent_mcmc_finds_both_modes_that_laplace_misses():
    from latentda.inference.latent import latent_mcmc

    p, op, y, R = sign_ambiguous()
    grid = np.linspace(-4, 4, 80_001)
    logp = -grid**2 / 8 - (4 - grid**2) ** 2 / (2 * 0.25)
    wts = np.exp(logp - logp.max())
    wts /= wts.sum()
    xpos = (wts * grid)[grid > 0].sum() / wts[grid > 0].sum()
    z_init = np.random.default_rng(0).standard_normal((1000, 1))  # prior draws
    res = latent_mcmc(p, op, y, R, sampler="hmc", z_init=z_init, steps=60, seed=1,
                      precondition=False)
    x = 2.0 * res.samples.reshape(-1)
    frac = float((x > 0).mean())
    assert 0.45 <= frac <= 0.55  # two equal modes; Laplace puts all mass on one
    assert np.mean(x[x > 0]) == pytest.approx(xpos, abs=0.05)
    assert np.mean(x[x < 0]) == pytest.approx(-xpos, abs=0.05)


def test_collapsed_vae_latent_posterior_is_its_prior():
    from latentda.inference.identifiability import posterior_collapse
    from latentda.inference.latent import latent_mcmc
    from latentda.priors import VAEPrior

    torch.manual_seed(0)
    vae = VAEPrior(6, 2, arch={"kind": "mlp", "hidden": [8]}, dtype="float64")
    with torch.no_grad():  # the decoder ignores z; the encoder returns the prior
        vae.decoder[0].weight.zero_()
        vae.encoder[-1].weight.zero_()
        vae.encoder[-1].bias.zero_()
    X = np.random.default_rng(0).normal(size=(50, 6))
    assert posterior_collapse(vae, X).collapsed
    op, y = Identity(6), np.full(6, 0.7)
    lap = latent_laplace(vae, op, y, 0.1)
    np.testing.assert_allclose(lap.z_mean, 0.0, atol=1e-12)
    np.testing.assert_allclose(lap.z_cov, np.eye(2), atol=1e-12)
    res = latent_mcmc(vae, op, y, 0.1, chains=200, steps=80, seed=2)
    Z = res.samples.reshape(-1, 2)
    ess = float(res.ess.min())
    assert np.all(np.abs(Z.mean(0)) < 4 / np.sqrt(ess))
    np.testing.assert_allclose(Z.var(0), 1.0, atol=0.15)


def test_flow_mcmc_matches_the_grid_posterior_of_a_nonlinear_flow():
    from latentda.inference.latent import flow_mcmc

    p = nonlinear_flow()
    op = Identity(2)
    y, R = np.array([1.2, -1.0]), np.array([0.1, 1.0])
    x0 = np.linspace(-1.5, 3.5, 401)
    x1 = np.linspace(-8, 6, 801)
    G = np.stack(np.meshgrid(x0, x1, indexing="ij"), -1).reshape(-1, 2)
    lp = p.log_prob(G) - 0.5 * (((y - G) ** 2) / R).sum(1)
    w = np.exp(lp - lp.max())
    w /= w.sum()
    mean = w @ G
    sd = np.sqrt(w @ (G - mean) ** 2)
    res = flow_mcmc(p, op, y, R, sampler="mala", chains=64, steps=300, seed=4)
    assert np.all(res.rhat < 1.1)
    S = res.samples.reshape(-1, 2)
    se = sd / np.sqrt(res.ess)
    assert np.all(np.abs(S.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(S.std(0), sd, rtol=0.15)
