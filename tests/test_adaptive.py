"""Adaptive-inflation ETKF: the innovation estimate recovers a known under-dispersion."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.filters import ETKF, Observation
from latentda.filters.adaptive import AdaptiveETKF, innovation_inflation_estimate


def _trial(rng, d, N, factor, R):
    """Truth ~ N(0, I); the ensemble's covariance is I / factor; y = x + noise."""
    x = rng.standard_normal(d)
    E = rng.standard_normal((N, d)) / np.sqrt(factor)
    E -= E.mean(0)
    y = x + rng.standard_normal(d) * np.sqrt(np.diag(R))
    return E, Observation(y=y, R=R, h=lambda X: X)


@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_inflation_converges_to_the_true_underdispersion(rng, factor):
    d, N = 30, 60
    R = np.eye(d) * 0.5
    # a lower bound below 1 lets a consistent ensemble's estimate fluctuate around 1 unclipped
    f = AdaptiveETKF(prior_var=0.5, min_rho=0.5, max_rho=10.0)
    rhos = []
    for _ in range(400):
        E, obs = _trial(rng, d, N, factor, R)
        f.analyse(E, obs, None)
        rhos.append(f.rho)
    est = np.mean(rhos[100:])
    # the single-cycle estimate has relative s.d. ~ sqrt(2/m) (1 + m/trace); the running
    # estimate averages many cycles: 10 % is several standard errors
    assert est == pytest.approx(factor, rel=0.10), est


def test_single_estimate_is_unbiased(rng):
    d, N, factor = 20, 50, 2.5
    R = np.eye(d)
    vals = []
    for _ in range(2000):
        E, obs = _trial(rng, d, N, factor, R)
        Yw = obs.whiten(E - E.mean(0))
        vals.append(innovation_inflation_estimate(Yw, obs.whiten(obs.y - E.mean(0)))[0])
    se = np.std(vals) / np.sqrt(len(vals))
    # E[ens var] = 1/factor exactly; the ratio estimator's bias is O(1/(N d)): allow 4 s.e. + 2 %
    assert abs(np.mean(vals) - factor) < 4 * se + 0.02 * factor


def test_with_a_frozen_inflation_it_is_the_etkf(rng):
    E = rng.standard_normal((8, 5))
    obs = Observation(y=rng.standard_normal(5), R=np.eye(5), h=lambda X: X)
    f = AdaptiveETKF(rho0=1.0, prior_var=1e-300)
    np.testing.assert_allclose(f.analyse(E, obs, None).E, ETKF().analyse(E, obs, None).E,
                               atol=1e-12)
    g = AdaptiveETKF(rho0=2.0, prior_var=1e-300)
    Ei = E.mean(0) + np.sqrt(2.0) * (E - E.mean(0))
    np.testing.assert_allclose(g.analyse(E, obs, None).E, ETKF().analyse(Ei, obs, None).E,
                               atol=1e-12)


def test_bounds_and_validation():
    with pytest.raises(ValueError, match="rho0 must be >= 1"):
        AdaptiveETKF(rho0=0.5)
    with pytest.raises(ValueError, match="prior_var must be > 0"):
        AdaptiveETKF(prior_var=0.0)
    with pytest.raises(ValueError, match="max_rho must be >= 2.0"):
        AdaptiveETKF(min_rho=2.0, max_rho=1.5)
    assert "AdaptiveETKF(inflation=1.0, rho0=1.0" in repr(AdaptiveETKF())
