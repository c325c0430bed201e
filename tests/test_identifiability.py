"""Local identifiability of latent codes (SVD, Fisher information, CRLB) and VAE collapse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentda.inference.identifiability import (
    CollapseReport,
    IdentifiabilityBatch,
    cramer_rao_bound,
    fisher_information,
    identifiability,
    latent_identifiability,
    observed_jacobian,
    posterior_collapse,
)
from latentda.observations import Identity, Linear, Subset
from latentda.priors import LinearGaussianPrior, VAEPrior

torch.set_num_threads(1)


# --------------------------------------------------------------------------- pure linear algebra


def test_analytic_rank_deficient_jacobian():
    M = np.array([[math.sqrt(3.0), 0.0, 0.0], [0.0, 1.0, 0.0]])
    res = identifiability(M)
    np.testing.assert_allclose(res.singular_values, [math.sqrt(3.0), 1.0, 0.0], rtol=0,
                               atol=1e-12)
    assert res.rank == 2
    assert res.null_space.shape == (3, 1)
    assert abs(abs(res.null_space[:, 0] @ np.array([0.0, 0.0, 1.0])) - 1.0) < 1e-12
    np.testing.assert_allclose(res.crlb[:2], [1.0 / 3.0, 1.0], rtol=1e-12)
    assert res.crlb[2] == np.inf
    assert res.stable_step == pytest.approx(1.0 / 3.0, rel=1e-12)
    np.testing.assert_allclose(res.fisher, np.diag([3.0, 1.0, 0.0]), atol=1e-15)
    # the same CRLB through the Fisher information
    crlb_f = cramer_rao_bound(res.fisher)
    np.testing.assert_allclose(crlb_f[:2], [1.0 / 3.0, 1.0], rtol=1e-12)
    assert crlb_f[2] == np.inf


def test_stable_step_is_the_gradient_descent_stability_limit():
    """GD on 1/2||M dz - r||^2 converges for steps below 2/sigma_max^2 and diverges above."""
    rng = np.random.default_rng(3)
    M = rng.normal(size=(5, 3))
    r = rng.normal(size=5)
    h = identifiability(M).stable_step
    dz_star = np.linalg.lstsq(M, r, rcond=None)[0]

    def error_after(step: float, n: int = 3000) -> float:
        dz = np.zeros(3)
        for _ in range(n):
            dz -= step * (M.T @ (M @ dz - r))
        return float(np.linalg.norm(dz - dz_star))

    assert error_after(h) < 1e-8
    assert error_after(1.9 * h) < 1e-6
    assert error_after(2.1 * h) > 1e3


def test_crlb_of_a_two_by_two_fisher_information():
    F = np.array([[20.0, -20.0], [-20.0, 40.0]])  # F^-1 = [[0.1, 0.05], [0.05, 0.05]]
    crlb = cramer_rao_bound(F)
    assert abs(crlb[0] - 0.1) < 1e-12
    assert abs(crlb[1] - 0.05) < 1e-12
    assert np.all(cramer_rao_bound(np.zeros((3, 3))) == np.inf)
    # a null direction (1, 1, 0)/sqrt(2) touches z1 and z2 but not z3
    Fs = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    c = cramer_rao_bound(Fs)
    assert c[0] == np.inf and c[1] == np.inf
    assert c[2] == pytest.approx(0.25, rel=1e-12)


def test_fisher_information_scalar_diagonal_and_full_noise():
    rng = np.random.default_rng(0)
    M = rng.normal(size=(6, 3))
    sigma2 = 0.37
    np.testing.assert_allclose(fisher_information(M, sigma2), M.T @ M / sigma2, rtol=1e-12)
    np.testing.assert_allclose(fisher_information(M), M.T @ M, rtol=1e-12)
    v = rng.uniform(0.1, 2.0, size=6)
    np.testing.assert_allclose(fisher_information(M, v), M.T @ np.diag(1 / v) @ M, rtol=1e-12)
    A = rng.normal(size=(6, 6))
    R = A @ A.T + 0.5 * np.eye(6)
    expect = M.T @ np.linalg.solve(R, M)
    np.testing.assert_allclose(fisher_information(M, R), expect, rtol=1e-10)
    # whitened M gives the same Fisher information through identifiability
    Mw = np.linalg.solve(np.linalg.cholesky(R), M)
    res = identifiability(Mw)
    np.testing.assert_allclose(res.fisher, expect, rtol=1e-10)
    np.testing.assert_allclose(res.crlb, np.diag(np.linalg.inv(expect)), rtol=1e-10)
    assert res.rank == 3 and res.null_space.shape == (3, 0)


# --------------------------------------------------------------------------- linear prior


def _linear_prior(n: int = 6, k: int = 3, dtype: str = "float64", seed: int = 0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, k))
    b = rng.normal(size=n)
    p = LinearGaussianPrior(n, k, 0.0, dtype)
    p.set_normalization(rng.normal(size=n), rng.uniform(0.5, 2.0, size=n))
    with torch.no_grad():
        p.W.copy_(torch.as_tensor(W))
        p.b.copy_(torch.as_tensor(b))
    # G(z) = W z + b in physical units
    z = rng.normal(size=(4, k))
    np.testing.assert_allclose(p.decode(z), z @ W.T + b, rtol=1e-5 if dtype == "float32"
                               else 1e-13)
    return p, W, z


def test_observed_jacobian_of_a_linear_prior_is_r_minus_half_h_w():
    p, W, z = _linear_prior()
    rng = np.random.default_rng(1)
    H = rng.normal(size=(4, 6))
    A = rng.normal(size=(4, 4))
    R = A @ A.T + 0.3 * np.eye(4)
    Linv = np.linalg.solve(np.linalg.cholesky(R), np.eye(4))
    expect = Linv @ H @ W
    M = observed_jacobian(p, Linear(H), z, R, jacobian="forward")
    assert M.shape == (4, 4, 3) and M.dtype == np.float64
    np.testing.assert_allclose(M, np.broadcast_to(expect, M.shape), rtol=0, atol=1e-10)
    Mfd = observed_jacobian(p, Linear(H), z, R, jacobian="fd")
    np.testing.assert_allclose(Mfd, M, rtol=0, atol=1e-6 * np.abs(expect).max())
    # "auto" is forward mode for a float64 prior; a single code gives a batch of one
    np.testing.assert_allclose(observed_jacobian(p, Linear(H), z[0], R), M[:1], rtol=1e-14,
                               atol=1e-15)
    # CRLB against the inverse Fisher information formed directly in numpy
    F = W.T @ H.T @ np.linalg.solve(R, H @ W)
    crlb_np = np.diag(np.linalg.inv(F))
    res = identifiability(M[0])
    np.testing.assert_allclose(res.crlb, crlb_np, rtol=1e-9)
    batch = latent_identifiability(p, Linear(H), z, R)
    assert isinstance(batch, IdentifiabilityBatch)
    assert batch.singular_values.shape == (4, 3) and batch.crlb.shape == (4, 3)
    np.testing.assert_array_equal(batch.rank, [3, 3, 3, 3])
    np.testing.assert_allclose(batch.crlb, np.broadcast_to(crlb_np, (4, 3)), rtol=1e-9)
    np.testing.assert_allclose(batch.singular_values[0], np.linalg.svd(expect, compute_uv=False),
                               rtol=1e-10)


def test_subset_with_fewer_observations_than_latents_has_null_directions():
    p, W, z = _linear_prior()
    op = Subset(6, [0, 3])  # m = 2 < k = 3
    r = np.array([0.5, 2.0])
    M = observed_jacobian(p, op, z, r)
    SW = W[[0, 3]]
    np.testing.assert_allclose(M[0], SW / np.sqrt(r)[:, None], rtol=0, atol=1e-12)
    res = identifiability(M[0])
    assert res.rank == 2
    assert res.singular_values.shape == (3,) and res.singular_values[2] == 0.0
    n = res.null_space[:, 0]
    assert np.linalg.norm(M[0] @ n) < 1e-12 * np.linalg.norm(M[0])
    assert abs(np.linalg.norm(n) - 1.0) < 1e-12
    assert np.all(np.abs(n) > 1e-3)  # the null direction touches every coordinate here ...
    assert np.all(res.crlb == np.inf)  # ... so none is identifiable
    batch = latent_identifiability(p, op, z, r)
    np.testing.assert_array_equal(batch.rank, [2] * len(z))
    assert np.all(batch.crlb == np.inf)
    # observing a third variable restores identifiability
    full = latent_identifiability(p, Subset(6, [0, 3, 5]), z, 1.0)
    np.testing.assert_array_equal(full.rank, [3] * len(z))
    assert np.all(np.isfinite(full.crlb))


def test_auto_jacobian_uses_finite_differences_for_float32():
    p, W, z = _linear_prior(dtype="float32")
    op = Subset(6, [0, 2, 4, 5])
    auto = observed_jacobian(p, op, z, 0.25)
    np.testing.assert_array_equal(auto, observed_jacobian(p, op, z, 0.25, jacobian="fd"))
    exact = observed_jacobian(p, op, z, 0.25, jacobian="forward")
    np.testing.assert_allclose(exact, np.broadcast_to(W[[0, 2, 4, 5]] / 0.5, exact.shape),
                               rtol=1e-6)
    # forward differences in float32: error ~ sqrt(eps32) relative
    assert np.abs(auto - exact).max() < 5e-3 * np.abs(exact).max()
    assert np.abs(auto - exact).max() > 0  # genuinely a different (approximate) method


# --------------------------------------------------------------------------- VAE priors


def _vae(seed: int, n: int = 5, k: int = 3) -> VAEPrior:
    torch.manual_seed(seed)
    p = VAEPrior(n, k, {"kind": "mlp", "hidden": [16]}, dtype="float64")
    rng = np.random.default_rng(seed)
    p.set_normalization(rng.normal(size=n), rng.uniform(0.5, 2.0, size=n))
    return p


def _states(n: int = 5, N: int = 40, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(N, n)) * 1.5


def test_collapsed_vae_is_flagged_and_nothing_is_identifiable():
    p = _vae(0)
    with torch.no_grad():
        p.decoder[0].weight.zero_()  # the only layer that sees z
        p.encoder[-1].weight.zero_()  # q(z|x) = N(0, I) for every x
        p.encoder[-1].bias.zero_()
    X = _states()
    rep = posterior_collapse(p, X)
    assert isinstance(rep, CollapseReport)
    assert rep.collapsed
    assert rep.active_units == 0
    np.testing.assert_array_equal(rep.collapsed_dims, [0, 1, 2])
    np.testing.assert_allclose(rep.kl_per_dim, 0.0, atol=1e-15)
    np.testing.assert_array_equal(rep.decoder_sensitivity, np.zeros(3))
    # the observations carry no information on z
    z = np.random.default_rng(1).normal(size=(3, 3))
    M = observed_jacobian(p, Identity(5), z, 0.1)
    np.testing.assert_array_equal(M, 0.0)
    F = fisher_information(M[0])
    np.testing.assert_array_equal(F, 0.0)
    assert np.all(cramer_rao_bound(F) == np.inf)
    res = identifiability(M[0])
    assert res.rank == 0 and res.stable_step == np.inf
    np.testing.assert_allclose(res.null_space.T @ res.null_space, np.eye(3), atol=1e-12)
    batch = latent_identifiability(p, Identity(5), z, 0.1)
    np.testing.assert_array_equal(batch.rank, [0, 0, 0])
    assert np.all(batch.crlb == np.inf)


def test_random_vae_is_not_collapsed_and_its_sensitivity_is_the_decoder_jacobian():
    p = _vae(2)
    X = _states()
    rep = posterior_collapse(p, X)
    assert not rep.collapsed
    assert np.all(rep.decoder_sensitivity > 0)
    # RMS over X of ||dG/dz_j|| at the encoder mean, by reverse-mode autograd per state
    mu = torch.as_tensor(p.encode(X))
    norms = np.stack([torch.autograd.functional.jacobian(
        lambda u: p.decode_t(u[None])[0], mu[i]).detach().numpy() for i in range(len(X))])
    expect = np.sqrt((np.linalg.norm(norms, axis=1) ** 2).mean(0))
    np.testing.assert_allclose(rep.decoder_sensitivity, expect, rtol=1e-12)
    # kl_per_dim and collapsed_dims agree with the prior's own diagnostics
    np.testing.assert_allclose(rep.kl_per_dim, p.kl_per_dim(X), rtol=1e-14)
    np.testing.assert_array_equal(rep.collapsed_dims, np.flatnonzero(p.kl_per_dim(X) < 0.01))
    assert rep.active_units == p.active_units(X, 0.01)


def test_nonlinear_prior_forward_and_fd_jacobians_agree_and_batch_matches_single():
    p = _vae(3)
    z = np.random.default_rng(4).normal(size=(5, 3))
    R = np.array([0.2, 0.5, 1.0, 0.3])
    op = Subset(5, [0, 1, 3, 4])
    Mf = observed_jacobian(p, op, z, R, jacobian="forward")
    Mfd = observed_jacobian(p, op, z, R, jacobian="fd")
    assert np.abs(Mf - Mfd).max() < 1e-6 * np.abs(Mf).max()
    # forward mode equals reverse-mode autograd of R^{-1/2} h(G(z))
    Jrev = torch.autograd.functional.jacobian(
        lambda u: p.decode_t(u[None])[0, [0, 1, 3, 4]], torch.as_tensor(z[1])).numpy()
    np.testing.assert_allclose(Mf[1], Jrev / np.sqrt(R)[:, None], rtol=1e-12, atol=1e-14)
    batch = latent_identifiability(p, op, z, R)
    for b in range(len(z)):
        one = identifiability(Mf[b])
        np.testing.assert_allclose(batch.singular_values[b], one.singular_values, rtol=1e-12)
        np.testing.assert_allclose(batch.crlb[b], one.crlb, rtol=1e-10)
        assert batch.rank[b] == one.rank == 3
        np.testing.assert_allclose(one.crlb, np.diag(np.linalg.inv(Mf[b].T @ Mf[b])),
                                   rtol=1e-8)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call, match", [
    (lambda: identifiability(np.ones(3)), "M must be a 2-D"),
    (lambda: identifiability(np.array([[1.0, np.nan]])), "M must be finite"),
    (lambda: identifiability(np.array([["a"]])), "M must be a real numeric"),
    (lambda: identifiability(np.eye(2), rtol=0.0), "rtol must lie strictly between"),
    (lambda: identifiability(np.eye(2), rtol=1.0), "rtol must lie strictly between"),
    (lambda: fisher_information(np.eye(3), np.ones(2)),
     r"R as observation-error variances must have shape \(3,\)"),
    (lambda: fisher_information(np.eye(2), np.array([[1.0, 2.0], [2.0, 1.0]])),
     "R must be positive definite"),
    (lambda: fisher_information(np.eye(2), -1.0), "R variances must be > 0"),
    (lambda: cramer_rao_bound(np.ones((2, 3))), "F must be a square"),
    (lambda: cramer_rao_bound(np.array([[1.0, 2.0], [0.0, 1.0]])), "F must be symmetric"),
    (lambda: cramer_rao_bound(-np.eye(2)), "F must be positive semi-definite"),
    (lambda: cramer_rao_bound(np.eye(2), rtol=2.0), "rtol"),
])
def test_bad_matrices_name_the_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_prior_inputs_name_the_field():
    p, _, z = _linear_prior()
    op = Subset(6, [0, 1])
    with pytest.raises(ValueError, match=r"z must have shape \(N, 3\)"):
        observed_jacobian(p, op, np.zeros((2, 4)), 1.0)
    with pytest.raises(ValueError, match="z must be finite"):
        observed_jacobian(p, op, np.full(3, np.nan), 1.0)
    with pytest.raises(ValueError, match=r"operator.state_dim \(7\) must equal prior.state_dim"):
        observed_jacobian(p, Subset(7, [0, 1]), z, 1.0)
    with pytest.raises(ValueError, match="jacobian must be"):
        observed_jacobian(p, op, z, 1.0, jacobian="reverse")
    with pytest.raises(ValueError, match=r"R as observation-error variances .* \(2,\)"):
        observed_jacobian(p, op, z, np.ones(3))
    with pytest.raises(ValueError, match="rtol"):
        latent_identifiability(p, op, z, 1.0, rtol=-1.0)
    with pytest.raises(ValueError, match="posterior collapse is defined for VAE priors"):
        posterior_collapse(p, np.zeros((5, 6)))
    vae = _vae(0)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 5\)"):
        posterior_collapse(vae, np.zeros((5, 6)))
    with pytest.raises(ValueError, match="X must hold at least 2 states"):
        posterior_collapse(vae, np.zeros((1, 5)))
    with pytest.raises(ValueError, match="kl_threshold must be > 0"):
        posterior_collapse(vae, np.zeros((4, 5)), kl_threshold=0.0)
    with pytest.raises(ValueError, match="var_threshold must be > 0"):
        posterior_collapse(vae, np.zeros((4, 5)), var_threshold=-1.0)
