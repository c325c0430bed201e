"""Skill diagnostics against direct formulas and their statistical laws."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_roc_auc_is_the_mann_whitney_probability():
    from latentda.diagnostics import roc_auc

    assert roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert roc_auc([1, 2], [1, 2]) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4000), rng.normal(1.0, size=4000)
    # for two unit Gaussians a distance d apart, AUC = Phi(d / sqrt(2))
    from scipy.stats import norm

    assert abs(roc_auc(a, b) - norm.cdf(1 / np.sqrt(2))) < 0.015
    with pytest.raises(ValueError, match="finite"):
        roc_auc([np.nan], [1.0])


def test_windowed_chi2_scores_sum_the_window():
    from scipy.stats import chi2

    from latentda.diagnostics import windowed_chi2_scores

    s = np.array([3.0, 5.0, np.nan, 7.0])
    out = windowed_chi2_scores(s, 4.0, 2)
    np.testing.assert_allclose(out, [chi2.sf(3, 4), chi2.sf(8, 8), chi2.sf(5, 4),
                                     chi2.sf(7, 4)])
    rng = np.random.default_rng(1)
    x = rng.chisquare(6, size=20000)
    sc = windowed_chi2_scores(x, 6, 3)
    assert abs(np.mean(sc[2:] < 0.05) - 0.05) < 0.01


def test_cusum_recursion_and_detection_delay_of_a_mean_shift():
    from latentda.diagnostics import cusum

    # the recursion by hand, NaN leaves it unchanged
    z = np.array([1.0, -2.0, 0.8, np.nan, 1.5, 0.2])
    np.testing.assert_allclose(cusum(z, 0.5), [0.5, 0.0, 0.3, 0.3, 1.3, 1.0])
    # N(0, 1) in distribution: the statistic stays small; a mean shift of 2 (> drift
    # 0.5) makes it grow by about 1.5 per step, so h = 6 is crossed about 4 steps later
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20000)
    S0 = cusum(x, 0.5)
    h = np.quantile(S0, 0.99)
    assert 2.0 < h < 6.0
    delays = []
    for _ in range(200):
        zs = np.concatenate([rng.standard_normal(300), rng.standard_normal(30) + 2.0])
        S = cusum(zs, 0.5)
        delays.append(int(np.argmax(S[300:] > h)))
    assert 0.5 * h / 1.5 < np.mean(delays) < 1.5 * h / 1.5 + 1
    with pytest.raises(ValueError, match="drift"):
        cusum(x, -1.0)
    with pytest.raises(ValueError, match="one-dimensional"):
        cusum(np.zeros((2, 2)))
