"""Skill diagnostics against direct formulas and their statistical laws."""

from __future__ import annotations

import numpy as np

from latentda.diagnostics import crps, innovation_statistics, rank_histogram, rmse, spread


def test_rmse_and_spread(rng):
    t = rng.standard_normal(30)
    assert rmse(t + 2.0, t) == 2.0
    E = rng.standard_normal((5, 30))
    assert np.isclose(spread(E), np.sqrt(np.mean(E.var(axis=0, ddof=1))))


def test_crps_matches_double_sum(rng):
    E = rng.standard_normal((7, 4))
    y = rng.standard_normal(4)
    direct = np.mean(
        np.abs(E - y).mean(0) - 0.5 * np.abs(E[:, None, :] - E[None, :, :]).mean((0, 1))
    )
    assert np.isclose(crps(E, y), direct, rtol=1e-12)
    # a one-member ensemble's CRPS is the absolute error
    assert np.isclose(crps(E[:1], y), np.mean(np.abs(E[0] - y)))


def test_crps_of_gaussian_ensemble_approaches_closed_form(rng):
    # CRPS(N(0,1), y=0) = 2 phi(0) - 1/sqrt(pi) = (sqrt(2) - 1) / sqrt(pi)
    E = rng.standard_normal((20_000, 1))
    exact = (np.sqrt(2) - 1) / np.sqrt(np.pi)
    assert abs(crps(E, np.zeros(1)) - exact) < 0.01


def test_rank_histogram_of_a_reliable_ensemble_is_flat(rng):
    N, n = 9, 20_000
    E = rng.standard_normal((N, n))
    truth = rng.standard_normal(n)
    counts = rank_histogram(E, truth)
    assert counts.shape == (N + 1,) and counts.sum() == n
    expected = n / (N + 1)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 30  # chi-square with 9 dof: P(> 30) < 0.001
    # an under-dispersive ensemble piles the truth into the outer bins
    c2 = rank_histogram(0.3 * E, truth)
    assert c2[0] + c2[-1] > 3 * (counts[0] + counts[-1])


def test_innovation_statistic_is_one_for_a_consistent_forecast(rng):
    m, N, trials = 6, 400, 300
    A = rng.standard_normal((m, m))
    P = A @ A.T / m + np.eye(m)
    R = np.diag(rng.uniform(0.5, 2.0, m))
    Lp, Lr = np.linalg.cholesky(P), np.linalg.cholesky(R)
    vals = []
    for _ in range(trials):
        HE = rng.standard_normal((N, m)) @ Lp.T
        y = Lp @ rng.standard_normal(m) + Lr @ rng.standard_normal(m)
        vals.append(innovation_statistics(HE, y, R)[1])
    # chi2_m / m has mean 1 and std sqrt(2/m); the mean of `trials` draws is within 4 s.e.
    assert abs(np.mean(vals) - 1.0) < 4 * np.sqrt(2 / m / trials) + 0.02


def test_innovation_woodbury_equals_direct_solve(rng):
    N, m = 8, 30  # m > N: the Woodbury path
    HE = rng.standard_normal((N, m))
    y = rng.standard_normal(m)
    R = np.diag(rng.uniform(0.5, 2.0, m))
    Rfull = R + 1e-300 * np.ones((m, m))  # forces the dense path, same matrix numerically
    a = innovation_statistics(HE, y, R)
    b = innovation_statistics(HE, y, Rfull)
    assert np.allclose(a, b, rtol=1e-10)


def test_one_pass_summary_equals_the_separate_functions(rng):
    from latentda.diagnostics import ensemble_summary

    for N, n in ((2, 3), (9, 40), (40, 17)):
        E = rng.standard_normal((N, n))
        y = rng.standard_normal(n)
        E[0, 0] = y[0]  # a tie with the truth
        s = ensemble_summary(E, y)
        np.testing.assert_allclose(s.mean, E.mean(0), rtol=1e-13)
        np.testing.assert_allclose(s.std, E.std(0, ddof=1), rtol=1e-12)
        assert np.isclose(s.spread, spread(E), rtol=1e-12)
        assert np.isclose(s.rmse, rmse(E.mean(0), y), rtol=1e-12)
        assert np.isclose(s.crps, crps(E, y), rtol=1e-12)
        np.testing.assert_array_equal(s.ranks, rank_histogram(E, y))
        s0 = ensemble_summary(E)
        assert np.isnan(s0.rmse) and np.isnan(s0.crps) and s0.ranks.sum() == 0
