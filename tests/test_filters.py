"""Tests of the state-agnostic ensemble filters (latentda.filters)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import latentda.filters.letkf as letkf_mod
from latentda.filters import (
    ETKF,
    FILTERS,
    LETKF,
    EnKF,
    EnKF_N,
    Geometry,
    HybridETKF,
    Observation,
    gaspari_cohn,
    periodic_distance,
)
from latentda.filters.base import batched_transforms
from latentda.filters.enkf import perturbed_obs_update
from latentda.filters.enkf_n import dual_cost, hyperprior_coeffs, solve_dual

# ---------------------------------------------------------------------------------------
# helpers


def _spd(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    X = rng.standard_normal((n, n))
    return scale * (X @ X.T / n + 0.5 * np.eye(n))


def linear_problem(seed: int, d: int, m: int, N: int, full_R: bool = True,
                   ) -> tuple[np.ndarray, Observation, np.ndarray]:
    """Random ensemble, linear observation operator H, and an Observation."""
    rng = np.random.default_rng(seed)
    H = rng.standard_normal((m, d))
    R = _spd(rng, m) if full_R else np.diag(rng.uniform(0.5, 2.0, m))
    P0 = _spd(rng, d, 2.0)
    E = rng.multivariate_normal(rng.standard_normal(d), P0, size=N)
    y = H @ rng.multivariate_normal(np.zeros(d), P0) + rng.standard_normal(m)
    obs = Observation(y=y, R=R, h=lambda X: X @ H.T)
    return E, obs, H


def kalman(E: np.ndarray, obs: Observation, H: np.ndarray, infl2: float = 1.0,
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact Kalman update of the ensemble mean and covariance (P inflated by infl2)."""
    xbar = E.mean(axis=0)
    A = E - xbar
    P = infl2 * A.T @ A / (E.shape[0] - 1)
    S = H @ P @ H.T + obs.R
    K = np.linalg.solve(S, H @ P).T
    xa = xbar + K @ (obs.y - H @ xbar)
    Pa = (np.eye(E.shape[1]) - K @ H) @ P
    return xa, Pa


