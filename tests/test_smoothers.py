"""Smoothers against the Rauch–Tung–Striebel smoother on a linear-Gaussian model."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.filters import ETKF, EnKF, Observation, ParticleFilter
from latentda.smoothers import (
    EnKS,
    FixedLagParticleSmoother,
    SmoothedEnsemble,
    analysis_weight_matrix,
    ffbsi,
)

# ---------------------------------------------------------------------------------------
# the linear-Gaussian state-space model and its exact filter / smoother

A = np.array([[0.9, 0.3], [-0.2, 0.8]])
H = np.array([[1.0, 0.0]])  # only the first component is observed
R = np.array([[0.5]])
M0, P0 = np.array([1.0, -1.0]), np.eye(2)
T = 20


def simulate(Q: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(M0, P0)
    ys = []
    for t in range(T):
        if t:
            x = A @ x + rng.multivariate_normal(np.zeros(2), Q)
        ys.append(H @ x + rng.multivariate_normal(np.zeros(1), R))
    return np.array(ys)


def rts(ys: np.ndarray, Q: np.ndarray, m0: np.ndarray = M0, p0: np.ndarray = P0,
        ) -> tuple[np.ndarray, np.ndarray]:
    """Kalman filter then Rauch–Tung–Striebel smoother: smoothed means and covariances."""
    n = len(ys)
    mf, Pf, ma, Pa = [], [], [], []
    m, P = m0, p0
    for t, y in enumerate(ys):
        if t:
            m, P = A @ m, A @ P @ A.T + Q
        mf.append(m)
        Pf.append(P)
        S = H @ P @ H.T + R
        K = np.linalg.solve(S, H @ P).T
        m, P = m + K @ (y - H @ m), P - K @ H @ P
        ma.append(m)
        Pa.append(P)
    ms, Ps = [ma[-1]], [Pa[-1]]
    for t in range(n - 2, -1, -1):
        J = np.linalg.solve(Pf[t + 1], A @ Pa[t]).T  # Pa A^T Pf^-1 (Pf symmetric)
        ms.insert(0, ma[t] + J @ (ms[0] - mf[t + 1]))
        Ps.insert(0, Pa[t] + J @ (Ps[0] - Pf[t + 1]) @ J.T)
    return np.array(ms), np.array(Ps)


def fixed_lag_rts(ys: np.ndarray, Q: np.ndarray, lag: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of x_t given y_0..y_{min(t+lag, T-1)}."""
    out_m, out_P = [], []
    for t in range(len(ys)):
        ms, Ps = rts(ys[: t + lag + 1], Q, **kw)
        out_m.append(ms[t])
        out_P.append(Ps[t])
    return np.array(out_m), np.array(out_P)


def obs_at(ys: np.ndarray, t: int) -> Observation:
    return Observation(y=ys[t], R=R, h=lambda X: X @ H.T)


def run_smoother(smoother, ys: np.ndarray, E0: np.ndarray, Q: np.ndarray,
                 rng: np.random.Generator) -> list[SmoothedEnsemble]:
    """Cycle a fixed-lag smoother through the data; smoothed ensembles for t = 0..T-1."""
    Lq = np.linalg.cholesky(Q) if Q.any() else None
    E = E0
    out: list[SmoothedEnsemble] = []
    for t in range(len(ys)):
        if t:
            E = E @ A.T
            if Lq is not None:
                E = E + rng.standard_normal(E.shape) @ Lq.T
        E = smoother.analyse(E, obs_at(ys, t), rng).E
        if smoother.released is not None:
            out.append(smoother.released)
    out += smoother.flush()
    assert [s.index for s in out] == list(range(len(ys)))
    return out


