"""Joint state–parameter estimation for the Lotka–Volterra ODE (EnKF and Liu–West PF)."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.inference.lv_joint import (
    LVJointSetup,
    coverage_experiment,
    initial_ensemble,
    run_enkf,
    run_particle_filter,
    simulate_twin,
    weighted_quantile,
)

#: a shorter window than the default (obs every 0.2 for 10 time units) keeps the tests fast
SHORT = LVJointSetup(obs_every=20, n_obs=50)


@pytest.fixture(scope="module")
def twin():
    return simulate_twin(SHORT, 3)


def test_twin_is_reproducible_and_noise_has_the_stated_std():
    a = simulate_twin(SHORT, 5)
    b = simulate_twin(SHORT, 5)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.prior_mean, b.prior_mean)
    long = simulate_twin(LVJointSetup(obs_every=5, n_obs=2000, obs_std=0.7), 0)
    resid = long.obs - long.truth
    # the sample std of 4000 N(0, 0.7^2) draws is within 5 % of 0.7 with overwhelming probability
    assert abs(resid.std() / 0.7 - 1) < 0.05
    assert abs(resid.mean()) < 4 * 0.7 / np.sqrt(resid.size)


def test_prior_guess_is_calibrated_around_the_truth():
    # guess - truth ~ N(0, spread^2) per unknown: check the z-scores over many twins
    setup = LVJointSetup(n_obs=1, obs_every=1)
    z = np.array([(simulate_twin(setup, s).prior_mean - simulate_twin(setup, s).true_unknowns)
                  / setup.prior_std for s in range(400)])
    assert np.all(np.abs(z.mean(axis=0)) < 4 / np.sqrt(400))
    assert np.all(np.abs(z.std(axis=0) - 1) < 0.15)


def test_initial_ensemble_draws_from_the_prior(twin):
    E = initial_ensemble(twin, 20000, 1)
    assert E.shape == (20000, 6)
    np.testing.assert_allclose(E.mean(axis=0), twin.prior_mean, atol=4 * 0.2 / np.sqrt(20000))
    np.testing.assert_allclose(E.std(axis=0), twin.setup.prior_std, rtol=0.03)


@pytest.mark.parametrize("runner, kwargs", [
    (run_enkf, {"N": 100}),
    (run_particle_filter, {"N": 1000}),
])
def test_filters_recover_the_rates_on_one_twin(twin, runner, kwargs):
    post = runner(twin, seed=7, **kwargs)
    truth = twin.true_log_rates
    assert post.samples.shape == (kwargs["N"], 4)
    # the window informs the rates: posterior std well below the prior's 0.2 ...
    assert np.all(post.std < 0.2 / 3)
    # ... and the truth lies within a few posterior stds of the mean (the prior guess was
    # off by more than that, so this is not the prior speaking)
    assert np.all(np.abs(post.mean - truth) < 4 * post.std)
    assert np.linalg.norm(post.mean - truth) < np.linalg.norm(twin.prior_mean[2:] - truth)
    lo, hi = post.interval.T
    assert np.all(lo < post.mean) and np.all(post.mean < hi)


def test_particle_posterior_respects_weights(twin):
    post = run_particle_filter(twin, N=500, ess_threshold=0.01, temper=False, seed=1)
    # with a tiny ESS threshold the filter keeps weights; mean/quantiles must use them
    if post.weights is not None:
        np.testing.assert_allclose(post.mean, post.weights @ post.samples)
        np.testing.assert_allclose(post.weights.sum(), 1.0)
    assert post.info["min_ess"] >= 1.0


def test_weighted_quantile_matches_numpy_and_importance_weights():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    q = [0.05, 0.5, 0.95]
    np.testing.assert_allclose(weighted_quantile(x, q), np.quantile(x, q, axis=0,
                                                                     method="hazen"))
    # importance weights N(0, 1) / N(0, 2^2) on draws from N(0, 2^2): quantiles of N(0, 1)
    z = 2.0 * rng.standard_normal(200_000)
    w = np.exp(-0.5 * z * z + 0.125 * z * z)
    got = weighted_quantile(z, [0.05, 0.5, 0.95], w / w.sum())
    np.testing.assert_allclose(got, [-1.6449, 0.0, 1.6449], atol=0.03)
    # a point mass: every quantile is that value
    w = np.zeros(50)
    w[7] = 1.0
    np.testing.assert_allclose(weighted_quantile(x, [0.1, 0.9], w), np.tile(x[7], (2, 1)))


def test_enkf_coverage_is_near_nominal_on_a_few_replicates():
    res = coverage_experiment("enkf", 16, setup=SHORT, seed=11, N=100)
    assert res.covered.shape == (16, 4)
    # 64 Bernoulli(0.9) outcomes: below 0.7 has probability < 1e-6 if calibrated
    assert res.coverage.mean() >= 0.7
    assert np.all(np.isfinite(res.z_rms))


@pytest.mark.parametrize("call, field", [
    (lambda t: run_particle_filter(t, shrinkage=0.0), "shrinkage"),
    (lambda t: run_particle_filter(t, shrinkage=1.5), "shrinkage"),
    (lambda t: run_particle_filter(t, ess_threshold=0.0), "ess_threshold"),
    (lambda t: run_particle_filter(t, N=1), "N"),
    (lambda t: run_enkf(t, inflation=0.9), "inflation"),
    (lambda t: run_enkf(t, level=1.0), "level"),
    (lambda t: coverage_experiment("kalman", 2), "method"),
    (lambda t: coverage_experiment("enkf", 0), "n_replicates"),
    (lambda t: LVJointSetup(obs_std=0.0), "obs_std"),
    (lambda t: LVJointSetup(x0=(10.0, -1.0)), "x0"),
    (lambda t: LVJointSetup(rates=(1.0, 0.1, 1.5)), "rates"),
    (lambda t: weighted_quantile(np.ones(3), [1.5]), "q"),
])
def test_bad_input_is_refused_with_the_field_named(twin, call, field):
    with pytest.raises(ValueError, match=field):
        call(twin)
