"""OODMonitor: the per-cycle OOD values, masked observations and trailing windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from latentda.observations import Identity, Linear, ObservationOperator, Subset
from latentda.ood import ood_residual
from latentda.ood_monitor import OODMonitor
from latentda.priors import LinearGaussianPrior


def _prior(n=6, k=2, seed=0):
    rng = np.random.default_rng(seed)
    p = LinearGaussianPrior(n, k, 0.0, "float64")
    with torch.no_grad():
        p.W.copy_(torch.as_tensor(rng.normal(size=(n, k))))
        p.b.copy_(torch.as_tensor(rng.normal(size=n)))
    return p


def test_monitor_equals_ood_residual_on_the_valid_observations():
    prior = _prior()
    rng = np.random.default_rng(1)
    y = rng.normal(size=6)
    valid = np.array([True, False, True, True, False, True])
    mon = OODMonitor(prior, Identity(6), level=0.05)
    out = mon(y[valid], np.eye(4), valid, np.zeros(6))
    ref = ood_residual(prior, Subset(6, np.flatnonzero(valid)), y[valid], np.ones(4),
                       latent_prior=True)
    assert out["ood_residual"] == pytest.approx(float(ref.residual[0]), rel=1e-9)
    assert out["ood_score"] == pytest.approx(float(chi2.sf(4 * ref.residual[0], 4)), rel=1e-9)
    assert out["ood_flag"] == int(out["ood_score"] < 0.05)
    # a linear operator is restricted by rows
    H = rng.normal(size=(6, 6))
    lin = OODMonitor(prior, Linear(H))(y[valid], np.eye(4), valid, np.zeros(6))
    ref = ood_residual(prior, Linear(H[valid]), y[valid], np.ones(4), latent_prior=True)
    assert lin["ood_residual"] == pytest.approx(float(ref.residual[0]), rel=1e-9)


def test_window_tests_the_sum_of_the_last_analyses():
    prior = _prior()
    rng = np.random.default_rng(2)
    mon = OODMonitor(prior, Identity(6), window=2)
    valid = np.ones(6, bool)
    stats = []
    for _ in range(3):
        out = mon(rng.normal(size=6) * 2, np.eye(6), valid, np.zeros(6))
        stats.append(6 * out["ood_residual"])
    assert out["ood_score"] == pytest.approx(float(chi2.sf(stats[1] + stats[2], 12)),
                                             rel=1e-9)
    assert mon.missing()["ood_flag"] == 0 and np.isnan(mon.missing()["ood_residual"])


def test_monitor_refuses_what_it_cannot_differentiate():
    class Custom(ObservationOperator):
        state_dim, obs_dim = 6, 6

        def _apply(self, E):
            return E

    with pytest.raises(ValueError, match="observation operator"):
        OODMonitor(_prior(), Custom())
    with pytest.raises(ValueError, match="observation operator reads 5"):
        OODMonitor(_prior(), Identity(5))
    with pytest.raises(ValueError, match="window"):
        OODMonitor(_prior(), Identity(6), window=0)


def test_prior_error_adds_the_residual_covariance_seen_through_h():
    rng = np.random.default_rng(3)
    prior = LinearGaussianPrior(6, 2, 0.4, "float64")  # residual covariance 0.4 I
    with torch.no_grad():
        prior.W.copy_(torch.as_tensor(rng.normal(size=(6, 2))))
    cov = prior.residual_cov
    assert np.abs(cov).max() > 0.1
    valid = np.array([True, True, False, True, True, True])
    y = rng.normal(size=6)[valid]
    R = np.diag(rng.uniform(0.5, 1.5, 5))
    mon = OODMonitor(prior, Identity(6), include_prior_error=True)
    out = mon(y, R, valid, np.zeros(6))
    idx = np.flatnonzero(valid)
    Reff = R + cov[np.ix_(idx, idx)]
    ref = ood_residual(prior, Subset(6, idx), y, Reff, latent_prior=True)
    assert out["ood_residual"] == pytest.approx(float(ref.residual[0]), rel=1e-9)
    plain = OODMonitor(prior, Identity(6))(y, R, valid, np.zeros(6))
    assert out["ood_residual"] < plain["ood_residual"]  # more error: smaller misfit


def test_global_start_finds_the_minimum_a_wrong_warm_start_misses():
    # the spun-up bump prior: 4 of its 7 coordinates are the release point, so the
    # objective is multimodal; a warm start at a bump released elsewhere ends in a
    # wrong basin, the best of the fixed prior draws starts in the right one
    from pathlib import Path

    from latentda.priors import load

    root = Path(__file__).resolve().parent.parent
    prior = load(root / "models" / "sw_bumps_basis_k7.pt", device="cpu")
    op = Subset.strided_grid(64, 64, 8, n_fields=3)
    rng = np.random.default_rng(5)
    z_true = rng.standard_normal((1, 7))
    y = op(prior.decode(z_true))[0] + np.sqrt(1e-3) * rng.standard_normal(64)
    z_wrong = z_true.copy()
    z_wrong[0, :4] *= -1.0  # the release point moved across the torus
    wrong = prior.decode(z_wrong)[0]
    R, valid = 1e-3 * np.eye(64), np.ones(64, bool)
    kw = {"latent_prior": False, "steps": 50}
    local = OODMonitor(prior, op, **kw)(y, R, valid, wrong)
    both = OODMonitor(prior, op, starts=500, **kw)(y, R, valid, wrong)
    assert both["ood_residual"] <= local["ood_residual"]
    assert local["ood_flag"] == 1  # the local minimum looks out of distribution
    # the global minimum follows the law of an in-distribution vector: chi2(64 - 7) / 64
    assert both["ood_flag"] == 0 and both["ood_residual"] < chi2.isf(0.01, 57) / 64
    with pytest.raises(ValueError, match="starts"):
        OODMonitor(prior, op, starts=-1)