def mean_cov(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xbar = E.mean(axis=0)
    A = E - xbar
    return xbar, A.T @ A / (E.shape[0] - 1)


def assert_close(a: np.ndarray, b: np.ndarray, rel: float) -> None:
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


def ring_setup(seed: int, n: int = 40, N: int = 10, every: int = 1,
               ) -> tuple[np.ndarray, Observation, Geometry]:
    """Lorenz-96-like ring: variables 0..n-1 (period n), every ``every``-th observed."""
    rng = np.random.default_rng(seed)
    E = 3.0 * rng.standard_normal((N, n)) + 2.0
    idx = np.arange(0, n, every)
    y = rng.standard_normal(idx.size) * 3.0
    obs = Observation(y=y, R=np.diag(rng.uniform(0.5, 1.5, idx.size)),
                      h=lambda X: X[:, idx], locations=idx.astype(float))
    return E, obs, Geometry(np.arange(float(n)), period=(float(n),))


def naive_letkf(E: np.ndarray, obs: Observation, geometry: Geometry, radius: float,
                inflation: float) -> np.ndarray:
    """Reference LETKF: one local ETKF per variable, written as plainly as possible."""
    N, d = E.shape
    N1 = N - 1
    HE = obs.h(E)
    xbar, ybar = E.mean(axis=0), HE.mean(axis=0)
    A, Y = E - xbar, HE - ybar
    Rinv = np.linalg.inv(obs.R)
    dist = periodic_distance(geometry.locations, obs.locations, geometry.period)
    out = np.empty_like(E)
    for i in range(d):
        rho = gaspari_cohn(dist[i] / radius)
        Rloc = Rinv * np.sqrt(np.outer(rho, rho))  # diagonal R: R^-1 tapered by rho
        C = N1 * np.eye(N) + Y @ Rloc @ Y.T
        lam, V = np.linalg.eigh(C)
        w = np.linalg.solve(C, Y @ Rloc @ (obs.y - ybar))
        T = np.sqrt(N1) * (V / np.sqrt(lam)) @ V.T
        out[:, i] = xbar[i] + w @ A[:, i] + inflation * T @ A[:, i]
    return out


# ---------------------------------------------------------------------------------------
# ETKF


@pytest.mark.parametrize("m", [3, 7])  # m < N (Gram path) and m >= N (ensemble path)
@pytest.mark.parametrize("full_R", [True, False])
def test_etkf_equals_kalman_update(m: int, full_R: bool) -> None:
    d, N = 4, 6 if m == 7 else 9
    E, obs, H = linear_problem(10 + m, d, m, N, full_R)
    xa, Pa = kalman(E, obs, H)
    res = ETKF().analyse(E, obs, None)
    mu, P = mean_cov(res.E)
    assert_close(mu, xa, 1e-10)
    assert_close(P, Pa, 1e-10)
    np.testing.assert_array_equal(res.HE, obs.h(E))
    assert res.info["inflation"] == 1.0 and 0.0 <= res.info["jitter"] < 1e-10


def test_etkf_mean_preserving_and_zero_sum() -> None:
    E, obs0, H = linear_problem(1, 5, 8, 12)
    # an observation equal to the observed forecast mean leaves the mean unchanged
    obs = Observation(y=H @ E.mean(axis=0), R=obs0.R, h=obs0.h)
    res = ETKF().analyse(E, obs, None)
    assert_close(res.E.mean(axis=0), E.mean(axis=0), 1e-13)
    # the spread shrinks (the transform is not the identity) ...
    assert np.trace(mean_cov(res.E)[1]) < 0.9 * np.trace(mean_cov(E)[1])
    # ... and the analysis anomalies sum to zero
    res = ETKF().analyse(E, obs0, None)
    Aa = res.E - res.E.mean(axis=0)
    np.testing.assert_allclose(Aa.sum(axis=0), 0.0, atol=1e-12 * np.abs(E).max() * E.shape[0])


@pytest.mark.parametrize("make", [
    lambda infl: ETKF(inflation=infl),
    lambda infl: LETKF(3.0, inflation=infl),
    lambda infl: LETKF(None, inflation=infl),
    lambda infl: EnKF(inflation=infl),
    lambda infl: EnKF_N(inflation=infl),
])
def test_inflation_scales_analysis_anomalies_exactly(make: Callable[[float], object]) -> None:
    E, obs, geo = ring_setup(3, n=20, N=8)
    r1 = make(1.0).analyse(E, obs, np.random.default_rng(5), geo)
    r2 = make(1.3).analyse(E, obs, np.random.default_rng(5), geo)
    m1, m2 = r1.E.mean(axis=0), r2.E.mean(axis=0)
    assert_close(m2, m1, 1e-13)
    assert_close(r2.E - m2, 1.3 * (r1.E - m1), 1e-13)


def test_batched_transform_forms_agree() -> None:
    rng = np.random.default_rng(6)
    for N, K in [(8, 3), (5, 12)]:
        Yl = rng.standard_normal((4, N, K))
        Yl -= Yl.mean(axis=1, keepdims=True)
        dl = rng.standard_normal((4, K))
        We = batched_transforms(Yl, dl, N - 1.0, 1.1, "ens")
        Wo = batched_transforms(Yl, dl, N - 1.0, 1.1, "obs")
        np.testing.assert_allclose(We, Wo, rtol=0, atol=1e-13)
        # T 1 = 1 (mean preservation): with no innovation W = infl T, symmetric, W 1 = infl 1
        for form in ("ens", "obs"):
            W0 = batched_transforms(Yl, 0 * dl, N - 1.0, 1.1, form)
            np.testing.assert_allclose(W0, W0.transpose(0, 2, 1), atol=1e-14)
            np.testing.assert_allclose(W0.sum(axis=2), 1.1, atol=1e-13)


def test_result_is_new_array_and_input_untouched() -> None:
    E, obs, _ = linear_problem(2, 3, 4, 6)
    E0 = E.copy()
    for flt in (ETKF(), EnKF(), EnKF_N(), LETKF(None)):
        res = flt.analyse(E, obs, np.random.default_rng(0))
        assert res.E is not E and not np.shares_memory(res.E, E)
        np.testing.assert_array_equal(E, E0)
        assert res.E.shape == E.shape and res.HE.shape == (6, 4)


# ---------------------------------------------------------------------------------------
# stochastic EnKF


def test_enkf_large_ensemble_matches_kalman_within_monte_carlo_error() -> None:
    N, d, m = 20_000, 3, 2
    E, obs, H = linear_problem(7, d, m, N, full_R=True)
    xa, Pa = kalman(E, obs, H)
    xbar, P = mean_cov(E)
    K = np.linalg.solve(H @ P @ H.T + obs.R, H @ P).T
    Q = K @ obs.R @ K.T  # covariance of the perturbation term K D_i
    B = (np.eye(d) - K @ H) @ P @ (np.eye(d) - K @ H).T
    # sampling std of each covariance entry: perturbation sample covariance + cross terms
    sd_cov = np.sqrt((Q**2 + np.outer(np.diag(Q), np.diag(Q))
                      + 2 * (np.outer(np.diag(B), np.diag(Q)) + np.outer(np.diag(Q), np.diag(B))))
                     / N)
    # centred perturbations: the mean is the Kalman mean exactly
    res = EnKF().analyse(E, obs, np.random.default_rng(8))
    mu, Pe = mean_cov(res.E)
    assert_close(mu, xa, 1e-10)
    assert np.all(np.abs(Pe - Pa) < 5 * sd_cov)
    # uncentred perturbations: the mean is off by K mean(D), std sqrt(diag(Q) / N)
    res = EnKF(center_perturbations=False).analyse(E, obs, np.random.default_rng(9))
    mu, Pe = mean_cov(res.E)
    assert np.all(np.abs(mu - xa) < 5 * np.sqrt(np.diag(Q) / N))
    assert np.all(np.abs(Pe - Pa) < 5 * sd_cov)
    assert np.abs(mu - xa).max() > 0  # it really is random
    # the tolerance is meaningful: a gain computed with R misweighted by 20 % fails it
    K_bad = np.linalg.solve(H @ P @ H.T + 1.2 * obs.R, H @ P).T
    assert (np.abs(Pa - (np.eye(d) - K_bad @ H) @ P) / sd_cov).max() > 5


def test_enkf_observation_and_ensemble_space_forms_agree() -> None:
    for N, m in [(6, 10), (12, 4)]:
        E, obs, _ = linear_problem(11, 5, m, N)
        Z = np.random.default_rng(0).standard_normal((N, m))
        HE = obs.h(E)
        a = perturbed_obs_update(E, HE, obs, Z, form="obs")
        b = perturbed_obs_update(E, HE, obs, Z, form="ens")
        assert_close(a, b, 1e-12)


def test_enkf_reproducible_with_seed() -> None:
    E, obs, _ = linear_problem(12, 4, 5, 10)
    a = EnKF().analyse(E, obs, np.random.default_rng(1)).E
    b = EnKF().analyse(E, obs, np.random.default_rng(1)).E
    c = EnKF().analyse(E, obs, np.random.default_rng(2)).E
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6


# ---------------------------------------------------------------------------------------
# localization


def test_gaspari_cohn_values_symmetry_continuity() -> None:
    assert gaspari_cohn(0.0) == 1.0
    assert gaspari_cohn(1.0) == pytest.approx(5.0 / 24.0, abs=1e-15)
    assert gaspari_cohn(2.0) == 0.0
    np.testing.assert_array_equal(gaspari_cohn([2.0, 2.5, 10.0, np.inf]), 0.0)
    r = np.linspace(0, 2.5, 251)
    np.testing.assert_array_equal(gaspari_cohn(-r), gaspari_cohn(r))
    # values and first derivatives continuous at the joints r = 1 and r = 2
    eps = 1e-7
    for r0 in (1.0, 2.0):
        left, right = gaspari_cohn(r0 - eps), gaspari_cohn(r0 + eps)
        assert abs(left - right) < 1e-6
        dl = (gaspari_cohn(r0 - eps) - gaspari_cohn(r0 - 2 * eps)) / eps
        dr = (gaspari_cohn(r0 + 2 * eps) - gaspari_cohn(r0 + eps)) / eps
        assert abs(dl - dr) < 1e-5
    # decreasing on [0, 2]
    g = gaspari_cohn(np.linspace(0, 2, 201))
    assert np.all(np.diff(g) <= 0)
    # with half-width c, distance c gives 5/24 and 2c gives 0
    c = 3.7
    assert gaspari_cohn(c / c) == pytest.approx(5 / 24)
    assert gaspari_cohn(2 * c / c) == 0.0


def test_gaspari_cohn_is_positive_definite_on_a_line() -> None:
    x = np.linspace(0, 30, 120)
    C = gaspari_cohn(np.abs(x[:, None] - x[None, :]) / 2.5)
    assert np.linalg.eigvalsh(C).min() > -1e-10


def test_periodic_distance() -> None:
    assert periodic_distance([1.0], [39.0], 40)[0, 0] == 2.0
    assert periodic_distance([1.0], [39.0], None)[0, 0] == 38.0
    D = periodic_distance(np.arange(40.0), np.arange(40.0), (40.0,))
    np.testing.assert_array_equal(D, D.T)
    assert D.max() == 20.0
    a = np.array([[0.0, 0.0], [63.0, 10.0]])
    b = np.array([[63.0, 63.0]])
    np.testing.assert_allclose(periodic_distance(a, b, (64.0, 64.0))[:, 0],
                               [np.sqrt(2.0), 11.0])
    # an infinite period means "not periodic along that axis"
    np.testing.assert_allclose(periodic_distance(a, b, (64.0, np.inf))[:, 0],
                               [np.hypot(1.0, 63.0), 53.0])
    with pytest.raises(ValueError, match="same number of axes"):
        periodic_distance(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="period"):
        periodic_distance(np.zeros((2, 2)), np.zeros((2, 2)), (1.0, -1.0))


# ---------------------------------------------------------------------------------------
# LETKF


@pytest.mark.parametrize("every, N", [(1, 10), (4, 20)])  # m >= N and m < N
@pytest.mark.parametrize("radius", [None, np.inf])
def test_letkf_infinite_radius_equals_etkf(every: int, N: int, radius: float | None) -> None:
    E, obs, geo = ring_setup(4, N=N, every=every)
    a = LETKF(radius, inflation=1.05).analyse(E, obs, None, geo).E
    b = ETKF(inflation=1.05).analyse(E, obs, None).E
    assert_close(a, b, 1e-12)
    # the geometry is not needed without localization
    assert_close(LETKF(radius).analyse(E, obs, None).E, ETKF().analyse(E, obs, None).E, 1e-12)


def test_letkf_with_correlated_R_and_infinite_radius_equals_etkf() -> None:
    E, obs, _ = linear_problem(5, 6, 9, 7, full_R=True)
    assert_close(LETKF(None).analyse(E, obs, None).E, ETKF().analyse(E, obs, None).E, 1e-12)


@pytest.mark.parametrize("N, every, radius", [(10, 1, 4.0), (20, 2, 4.0), (8, 3, 1.5)])
@pytest.mark.parametrize("form", [None, "ens", "obs"])
def test_letkf_matches_per_variable_reference(N: int, every: int, radius: float,
                                              form: str | None) -> None:
    E, obs, geo = ring_setup(5, N=N, every=every)
    flt = LETKF(radius, inflation=1.02)
    flt._form = form
    res = flt.analyse(E, obs, None, geo)
    assert_close(res.E, naive_letkf(E, obs, geo, radius, 1.02), 1e-11)
    assert res.info["inflation"] == 1.02
    assert 0 < res.info["mean_local_obs"] <= obs.m


def test_letkf_far_observation_leaves_variable_unchanged() -> None:
    n, c = 40, 3.0
    E, _, geo = ring_setup(6, n=n, N=10)
    obs = Observation(y=np.array([5.0]), R=np.eye(1), h=lambda X: X[:, [10]],
                      locations=np.array([[10.0]]))
    res = LETKF(c).analyse(E, obs, None, geo)
    dist = periodic_distance(np.arange(float(n)), [10.0], n)[:, 0]
    far = dist >= 2 * c
    assert far.sum() == n - 11
    np.testing.assert_array_equal(res.E[:, far], E[:, far])  # exactly unchanged
    assert np.all(np.abs(res.E[:, ~far] - E[:, ~far]).max(axis=0) > 1e-8)
    # the ring wraps: an observation at 0 reaches variable 39 (distance 1) not 20
    obs0 = Observation(y=np.array([5.0]), R=np.eye(1), h=lambda X: X[:, [0]],
                       locations=np.array([0.0]))
    r0 = LETKF(c).analyse(E, obs0, None, geo)
    assert np.abs(r0.E[:, 39] - E[:, 39]).max() > 1e-8
    np.testing.assert_array_equal(r0.E[:, 20], E[:, 20])


def _grid(nside: int, nfields: int) -> tuple[np.ndarray, Geometry]:
    yy, xx = np.meshgrid(np.arange(float(nside)), np.arange(float(nside)), indexing="ij")
    pts = np.column_stack([yy.ravel(), xx.ravel()])
    return pts, Geometry(np.vstack([pts] * nfields), period=(float(nside), float(nside)))


@pytest.mark.parametrize("chunk_bytes", [None, 4000])
def test_letkf_2d_periodic_grid_matches_reference(monkeypatch: pytest.MonkeyPatch,
                                                  chunk_bytes: int | None) -> None:
    if chunk_bytes is not None:  # force many small batches
        monkeypatch.setattr(letkf_mod, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(7)
    pts, geo = _grid(12, 3)
    oi = rng.choice(len(pts), 15, replace=False)
    obs = Observation(y=rng.standard_normal(15), R=0.5 * np.eye(15),
                      h=lambda X: X[:, oi], locations=pts[oi])
    E = rng.standard_normal((6, geo.d))
    res = LETKF(2.0, inflation=1.1).analyse(E, obs, None, geo)
    assert_close(res.E, naive_letkf(E, obs, geo, 2.0, 1.1), 1e-11)
    # an observation at (0, 0) influences (11, 11) across the periodic boundary
    obs1 = Observation(y=np.array([3.0]), R=np.eye(1), h=lambda X: X[:, [0]],
                       locations=np.array([[0.0, 0.0]]))
    r1 = LETKF(1.0).analyse(E, obs1, None, geo)
    corner = 11 * 12 + 11
    assert np.abs(r1.E[:, corner] - E[:, corner]).max() > 1e-8
    np.testing.assert_array_equal(r1.E[:, 6 * 12 + 6], E[:, 6 * 12 + 6])


def test_letkf_unequal_groups_match_reference() -> None:
    # variables at repeated and unique locations (groups of different sizes)
    rng = np.random.default_rng(8)
    loc = np.concatenate([np.arange(30.0), np.arange(0.0, 30.0, 3.0)])
    geo = Geometry(loc, period=30.0)
    oi = np.array([1, 7, 8, 15, 22, 29])
    obs = Observation(y=rng.standard_normal(6), R=np.diag(rng.uniform(0.5, 1, 6)),
                      h=lambda X: X[:, oi], locations=loc[oi])
    E = rng.standard_normal((7, loc.size))
    res = LETKF(2.5).analyse(E, obs, None, geo)
    assert_close(res.E, naive_letkf(E, obs, geo, 2.5, 1.0), 1e-11)


def test_letkf_plan_follows_changing_observation_locations() -> None:
    E, obs, geo = ring_setup(9, N=10)
    flt = LETKF(3.0)
    flt.analyse(E, obs, None, geo)
    plan = flt._plan
    flt.analyse(E + 1.0, obs, None, geo)
    assert flt._plan is plan  # reused while nothing changed
    idx = np.array([3, 17, 30])
    obs2 = Observation(y=np.ones(3), R=np.eye(3), h=lambda X: X[:, idx],
                       locations=idx.astype(float))
    a = flt.analyse(E, obs2, None, geo).E
    b = LETKF(3.0).analyse(E, obs2, None, geo).E
    np.testing.assert_array_equal(a, b)
    flt.radius = 5.0
    np.testing.assert_array_equal(flt.analyse(E, obs2, None, geo).E,
                                  LETKF(5.0).analyse(E, obs2, None, geo).E)


def naive_transform(E: np.ndarray, obs: Observation, point: np.ndarray,
                    period: tuple[float, ...] | None, radius: float,
                    inflation: float) -> np.ndarray:
    """Reference local transform at ``point``: the analysis there is ``xbar + W @ A``."""
    N = E.shape[0]
    N1 = N - 1
    HE = obs.h(E)
    ybar = HE.mean(axis=0)
    Y = HE - ybar
    rho = gaspari_cohn(periodic_distance(np.atleast_2d(point), obs.locations, period)[0]
                       / radius)
    Rloc = np.linalg.inv(obs.R) * np.sqrt(np.outer(rho, rho))
    C = N1 * np.eye(N) + Y @ Rloc @ Y.T
    lam, V = np.linalg.eigh(C)
    w = np.linalg.solve(C, Y @ Rloc @ (obs.y - ybar))
    return inflation * np.sqrt(N1) * (V / np.sqrt(lam)) @ V.T + w[None, :]


def cgrid_setup(seed: int, n: int = 12, N: int = 6,
                ) -> tuple[np.ndarray, Observation, Geometry]:
    """A periodic C-grid in cell units: h at (i+.5, j+.5), u at (i, j+.5), v at (i+.5, j)."""
    rng = np.random.default_rng(seed)
    c = np.arange(n) + 0.5
    f = np.arange(n, dtype=float)
    grids = [np.meshgrid(c, c), np.meshgrid(f, c), np.meshgrid(c, f)]  # (x, y) of h, u, v
    loc = np.vstack([np.column_stack([gx.ravel(), gy.ravel()]) for gx, gy in grids])
    geo = Geometry(loc, period=(float(n), float(n)))
    oi = rng.choice(n * n, 14, replace=False)  # h points
    obs = Observation(y=rng.standard_normal(oi.size), R=np.diag(rng.uniform(0.3, 0.6, oi.size)),
                      h=lambda X: X[:, oi], locations=loc[oi])
    return rng.standard_normal((N, loc.shape[0])), obs, geo


def test_letkf_weight_stride_one_is_the_exact_letkf() -> None:
    E, obs, geo = cgrid_setup(10)
    a = LETKF(2.5, inflation=1.1).analyse(E, obs, None, geo)
    b = LETKF(2.5, inflation=1.1, weight_stride=1).analyse(E, obs, None, geo)
    np.testing.assert_array_equal(a.E, b.E)
    assert "analysis_points" not in b.info
    # without localization the stride is ignored: still the ETKF
    assert_close(LETKF(None, weight_stride=4).analyse(E, obs, None, geo).E,
                 ETKF().analyse(E, obs, None).E, 1e-12)


@pytest.mark.parametrize("interp", ["linear", "nearest"])
def test_letkf_weight_interpolation_on_a_staggered_grid(interp: str) -> None:
    n, radius, infl = 12, 2.5, 1.1
    E, obs, geo = cgrid_setup(11, n=n)
    flt = LETKF(radius, inflation=infl, weight_stride=4, weight_interp=interp)
    res = flt.analyse(E, obs, None, geo)
    assert res.info["analysis_points"] == (n // 2) ** 2
    # the analysis points are every second h point: (0.5 + 2a, 0.5 + 2b), a, b = 0..5
    exact = LETKF(radius, inflation=infl).analyse(E, obs, None, geo).E
    loc = geo.locations
    on = np.all(np.isclose((loc - 0.5) % 2.0, 0.0), axis=1)
    assert on.sum() == (n // 2) ** 2
    assert_close(res.E[:, on], exact[:, on], 1e-12)
    assert np.abs(res.E[:, ~on] - exact[:, ~on]).max() > 1e-6  # elsewhere: approximate
    # every variable: the bilinear (or nearest) combination of the 4 surrounding transforms
    xbar = E.mean(axis=0)
    A = E - xbar
    W = {}
    for v in range(geo.d):
        s = (loc[v] - 0.5) / 2.0  # lattice coordinates, period n / 2
        k = np.floor(s).astype(int)
        t = s - k
        Wv = np.zeros((E.shape[0],) * 2)
        for corner in np.ndindex(2, 2):
            kk = tuple((k + np.array(corner)) % (n // 2))
            if interp == "linear":
                coef = np.prod(np.where(corner, t, 1.0 - t))
            else:
                coef = float(np.all(np.array(corner) == (t > 0.5)))
            if coef == 0.0:
                continue
            if kk not in W:
                W[kk] = naive_transform(E, obs, 0.5 + 2.0 * np.array(kk), geo.period,
                                        radius, infl)
            Wv += coef * W[kk]
        np.testing.assert_allclose(res.E[:, v], xbar[v] + Wv @ A[:, v], rtol=0, atol=1e-11)


def test_letkf_weight_interpolation_keeps_the_ends_of_a_bounded_axis() -> None:
    # 11 points on a line (not periodic), stride 3: analysis points 0, 3, 6, 9 and the end 10
    rng = np.random.default_rng(12)
    loc = np.arange(11.0)
    geo = Geometry(loc)
    oi = np.array([1, 4, 8, 10])
    obs = Observation(y=rng.standard_normal(4), R=np.eye(4), h=lambda X: X[:, oi],
                      locations=loc[oi])
    E = rng.standard_normal((5, 11))
    res = LETKF(3.0, weight_stride=3).analyse(E, obs, None, geo)
    assert res.info["analysis_points"] == 5
    xbar, A = E.mean(axis=0), E - E.mean(axis=0)
    W = {p: naive_transform(E, obs, np.array([p]), None, 3.0, 1.0) for p in (0, 3, 6, 9, 10)}
    for v, (lo, hi) in enumerate([(0, 3)] * 3 + [(3, 6)] * 3 + [(6, 9)] * 3 + [(9, 10)] * 2):
        t = (v - lo) / (hi - lo)
        want = xbar[v] + ((1 - t) * W[lo] + t * W[hi]) @ A[:, v]
        np.testing.assert_allclose(res.E[:, v], want, rtol=0, atol=1e-11)


def test_letkf_weight_interpolation_plan_is_cached_and_follows_changes() -> None:
    E, obs, geo = cgrid_setup(13)
    flt = LETKF(2.5, weight_stride=2)
    a = flt.analyse(E, obs, None, geo).E
    wm = flt._wmap
    flt.analyse(E, obs, None, geo)
    assert flt._wmap is wm
    flt.weight_stride = 4
    np.testing.assert_array_equal(flt.analyse(E, obs, None, geo).E,
                                  LETKF(2.5, weight_stride=4).analyse(E, obs, None, geo).E)
    flt.weight_stride = 2
    np.testing.assert_array_equal(flt.analyse(E, obs, None, geo).E, a)


# ---------------------------------------------------------------------------------------
# EnKF-N


def test_enkf_n_is_an_etkf_with_inflated_prior() -> None:
    # a consistent linear-Gaussian problem: ensemble and truth from the same prior
    rng = np.random.default_rng(13)
    d, m, N = 4, 6, 12
    H = rng.standard_normal((m, d))
    R, P0 = _spd(rng, m), _spd(rng, d, 2.0)
    E = rng.multivariate_normal(np.zeros(d), P0, size=N)
    y = H @ rng.multivariate_normal(np.zeros(d), P0) + rng.multivariate_normal(np.zeros(m), R)
    obs = Observation(y=y, R=R, h=lambda X: X @ H.T)
    res = EnKF_N().analyse(E, obs, None)
    l1 = res.info["inflation"]
    assert np.isfinite(res.E).all() and res.E.shape == E.shape
    assert 0.9 < l1 < 1.5  # small: the spread is consistent with the innovation
    xa, Pa = kalman(E, obs, H, infl2=l1**2)
    mu, P = mean_cov(res.E)
    assert_close(mu, xa, 1e-10)
    assert_close(P, Pa, 1e-10)
    Aa = res.E - mu
    np.testing.assert_allclose(Aa.sum(axis=0), 0.0, atol=1e-12 * np.abs(E).max() * N)


def _dual_cost_svd(l1: np.ndarray, Yw: np.ndarray, dyw: np.ndarray) -> np.ndarray:
    """Independent evaluation of the dual cost through the SVD (DAPPER's form)."""
    N = Yw.shape[0]
    _, s, UT = np.linalg.svd(Yw, full_matrices=False)
    du = UT @ dyw
    s2 = np.zeros(N)
    s2[: s.size] = s**2
    eN, cL = hyperprior_coeffs(s2, N)
    den = np.multiply.outer(np.asarray(l1) ** 2, s**2) + N - 1
    return np.sum(du**2 / den, axis=-1) + eN / l1**2 + cL * np.log(l1**2)


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_enkf_n_minimises_the_dual_cost(scale: float) -> None:
    rng = np.random.default_rng(14)
    N, n = 15, 30
    E = rng.standard_normal((N, n))
    obs = Observation(y=scale * rng.standard_normal(n) + rng.standard_normal(n),
                      R=np.eye(n), h=lambda X: X)
    l1 = EnKF_N().analyse(E, obs, None).info["inflation"]
    HE = obs.h(E)
    Yw = HE - HE.mean(axis=0)
    dyw = obs.y - HE.mean(axis=0)
    grid = np.geomspace(0.2, 20.0, 2001)
    J = _dual_cost_svd(grid, Yw, dyw)
    J1 = _dual_cost_svd(np.array([l1]), Yw, dyw)[0]
    assert J1 <= J.min() + 1e-12 * abs(J.min())
    assert abs(l1 - grid[np.argmin(J)]) < 0.01 * l1
    # the division-free cost used internally differs from it by a constant only
    lam, V = np.linalg.eigh(Yw @ Yw.T)
    s2, c2 = np.maximum(lam, 0), ((Yw @ dyw) @ V) ** 2
    eN, cL = hyperprior_coeffs(s2, N)
    diff = _dual_cost_svd(grid[::100], Yw, dyw) - dual_cost(grid[::100], s2, c2, N, eN, cL)
    np.testing.assert_allclose(diff, diff[0], atol=1e-9)
    # the safeguarded fallback minimiser finds the same point as Newton's method
    l_newton, _ = solve_dual(s2, c2, N, eN, cL)
    l_fallback, _ = solve_dual(s2, c2, N, eN, cL, maxiter=0)
    assert l_fallback == pytest.approx(l_newton, rel=1e-6)


def test_enkf_n_dual_solution_equals_primal_solution() -> None:
    """The dual minimiser gives the same inflation and mean as the primal EnKF-N.

    Primal (Bocquet 2011; Bocquet et al. 2015): minimise over ensemble weights ``w``
    ``J(w) = |dy - w Y|^2 / 2 + (N-1) cL / 2 * log(eN + |w|^2)``; then
    ``l1^2 = (eN + |w*|^2) / cL`` and the analysis mean is ``mean + w* A``.
    """
    from scipy.optimize import minimize

    rng = np.random.default_rng(16)
    N, n, r = 15, 30, 0.7
    E = rng.standard_normal((N, n)) + 1.0
    obs = Observation(y=2.0 * rng.standard_normal(n), R=r * np.eye(n),
                      h=lambda X: X**2 / 3 + X)  # nonlinear h: the filter only sees HE
    res = EnKF_N().analyse(E, obs, None)
    HE = obs.h(E)
    Yw = (HE - HE.mean(axis=0)) / np.sqrt(r)
    dyw = (obs.y - HE.mean(axis=0)) / np.sqrt(r)
    eN, cL = hyperprior_coeffs(np.maximum(np.linalg.eigvalsh(Yw @ Yw.T), 0.0), N)

    def J(w: np.ndarray) -> float:
        return 0.5 * np.sum((dyw - w @ Yw) ** 2) + 0.5 * (N - 1) * cL * np.log(eN + w @ w)

    def dJ(w: np.ndarray) -> np.ndarray:
        return -(Yw @ (dyw - w @ Yw)) + (N - 1) * cL * w / (eN + w @ w)

    w = minimize(J, np.zeros(N), jac=dJ, method="BFGS", options={"gtol": 1e-12}).x
    assert res.info["inflation"] == pytest.approx(np.sqrt((eN + w @ w) / cL), rel=1e-7)
    xbar = E.mean(axis=0)
    assert_close(res.E.mean(axis=0), xbar + w @ (E - xbar), 1e-8)


def test_enkf_n_hyperprior_limits() -> None:
    N = 20
    # informative observations: the Jeffreys coefficients eN = 1 + 1/N, cL = N / (N-1)
    eN, cL = hyperprior_coeffs(np.full(N, 1e16), N)
    assert eN == pytest.approx((N + 1) / N, rel=1e-12)
    assert cL == pytest.approx(N / (N - 1), rel=1e-12)
    # uninformative observations: the mode correction moves the prior mode of l1^2 to 1
    eN0, cL0 = hyperprior_coeffs(np.zeros(N), N)
    assert eN0 / cL0 == pytest.approx(1.0, rel=1e-12)
    # ... so with a huge R the EnKF-N neither inflates nor moves the ensemble
    rng = np.random.default_rng(17)
    E = rng.standard_normal((N, 8))
    obs = Observation(y=rng.standard_normal(8), R=1e12 * np.eye(8), h=lambda X: X)
    res = EnKF_N().analyse(E, obs, None)
    assert res.info["inflation"] == pytest.approx(1.0, abs=1e-6)
    assert_close(res.E, E, 1e-5)


def test_enkf_n_inflates_when_spread_is_too_small_for_the_innovations() -> None:
    rng = np.random.default_rng(15)
    N, n = 20, 40
    E = rng.standard_normal((N, n))  # prior spread 1, R = I
    z, e = rng.standard_normal(n), rng.standard_normal(n)
    infl = []
    for k in (0.0, 1.0, 3.0, 5.0):  # truth spread k: innovations grow with k
        obs = Observation(y=k * z + e, R=np.eye(n), h=lambda X: X)
        infl.append(EnKF_N().analyse(E, obs, None).info["inflation"])
    assert infl[2] > 1.5  # spread 3x too small -> strong inflation
    assert infl[3] > infl[2] > infl[1]


# ---------------------------------------------------------------------------------------
# validation


def _ok() -> tuple[np.ndarray, Observation, Geometry]:
    return ring_setup(0, n=10, N=5)


def _obs(**kw: object) -> Observation:
    base: dict[str, object] = {"y": np.zeros(3), "R": np.eye(3), "h": lambda X: X[:, :3]}
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


BAD_CASES: list[tuple[str, Callable[[], object], str]] = [
    ("N=1", lambda: ETKF().analyse(_ok()[0][:1], _ok()[1], None), "E must have N >= 2"),
    ("E nan", lambda: ETKF().analyse(np.full((5, 10), np.nan), _ok()[1], None),
     "E must be finite"),
    ("E 1-D", lambda: ETKF().analyse(np.zeros(10), _ok()[1], None), "E must have shape"),
    ("y 2-D", lambda: _obs(y=np.zeros((3, 1))), "y must have shape"),
    ("y nan", lambda: _obs(y=np.array([0.0, np.nan, 1.0])), "y must be finite"),
    ("R shape", lambda: _obs(R=np.eye(2)), r"R must have shape \(m, m\)"),
    ("R asym", lambda: _obs(R=np.array([[2.0, 1, 0], [0, 2, 0], [0, 0, 2]])),
     "matrix R is not symmetric"),
    ("R indef", lambda: _obs(R=np.array([[1.0, 2, 0], [2, 1, 0], [0, 0, 1]])),
     "matrix R is not positive definite"),
    ("R diag0", lambda: _obs(R=np.diag([1.0, 0.0, 1.0])), "R must be positive definite"),
    ("R nan", lambda: _obs(R=np.full((3, 3), np.nan)), "R must be finite"),
    ("h", lambda: _obs(h=3), "h must be callable"),
    ("loc", lambda: _obs(locations=np.zeros((2, 1))), "locations must have shape"),
    ("h shape", lambda: ETKF().analyse(_ok()[0], _obs(h=lambda X: X), None), "h must map"),
    ("h nan", lambda: ETKF().analyse(_ok()[0], _obs(h=lambda X: X[:, :3] * np.nan), None),
     r"h\(E\) must be finite"),
    ("obs type", lambda: ETKF().analyse(_ok()[0], "y", None), "obs must be"),
    ("inflation<1", lambda: ETKF(inflation=0.9), "inflation must be >= 1"),
    ("inflation nan", lambda: EnKF_N(inflation=float("nan")), "inflation must be finite"),
    ("radius 0", lambda: LETKF(0.0), "radius must be > 0"),
    ("radius <0", lambda: LETKF(-2.0), "radius must be > 0"),
    ("radius nan", lambda: LETKF(float("nan")), "radius must be > 0"),
    ("radius str", lambda: LETKF("4"), "radius must be > 0"),
    ("taper", lambda: LETKF(4.0, taper="boxcar"), "taper must be one of"),
    ("weight_stride 0", lambda: LETKF(4.0, weight_stride=0), "weight_stride must be >= 1"),
    ("weight_stride float", lambda: LETKF(4.0, weight_stride=2.5),
     "weight_stride must be an integer"),
    ("weight_interp", lambda: LETKF(4.0, weight_interp="cubic"), "weight_interp must be one of"),
    ("weight_stride scattered", lambda: LETKF(4.0, weight_stride=2).analyse(
        _ok()[0][:, :3], _obs(h=lambda X: X, locations=[[0.0, 0.3], [1.0, 1.7], [2.0, 0.9]]),
        None, Geometry([[0.0, 0.3], [1.0, 1.7], [2.0, 0.9]])), "not on a grid"),
    ("no geometry", lambda: LETKF(4.0).analyse(*_ok()[:2], None), "geometry is required"),
    ("no obs loc", lambda: LETKF(4.0).analyse(_ok()[0], _obs(), None, _ok()[2]),
     "obs.locations is required"),
    ("geometry rows", lambda: LETKF(4.0).analyse(*_ok()[:2], None, Geometry(np.arange(3.0))),
     "geometry.locations must have one row per variable"),
    ("axes", lambda: LETKF(4.0).analyse(*_ok()[:2], None, Geometry(np.zeros((10, 2)))),
     "obs.locations must have as many axes"),
    ("period", lambda: Geometry(np.arange(4.0), period=(4.0, 4.0)), "geometry.period"),
    ("rng", lambda: EnKF().analyse(*_ok()[:2], None), "rng must be"),
    ("centre", lambda: EnKF(center_perturbations="yes"), "center_perturbations"),
]


@pytest.mark.parametrize("label, call, match", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_errors_name_the_field(label: str, call: Callable[[], object],
                                         match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_h_not_called_before_validation() -> None:
    calls = []

    def h(X: np.ndarray) -> np.ndarray:
        calls.append(1)
        return X[:, :3]

    obs = _obs(h=h)
    with pytest.raises(ValueError, match="geometry is required"):
        LETKF(2.0).analyse(_ok()[0], obs, None)
    assert calls == []


def test_registry_and_reprs_label_runs() -> None:
    assert set(FILTERS) == {"EnKF", "ETKF", "LETKF", "EnKF_N", "AdaptiveETKF", "ParticleFilter",
                            "HybridETKF", "LaplaceAnalysis", "VariableLaplace", "MCMCAnalysis"}
    assert repr(HybridETKF(beta=0.3)) == "HybridETKF(inflation=1.0, beta=0.3)"
    assert repr(ETKF(inflation=1.02)) == "ETKF(inflation=1.02)"
    assert repr(LETKF(4, inflation=1.02)) == \
        "LETKF(inflation=1.02, radius=4.0, taper='gaspari_cohn')"
    assert repr(LETKF(4.0, weight_stride=2, weight_interp="nearest")) == \
        "LETKF(inflation=1.0, radius=4.0, taper='gaspari_cohn', weight_stride=2, " \
        "weight_interp='nearest')"
    assert repr(EnKF_N()) == "EnKF_N(inflation=1.0)"


def test_eigenvalue_floors_are_recorded_as_jitter(monkeypatch):
    rng = np.random.default_rng(7)
    E = rng.standard_normal((4, 6))  # N = 4 < m = 6: the ensemble-space (N x N) paths
    obs = Observation(y=rng.standard_normal(6), R=np.eye(6), h=lambda X: X)
    res = ETKF().analyse(E, obs, None)
    assert 0.0 <= res.info["jitter"] < 1e-12  # well conditioned: round-off at most
    real_eigh = np.linalg.eigh

    def low_eigh(a, *args, **kwargs):  # the smallest eigenvalue falls 0.25 below N - 1 = 3
        w, v = real_eigh(a, *args, **kwargs)
        w = w.copy()
        w[..., 0] = 3.0 - 0.25
        return w, v

    monkeypatch.setattr(np.linalg, "eigh", low_eigh)
    assert ETKF().analyse(E, obs, None).info["jitter"] == pytest.approx(0.25)
    assert EnKF().analyse(E, obs, rng).info["jitter"] == pytest.approx(0.25)
