"""SMC-ABC with a Gaussian kernel: analytic linear-Gaussian posteriors and unbiased likelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latentda.inference.smc_abc import (
    BoxUniform,
    GaussianPrior,
    gaussian_kernel_log_likelihood,
    lv_summary_simulator,
    smc_abc,
)

A = np.array([[1.0, 0.5], [0.2, -1.0], [0.7, 0.3]])
NOISE_STD = np.array([0.3, 0.5, 0.4])
S_OBS = np.array([0.8, -0.5, 0.6])


def linear_simulator(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return theta @ A.T + NOISE_STD * rng.standard_normal((theta.shape[0], 3))


def exact_posterior(prior_mean, prior_cov, eps, scale):
    """Posterior of theta given s_obs = A theta + noise + eps * scale * eta."""
    R = np.diag(NOISE_STD ** 2 + (eps * scale) ** 2)
    P = np.linalg.inv(np.linalg.inv(prior_cov) + A.T @ np.linalg.solve(R, A))
    mu = P @ (np.linalg.solve(prior_cov, prior_mean) + A.T @ np.linalg.solve(R, S_OBS))
    return mu, P


@pytest.mark.parametrize("prior_kind, n_sims", [("gauss", 1), ("box", 4)])
def test_linear_gaussian_posterior_matches_closed_form(prior_kind, n_sims):
    eps, scale = 0.3, np.array([1.0, 2.0, 0.5])
    if prior_kind == "gauss":
        mean0, cov0 = np.array([0.5, -0.2]), np.array([[2.0, 0.5], [0.5, 1.0]])
        prior = GaussianPrior(mean0, cov0)
    else:  # a box 20+ posterior stds wide: the truncation is negligible, prior ~ flat
        prior = BoxUniform([-6.0, -6.0], [6.0, 6.0])
        mean0, cov0 = np.zeros(2), np.eye(2) * 1e8
    mu, P = exact_posterior(mean0, cov0, eps, scale)
    N = 2000
    res = smc_abc(linear_simulator, prior, S_OBS, epsilon=eps, scale=scale, n_particles=N,
                  n_sims=n_sims, rng=3)
    assert res.epsilons[-1] == eps
    assert res.theta.shape == (N, 2) and res.weights is None
    sd = np.sqrt(np.diag(P))
    # Monte-Carlo error of the mean of N correlated particles: allow an ESS of N / 10
    np.testing.assert_array_less(np.abs(res.mean - mu) / sd, 4 / np.sqrt(N / 10))
    np.testing.assert_allclose(np.diag(res.cov), np.diag(P), rtol=0.15)
    corr = res.cov[0, 1] / np.sqrt(res.cov[0, 0] * res.cov[1, 1])
    assert abs(corr - P[0, 1] / math.sqrt(P[0, 0] * P[1, 1])) < 0.08


def test_importance_stage_is_consistent_and_reports_its_error():
    eps, scale = 0.3, np.ones(3)
    mean0, cov0 = np.zeros(2), 4.0 * np.eye(2)
    mu, P = exact_posterior(mean0, cov0, eps, scale)
    res = smc_abc(linear_simulator, GaussianPrior(mean0, cov0), S_OBS, epsilon=eps,
                  scale=scale, n_particles=300, n_sims=2, final_moves=0, n_importance=6000,
                  importance_sims=3, rng=5)
    assert res.theta.shape == (6000, 2)
    np.testing.assert_allclose(res.weights.sum(), 1.0)
    # noisy likelihood estimates cost ESS but not consistency
    assert 300 < res.ess < 6000
    sd = np.sqrt(np.diag(P))
    assert np.all(res.mean_se < 0.1 * sd)
    np.testing.assert_array_less(np.abs(res.mean - mu), 4 * res.mean_se)
    np.testing.assert_allclose(np.diag(res.cov), np.diag(P), rtol=0.15)


def test_adaptive_importance_rounds_repair_a_poor_proposal_and_stay_consistent():
    """A degenerate SMC (10 particles, one stage, one move) gives a poor t proposal; pilot
    rounds refit it to their weighted draws: far higher ESS, same target."""
    eps, scale = 0.3, np.ones(3)
    mean0, cov0 = np.zeros(2), 4.0 * np.eye(2)
    mu, P = exact_posterior(mean0, cov0, eps, scale)
    sd = np.sqrt(np.diag(P))
    kw = dict(epsilon=eps, scale=scale, n_particles=10, n_sims=1, final_moves=0,
              max_stages=1, max_moves=1, n_importance=4000, importance_sims=3)
    one = smc_abc(linear_simulator, GaussianPrior(mean0, cov0), S_OBS, rng=7, **kw)
    three = smc_abc(linear_simulator, GaussianPrior(mean0, cov0), S_OBS, rng=7,
                    importance_rounds=3, importance_pilot=1000, **kw)
    assert three.theta.shape == (4000, 2)
    # the pilots cost 2 x 1000 draws x 3 simulations more than one round
    assert three.n_simulations - one.n_simulations == 2 * 1000 * 3
    assert one.ess < 100 and three.ess > 10 * one.ess
    np.testing.assert_array_less(np.abs(three.mean - mu), 4 * three.mean_se)
    assert np.all(three.mean_se < 0.05 * sd)
    np.testing.assert_allclose(np.diag(three.cov), np.diag(P), rtol=0.15)
    # batch means of independent weighted draws agree with the delta-method error
    ratio = three.batch_mean_se(20) / three.mean_se
    assert np.all((ratio > 0.4) & (ratio < 2.2)), ratio
    with pytest.raises(ValueError, match="n_batches"):
        three.batch_mean_se(1)


def test_kernel_likelihood_estimate_is_unbiased():
    """E[exp(log L_hat)] = N(s_obs; A theta, diag(noise^2 + eps^2 scale^2)) for any M."""
    rng = np.random.default_rng(0)
    theta = np.array([0.4, 0.1])
    eps, scale, M, reps = 0.5, np.array([1.0, 0.5, 2.0]), 3, 40000
    S = linear_simulator(np.repeat(theta[None], reps * M, axis=0), rng).reshape(reps, M, 3)
    L = np.exp(gaussian_kernel_log_likelihood(S, S_OBS, scale, eps))
    var = NOISE_STD ** 2 + (eps * scale) ** 2
    r = S_OBS - A @ theta
    exact = math.exp(-0.5 * np.sum(r * r / var)) / math.sqrt(np.prod(2 * np.pi * var))
    assert abs(L.mean() - exact) < 4 * L.std() / math.sqrt(reps)
    # M = 1 is the kernel density itself; an infinite width gives log-likelihood 0
    one = gaussian_kernel_log_likelihood(S[:5, :1], S_OBS, scale, eps)
    u = (S[:5, 0] - S_OBS) / (eps * scale)
    direct = -0.5 * np.sum(u * u, axis=1) - np.sum(np.log(np.sqrt(2 * np.pi) * eps * scale))
    np.testing.assert_allclose(one, direct)
    np.testing.assert_array_equal(gaussian_kernel_log_likelihood(S, S_OBS, scale, math.inf),
                                  np.zeros(reps))


def test_box_prior_density_and_support():
    prior = BoxUniform([0.0, -1.0], [2.0, 1.0])
    th = prior.sample(1000, np.random.default_rng(0))
    assert np.all((th >= prior.low) & (th <= prior.high))
    np.testing.assert_allclose(prior.log_prob(th), -math.log(4.0))
    assert prior.log_prob(np.array([[3.0, 0.0]]))[0] == -np.inf


def test_lv_simulator_returns_the_nine_summaries():
    sim = lv_summary_simulator()
    s = sim(np.log([[0.01, 0.5, 1.0, 0.01]] * 3), np.random.default_rng(0))
    assert s.shape == (3, 9) and np.isfinite(s).all()


@pytest.mark.parametrize("kwargs, field", [
    ({"epsilon": 0.0}, "epsilon"),
    ({"n_particles": 5}, "n_particles"),
    ({"n_sims": 0}, "n_sims"),
    ({"ess_fraction": 1.0}, "ess_fraction"),
    ({"move_miss": 0.0}, "move_miss"),
    ({"scale": [1.0, -1.0, 1.0]}, "scale"),
    ({"scale": [1.0, 1.0]}, "scale"),
    ({"n_importance": -1}, "n_importance"),
    ({"importance_df": 2.0}, "importance_df"),
    ({"defensive": 1.0}, "defensive"),
    ({"importance_rounds": 0}, "importance_rounds"),
    ({"importance_pilot": 5}, "importance_pilot"),
])
def test_bad_settings_are_refused_before_any_simulation(kwargs, field):
    calls = []

    def sim(theta, rng):
        calls.append(1)
        return linear_simulator(theta, rng)

    args = {"epsilon": 0.3, **kwargs}
    with pytest.raises(ValueError, match=field):
        smc_abc(sim, GaussianPrior(np.zeros(2), np.eye(2)), S_OBS, **args)
    assert not calls


def test_bad_simulator_output_is_refused():
    prior = GaussianPrior(np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="simulate must return shape"):
        smc_abc(lambda th, rng: th, prior, S_OBS, epsilon=0.3)
    with pytest.raises(ValueError, match="non-finite"):
        smc_abc(lambda th, rng: np.full((th.shape[0], 3), np.nan), prior, S_OBS, epsilon=0.3)
    with pytest.raises(ValueError, match="high must exceed low"):
        BoxUniform([0.0], [0.0])
