"""Gradient-based analyses (Laplace, variable-space Laplace, MCMC) against exact algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentda.autodiff import torch_operator
from latentda.cycle import Cycle
from latentda.dynamics import Lorenz96
from latentda.filters import (
    ETKF,
    Background,
    HybridETKF,
    LaplaceAnalysis,
    MCMCAnalysis,
    Observation,
    VariableLaplace,
)
from latentda.identifiability_monitor import IdentifiabilityMonitor
from latentda.observations import Arctan, Identity, Subset
from latentda.priors import LinearGaussianPrior
from latentda.spaces import LatentSpace, StateSpace

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def obs_of(op, y, R):
    return Observation(y=y, R=R, h=op, h_torch=torch_operator(op))


def ensemble(rng, N, d, scale=1.0):
    return rng.normal(size=(N, d)) * scale + rng.normal(size=d)


def test_laplace_mean_is_the_etkf_mean_for_linear_h():
    rng = np.random.default_rng(0)
    E = ensemble(rng, 12, 6)
    op = Subset(6, [0, 2, 3, 5])
    obs = obs_of(op, rng.normal(size=4), np.diag(rng.uniform(0.3, 1.0, 4)))
    la = LaplaceAnalysis().analyse(E, obs, np.random.default_rng(1))
    et = ETKF().analyse(E, obs, None)
    # linear h: the MAP is the Kalman mean and the transform the ETKF's, member by member
    np.testing.assert_allclose(la.E, et.E, rtol=1e-9, atol=1e-11)
    assert la.info["map_iterations"] <= 2 and la.info["map_converged"] == 1.0
    assert la.info["hessian_damping"] == 0.0


def test_laplace_with_a_background_is_the_hybrid_etkf_mean():
    rng = np.random.default_rng(2)
    E = ensemble(rng, 8, 5)
    op = Identity(5)
    obs = obs_of(op, rng.normal(size=5), np.eye(5) * 0.5)
    L = rng.normal(size=(5, 5))
    bg = Background.from_covariance(L @ L.T, 0.3)
    la = LaplaceAnalysis(beta=0.4).analyse(E, obs, np.random.default_rng(3), background=bg)
    hy = HybridETKF(beta=0.4).analyse(E, obs, None, background=bg)
    np.testing.assert_allclose(la.E.mean(0), hy.E.mean(0), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="needs a static background"):
        LaplaceAnalysis(beta=0.4).analyse(E, obs, np.random.default_rng(3))


def test_laplace_draws_have_the_kalman_posterior_covariance():
    rng = np.random.default_rng(4)
    N, d = 2000, 3
    E = ensemble(rng, N, d, scale=1.5)
    op = Subset(3, [0, 1])
    R = np.diag([0.4, 0.9])
    obs = obs_of(op, np.array([1.0, -0.5]), R)
    Ea = LaplaceAnalysis(anomalies="draws").analyse(E, obs, np.random.default_rng(5)).E
    P = np.cov(E, rowvar=False)
    H = op.matrix()
    K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
    Pa = P - K @ H @ P
    np.testing.assert_allclose(Ea.mean(0), E.mean(0) + K @ (obs.y - H @ E.mean(0)),
                               rtol=1e-9, atol=1e-12)
    # sample covariance of N draws: relative standard error about sqrt(2/N) = 3 %
    C = np.cov(Ea, rowvar=False)
    np.testing.assert_allclose(np.diag(C), np.diag(Pa), rtol=0.12)
    assert abs(C[0, 2] - Pa[0, 2]) < 0.12 * np.sqrt(Pa[0, 0] * Pa[2, 2])
    # the deterministic transform reproduces the posterior covariance exactly
    Et = LaplaceAnalysis().analyse(E, obs, None).E
    np.testing.assert_allclose(np.cov(Et, rowvar=False), Pa, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Et.mean(0), Ea.mean(0), rtol=1e-10, atol=1e-12)


def test_variable_laplace_is_the_analysis_linearized_at_the_forecast_mean():
    rng = np.random.default_rng(6)
    E = ensemble(rng, 10, 4, scale=0.8)
    op = Arctan(4, [0, 1, 3])
    R = np.diag([0.05, 0.05, 0.1])
    y = np.arctan(E.mean(0)[[0, 1, 3]]) + np.array([0.4, -0.3, 0.2])
    obs = obs_of(op, y, R)
    va = VariableLaplace().analyse(E, obs, np.random.default_rng(7))
    xbar = E.mean(0)
    P = np.cov(E, rowvar=False)
    H = op.jacobian(xbar)
    K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
    np.testing.assert_allclose(va.E.mean(0), xbar + K @ (y - op(xbar[None])[0]), rtol=1e-8,
                               atol=1e-10)
    # iterating relinearizes: a different (better-fitting) MAP that meets the gradient test
    la = LaplaceAnalysis(iterations=30, tol=1e-10).analyse(E, obs, np.random.default_rng(7))
    assert la.info["map_converged"] == 1.0 and la.info["map_iterations"] > 1
    assert np.abs(la.E.mean(0) - va.E.mean(0)).max() > 1e-3

    def cost(x):
        r = (y - op(x[None])[0]) / np.sqrt(np.diag(R))
        dx = np.linalg.lstsq(np.linalg.cholesky(P), x - xbar, rcond=None)[0]
        return 0.5 * (r @ r + dx @ dx)

    assert cost(la.E.mean(0)) < cost(va.E.mean(0))
    with pytest.raises(ValueError, match="iterations must be 1"):
        VariableLaplace(iterations=3)


def test_latent_laplace_with_an_invertible_linear_prior_equals_the_state_analysis():
    rng = np.random.default_rng(8)
    n = 5
    prior = LinearGaussianPrior(n, n, 0.0, "float64")
    with torch.no_grad():
        prior.W.copy_(torch.as_tensor(rng.normal(size=(n, n)) + 3 * np.eye(n)))
        prior.b.copy_(torch.as_tensor(rng.normal(size=n)))
    E = ensemble(rng, 9, n)
    op = Arctan(n, [0, 2, 4])
    obs = obs_of(op, rng.normal(size=3) * 0.5, np.eye(3) * 0.2)
    filt = LaplaceAnalysis(iterations=8)
    lat = LatentSpace(prior, "manifold").assimilate(filt, E, obs, np.random.default_rng(9))
    st = StateSpace(n).assimilate(filt, E, obs, np.random.default_rng(9))
    np.testing.assert_allclose(lat.E, st.E, rtol=1e-8, atol=1e-9)


def test_missing_torch_observation_is_refused_naming_the_fix():
    rng = np.random.default_rng(10)
    obs = Observation(y=np.zeros(3), R=np.eye(3), h=lambda X: X)
    with pytest.raises(ValueError, match="obs.h_torch is None.*gradient-free"):
        LaplaceAnalysis().analyse(ensemble(rng, 5, 3), obs, rng)
    with pytest.raises(ValueError, match="beta must be < 1"):
        LaplaceAnalysis(beta=1.0)
    with pytest.raises(ValueError, match="hessian must be"):
        LaplaceAnalysis(hessian="bfgs")


def test_cycle_with_laplace_analysis_masks_missing_obs_and_records_the_map():
    model = Lorenz96(n=10, F=8.0, dt=0.05)
    rng = np.random.default_rng(11)
    truth = model.climatology(1, rng)[0]
    E = truth + rng.normal(size=(15, 10))
    op = Identity(10)
    cyc = Cycle(model, LaplaceAnalysis(iterations=4), op, E, seed=3)
    y = truth + rng.normal(size=10) * 0.5
    y[[1, 7]] = np.nan
    rec = cyc.analyse(y, np.full(10, 0.25), truth=truth)
    assert rec.obs_valid == 8
    assert rec.scalars["map_iterations"] >= 1 and rec.scalars["hessian_damping"] == 0.0
    # the same analysis with the masked observations dropped by hand
    keep = np.isfinite(y)
    sub = Subset(10, np.flatnonzero(keep))
    ref = LaplaceAnalysis(iterations=4).analyse(
        E, obs_of(sub, y[keep], np.eye(8) * 0.25), np.random.default_rng([3, 0]))
    np.testing.assert_allclose(rec.analysis, ref.E, rtol=1e-10, atol=1e-12)

    class Custom(Identity):
        pass

    with pytest.raises(ValueError, match="LaplaceAnalysis needs gradients"):
        Cycle(model, LaplaceAnalysis(), Custom(10), E)


def test_identifiability_monitor_in_the_cycle_sees_the_observed_jacobian():
    rng = np.random.default_rng(12)
    n, k = 10, 4
    prior = LinearGaussianPrior(n, k, 0.0, "float64")
    W = rng.normal(size=(n, k))
    with torch.no_grad():
        prior.W.copy_(torch.as_tensor(W))
    model = Lorenz96(n=n, F=8.0, dt=0.05)
    op = Subset(n, [0, 3, 6])  # m = 3 < k = 4: one direction is not identifiable
    E = rng.normal(size=(8, n)) * 2
    mon = IdentifiabilityMonitor(prior, op)
    cyc = Cycle(model, ETKF(), op, E, space=LatentSpace(prior, "manifold"),
                identifiability=mon)
    y = np.array([1.0, np.nan, -1.0])
    rec = cyc.analyse(y, np.full(3, 0.5))
    out = cyc.output_values(rec)
    M = op.matrix()[[0, 2]] @ W / np.sqrt(0.5)
    sv = np.linalg.svd(M, compute_uv=False)
    np.testing.assert_allclose(out["identifiability_sv"][:2], sv, rtol=1e-10)
    assert np.all(out["identifiability_sv"][2:] == 0) and np.all(np.isinf(out["crlb"]))
    rec2 = cyc.analyse(np.full(3, np.nan), np.full(3, 0.5))
    assert np.isnan(cyc.output_values(rec2)["crlb"]).all()


def test_mcmc_analysis_samples_the_kalman_posterior():
    rng = np.random.default_rng(13)
    N, d = 400, 3
    E = ensemble(rng, N, d, scale=1.2)
    op = Subset(3, [0, 2])
    R = np.diag([0.3, 0.6])
    obs = obs_of(op, np.array([0.5, -1.0]), R)
    P = np.cov(E, rowvar=False)
    H = op.matrix()
    K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
    xa = E.mean(0) + K @ (obs.y - H @ E.mean(0))
    Pa = P - K @ H @ P
    for sampler in ("mala", "hmc"):
        res = MCMCAnalysis(sampler=sampler, steps=30).analyse(E, obs, np.random.default_rng(14))
        Ea = res.E
        se = np.sqrt(np.diag(Pa) / N)
        assert np.all(np.abs(Ea.mean(0) - xa) < 5 * se), sampler
        np.testing.assert_allclose(np.diag(np.cov(Ea, rowvar=False)), np.diag(Pa), rtol=0.25)
        assert 0.3 < res.info["accept_rate"] <= 1.0 and res.info["mcmc_ess"] > 1.0


def test_laplace_starts_find_the_global_map_that_the_prior_mean_cannot_reach():
    """A narrow feature detector h(x) = exp(-(x - 3)^2 / 0.1) observed as 1: from the prior
    mean (x ~ 0, where h and its gradient vanish) Gauss-Newton cannot move; with 200 prior
    draws as starting points the analysis mean is the global MAP found on a fine grid."""
    rng = np.random.default_rng(11)
    E = rng.normal(0.0, 2.0, size=(40, 1))

    def h(X):
        return np.exp(-((X - 3.0) ** 2) / 0.1)

    def h_t(X):
        return torch.exp(-((X - 3.0) ** 2) / 0.1)

    obs = Observation(y=np.array([1.0]), R=np.array([[0.01]]), h=h, h_torch=h_t)
    m, P = E.mean(), E.var(ddof=1)
    x = np.linspace(-10, 10, 2_000_001)
    cost = 0.5 * (x - m) ** 2 / P + 0.5 * (1.0 - h(x)) ** 2 / 0.01
    x_map = x[np.argmin(cost)]
    assert abs(x_map - 3.0) < 0.2
    stuck = LaplaceAnalysis(iterations=20).analyse(E, obs, np.random.default_rng(0))
    assert abs(stuck.E.mean() - m) < 1e-6          # no gradient at the prior mean
    found = LaplaceAnalysis(iterations=20, starts=200).analyse(E, obs,
                                                              np.random.default_rng(0))
    assert found.E.mean() == pytest.approx(x_map, abs=1e-5)
    with pytest.raises(ValueError, match="starts"):
        LaplaceAnalysis(starts=-1).analyse(E, obs, np.random.default_rng(0))


def test_gate_keeps_the_ensemble_analysis_when_it_fits_and_falls_back_when_it_misfits():
    """``gate``: with observations the ensemble can explain, the analysis is the ETKF's
    (beta = 0) member by member; with observations far from every member (chi-square
    tail probability of the ensemble-only misfit below the gate), it is the hybrid one."""
    rng = np.random.default_rng(5)
    E = ensemble(rng, 10, 5)
    op = Identity(5)
    L = rng.normal(size=(5, 5))
    bg = Background.from_covariance(L @ L.T, 4.0)
    R = np.eye(5) * 0.5
    truth = E.mean(0) + E.std(0) * 0.3
    near = obs_of(op, truth + rng.normal(size=5) * 0.5 ** 0.5, R)
    gated = LaplaceAnalysis(beta=0.4, gate=1e-3)
    a = gated.analyse(E, near, np.random.default_rng(3), background=bg)
    np.testing.assert_allclose(a.E, ETKF().analyse(E, near, None).E, rtol=1e-9, atol=1e-11)
    assert a.info["static_used"] == 0.0
    far = obs_of(op, E.mean(0) + 40.0, R)
    b = gated.analyse(E, far, np.random.default_rng(3), background=bg)
    hy = LaplaceAnalysis(beta=0.4).analyse(E, far, np.random.default_rng(3), background=bg)
    np.testing.assert_allclose(b.E, hy.E, rtol=1e-9, atol=1e-11)
    assert b.info["static_used"] == 1.0
    assert not np.allclose(b.E, ETKF().analyse(E, far, None).E)
    with pytest.raises(ValueError, match="gate"):
        LaplaceAnalysis(gate=0.01).analyse(E, near, None)