def weighted_moments(s: SmoothedEnsemble, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    N = s.E.shape[0]
    w = np.full(N, 1.0 / N) if s.weights is None else s.weights
    m = w @ s.E
    v = w @ (s.E - m) ** 2
    if ddof and s.weights is None:
        v *= N / (N - 1)
    return m, v


def assert_mc_agreement(err: np.ndarray, zmax: float = 5.0) -> None:
    """Replicate errors (reps, ...) are zero-mean within their Monte-Carlo standard error."""
    reps = err.shape[0]
    z = err.mean(axis=0) / (err.std(axis=0, ddof=1) / np.sqrt(reps))
    assert np.abs(z).max() < zmax, np.abs(z).max()
    assert np.sqrt(np.mean(z**2)) < 2.0  # ~1 for an unbiased estimator


Q_NOISE = np.diag([0.2, 0.1])


# ---------------------------------------------------------------------------------------
# EnKS


def test_weight_matrix_reproduces_etkf_and_enkf() -> None:
    rng = np.random.default_rng(1)
    N, d, m = 12, 5, 3
    E = rng.standard_normal((N, d))
    Hm = rng.standard_normal((m, d))
    obs = Observation(y=rng.standard_normal(m), R=np.diag([0.5, 1.0, 2.0]), h=lambda X: X @ Hm.T)
    X5 = analysis_weight_matrix(E @ Hm.T, obs, "etkf")
    np.testing.assert_allclose(X5.sum(axis=0), 1.0, atol=1e-12)  # affine combinations
    np.testing.assert_allclose(X5.T @ E, ETKF().analyse(E, obs, None).E, atol=1e-12)
    res = EnKS(lag=2).analyse(E, obs, None)
    np.testing.assert_allclose(res.E, ETKF().analyse(E, obs, None).E, atol=1e-12)
    a = EnKS(lag=2, method="enkf").analyse(E, obs, np.random.default_rng(3))
    b = EnKF().analyse(E, obs, np.random.default_rng(3))
    np.testing.assert_allclose(a.E, b.E, atol=1e-12)
    # inflation: current analysis only, around the mean
    c = EnKS(lag=2, inflation=1.2).analyse(E, obs, None)
    np.testing.assert_allclose(c.E, ETKF(inflation=1.2).analyse(E, obs, None).E, atol=1e-12)


@pytest.mark.parametrize("lag", [T, 3])
def test_enks_is_exact_for_a_linear_model_without_noise(lag: int) -> None:
    """N > d + 1, no model noise: the ETKF-based EnKS reproduces the (fixed-lag) RTS
    smoother for the initial ensemble's mean and covariance, to round-off."""
    Q0 = np.zeros((2, 2))
    ys = simulate(Q_NOISE, seed=2)  # data from the noisy system; the filter assumes Q = 0
    rng = np.random.default_rng(3)
    E0 = rng.multivariate_normal(M0, P0, size=10)
    m0, p0 = E0.mean(axis=0), np.cov(E0.T)
    out = run_smoother(EnKS(lag=lag), ys, E0, Q0, rng)
    ms, Ps = fixed_lag_rts(ys, Q0, lag, m0=m0, p0=p0)
    for t, s in enumerate(out):
        np.testing.assert_allclose(s.E.mean(axis=0), ms[t], rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.cov(s.E.T), Ps[t], rtol=0, atol=1e-10 * np.abs(Ps[t]).max())
    if lag == T:  # member by member, the smoothed ensembles are one model trajectory
        for s0, s1 in zip(out[:-1], out[1:], strict=True):
            np.testing.assert_allclose(s0.E @ A.T, s1.E, atol=1e-10)


def test_enks_matches_rts_with_model_noise() -> None:
    ys = simulate(Q_NOISE, seed=4)
    ms, Ps = rts(ys, Q_NOISE)
    reps, N = 20, 300
    err_m = np.empty((reps, T, 2))
    err_v = np.empty((reps, T, 2))
    for r in range(reps):
        rng = np.random.default_rng(200 + r)
        E0 = rng.multivariate_normal(M0, P0, size=N)
        out = run_smoother(EnKS(lag=T), ys, E0, Q_NOISE, rng)
        for t, s in enumerate(out):
            m, v = weighted_moments(s, ddof=1)
            err_m[r, t] = m - ms[t]
            err_v[r, t] = v - np.diag(Ps[t])
    assert_mc_agreement(err_m)
    assert_mc_agreement(err_v)


def test_enks_window_release_and_state() -> None:
    ys = simulate(Q_NOISE, seed=5)
    rng = np.random.default_rng(6)
    E = rng.multivariate_normal(M0, P0, size=8)
    s = EnKS(lag=2)
    released = []
    for t in range(5):
        res = s.analyse(E @ A.T if t else E, obs_at(ys, t), None)
        E = res.E
        win = s.window
        assert [w.index for w in win] == list(range(max(0, t - 1), t + 1))
        np.testing.assert_array_equal(win[-1].E, res.E)
        released.append(None if s.released is None else s.released.index)
    assert released == [None, None, 0, 1, 2]
    # resuming from the state continues identically
    s2 = EnKS(lag=2)
    s2.set_state(s.get_state())
    a = s.analyse(E @ A.T, obs_at(ys, 5), None)
    b = s2.analyse(E @ A.T, obs_at(ys, 5), None)
    np.testing.assert_array_equal(a.E, b.E)
    assert s.released.index == s2.released.index == 3
    np.testing.assert_array_equal(s.released.E, s2.released.E)
    assert [w.index for w in s.flush()] == [4, 5] and s.window == []
    # lag 0: the filter; every analysis is released at once
    f = EnKS(lag=0)
    r0 = f.analyse(E, obs_at(ys, 0), None)
    np.testing.assert_array_equal(f.released.E, r0.E)
    assert f.window == []
    s.analyse(E, obs_at(ys, 0), None)
    with pytest.raises(ValueError, match="reset"):  # the window holds 8-member ensembles
        s.analyse(E[:5], obs_at(ys, 0), None)
    s.reset()
    assert s.analyse(E[:5], obs_at(ys, 0), None).E.shape == (5, 2)


# ---------------------------------------------------------------------------------------
# particle smoothers


def test_fixed_lag_particle_smoother_matches_fixed_lag_rts() -> None:
    lag = 3
    ys = simulate(Q_NOISE, seed=7)
    ms, Ps = fixed_lag_rts(ys, Q_NOISE, lag)
    reps, N = 20, 2000
    err_m = np.empty((reps, T, 2))
    err_v = np.empty((reps, T, 2))
    for r in range(reps):
        rng = np.random.default_rng(300 + r)
        E0 = rng.multivariate_normal(M0, P0, size=N)
        out = run_smoother(FixedLagParticleSmoother(lag=lag), ys, E0, Q_NOISE, rng)
        for t, s in enumerate(out):
            m, v = weighted_moments(s)
            err_m[r, t] = m - ms[t]
            err_v[r, t] = v - np.diag(Ps[t])
    assert_mc_agreement(err_m)
    assert_mc_agreement(err_v)


def test_particle_paths_stay_consistent() -> None:
    """An unobserved, static label travels with each path: every buffered ensemble's row i
    carries the label of current particle i after any resampling."""
    rng = np.random.default_rng(8)
    N = 200
    E = np.c_[rng.standard_normal(N), np.arange(N, dtype=float)]
    ps = FixedLagParticleSmoother(lag=4, ess_threshold=0.8)
    n_res = 0
    for t in range(10):
        if t:
            E = np.c_[0.9 * E[:, 0] + 0.5 * rng.standard_normal(N), E[:, 1]]
        obs = Observation(y=np.array([np.sin(t)]), R=np.array([[0.3]]), h=lambda X: X[:, :1])
        res = ps.analyse(E, obs, rng)
        E = res.E
        n_res += int(res.info["resampled"])
        for s in ps.window:
            np.testing.assert_array_equal(s.E[:, 1], E[:, 1])
            if res.weights is None:
                assert s.weights is None
            else:
                np.testing.assert_array_equal(s.weights, res.weights)
    assert 0 < n_res < 10


def test_ffbsi_matches_rts() -> None:
    ys = simulate(Q_NOISE, seed=9)
    ms, Ps = rts(ys, Q_NOISE)
    Li = np.linalg.inv(np.linalg.cholesky(Q_NOISE))  # whitening: |Li (x' - A x)|^2

    def log_transition(x_next: np.ndarray, X_prev: np.ndarray) -> np.ndarray:
        a, b = x_next @ Li.T, X_prev @ (Li @ A).T  # whitened next states and predictions
        out = np.zeros((a.shape[0], b.shape[0]))
        for k in range(a.shape[1]):
            out -= 0.5 * (a[:, k, None] - b[None, :, k]) ** 2
        return out

    reps, N, n_paths = 16, 800, 200
    err_m = np.empty((reps, T, 2))
    err_v = np.empty((reps, T, 2))
    Lq = np.linalg.cholesky(Q_NOISE)
    for r in range(reps):
        rng = np.random.default_rng(400 + r)
        pf = ParticleFilter(ess_threshold=0.5)
        E = rng.multivariate_normal(M0, P0, size=N)
        parts, logws = [], []
        for t in range(T):
            if t:
                E = E @ A.T + rng.standard_normal(E.shape) @ Lq.T
            res = pf.analyse(E, obs_at(ys, t), rng)
            E = res.E
            parts.append(E)
            logws.append(np.zeros(N) if res.weights is None else np.log(res.weights))
        paths = ffbsi(parts, logws, log_transition, n_paths, rng, vectorized=True)
        assert paths.shape == (n_paths, T, 2)
        err_m[r] = paths.mean(axis=0) - ms
        err_v[r] = paths.var(axis=0, ddof=1) - np.diagonal(Ps, axis1=1, axis2=2)
    assert_mc_agreement(err_m)
    assert_mc_agreement(err_v)


def test_ffbsi_loop_and_vectorized_agree_and_draw_from_weights() -> None:
    rng = np.random.default_rng(10)
    parts = [rng.standard_normal((30, 2)) for _ in range(4)]
    logws = [rng.standard_normal(30) for _ in range(4)]

    def lt(x_next, X_prev):
        return -0.5 * np.sum((x_next - 0.5 * X_prev) ** 2, axis=-1)

    def lt_vec(X_next, X_prev):
        return -0.5 * np.sum((X_next[:, None, :] - 0.5 * X_prev[None]) ** 2, axis=-1)

    a = ffbsi(parts, logws, lt, 50, np.random.default_rng(1))
    b = ffbsi(parts, logws, lt_vec, 50, np.random.default_rng(1), vectorized=True)
    np.testing.assert_array_equal(a, b)
    # T = 1: the paths are draws from the last filtering weights
    lw = np.array([np.log(0.7), -np.inf, np.log(0.3)])
    X = np.array([[0.0], [1.0], [2.0]])
    p = ffbsi([X], [lw], lt, 20_000, np.random.default_rng(2))[:, 0, 0]
    assert not (p == 1.0).any()
    assert abs(np.mean(p == 0.0) - 0.7) < 5 * np.sqrt(0.21 / 20_000)


# ---------------------------------------------------------------------------------------
# bad input


def _lt(x, X):
    return np.zeros(X.shape[0])


@pytest.mark.parametrize("call, match", [
    (lambda: EnKS(lag=-1), "lag must be >= 0"),
    (lambda: EnKS(method="enks"), "method must be one of"),
    (lambda: EnKS(center_perturbations=1), "center_perturbations must be True or False"),
    (lambda: EnKS(method="enkf").analyse(np.ones((4, 1)), obs_at(np.ones((1, 1)), 0), None),
     "rng must be"),
    (lambda: FixedLagParticleSmoother(lag=1.5), "lag must be an integer"),
    (lambda: FixedLagParticleSmoother(ess_threshold=2.0), "ess_threshold"),
    (lambda: ffbsi([np.ones((3, 1))], [np.zeros(3), np.zeros(3)], _lt, 5, 0), "same length"),
    (lambda: ffbsi([], [], _lt, 5, 0), "non-empty"),
    (lambda: ffbsi([np.ones((3, 1))], [np.zeros(4)], _lt, 5, 0), r"log_weights\[0\]"),
    (lambda: ffbsi([np.ones((3, 1)), np.ones((3, 2))], [np.zeros(3)] * 2, _lt, 5, 0),
     r"particles\[1\] must have shape"),
    (lambda: ffbsi([np.ones(3)], [np.zeros(3)], _lt, 5, 0), r"particles\[0\] must have shape"),
    (lambda: ffbsi([np.ones((3, 1))], [np.zeros(3)], _lt, 0, 0), "n_paths must be >= 1"),
    (lambda: ffbsi([np.ones((3, 1))], [np.full(3, -np.inf)], _lt, 2, 0), "tempering"),
    (lambda: ffbsi([np.ones((3, 1))] * 2, [np.zeros(3)] * 2, lambda x, X: np.zeros(2), 2, 0),
     "must return shape"),
    (lambda: ffbsi([np.ones((3, 1))] * 2, [np.zeros(3)] * 2,
                   lambda x, X: np.full(3, -np.inf), 2, 0), "degenerate"),
    (lambda: ffbsi([np.ones((3, 1))], [np.zeros(3)], "f", 2, 0), "callable"),
])
def test_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
