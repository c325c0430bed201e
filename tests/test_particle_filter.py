"""The bootstrap particle filter: analytic posteriors, Kalman tracking, tempering, errors."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.filters import FILTERS, Observation, ParticleFilter
from latentda.filters.particle import gaussian_log_likelihood, silverman_bandwidth

# ---------------------------------------------------------------------------------------
# Gaussian-mixture prior observed with Gaussian noise: closed-form posterior

PI = np.array([0.3, 0.5, 0.2])
MU = np.array([-2.5, 0.0, 1.5])
SD = np.array([0.3, 0.4, 0.3])
SIGMA, Y = 0.8, 0.5


def mixture_posterior() -> tuple[np.ndarray, float, float]:
    """Posterior component weights, mean and std of the mixture prior given y."""
    s2 = SD**2 + SIGMA**2  # marginal variance of y under each component
    lik = PI * np.exp(-0.5 * (Y - MU) ** 2 / s2) / np.sqrt(2 * np.pi * s2)
    omega = lik / lik.sum()
    v = 1.0 / (1.0 / SD**2 + 1.0 / SIGMA**2)
    m = v * (MU / SD**2 + Y / SIGMA**2)
    mean = float(omega @ m)
    var = float(omega @ (v + m**2)) - mean**2
    return omega, mean, float(np.sqrt(var))


def mixture_sample(N: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    z = rng.choice(3, size=N, p=PI)
    return (MU[z] + SD[z] * rng.standard_normal(N))[:, None], z


def snis_se(w: np.ndarray, f: np.ndarray, est: float) -> float:
    """Delta-method standard error of the self-normalized estimate sum_i w_i f_i."""
    return float(np.sqrt(np.sum(w**2 * (f - est) ** 2)))


MIX_OBS = Observation(y=np.array([Y]), R=np.array([[SIGMA**2]]), h=lambda X: X)


def test_closed_form_reference() -> None:
    omega, mean, sd = mixture_posterior()
    assert 5e-4 < omega[0] < 2e-3  # the x ~ -2.5 component is almost ruled out (≈ 0.001)
    assert omega.sum() == pytest.approx(1.0)


def test_mixture_posterior_importance_weights() -> None:
    """One analysis keeping the weights: component weights, mean and std within MC error."""
    rng = np.random.default_rng(11)
    E, z = mixture_sample(200_000, rng)
    res = ParticleFilter(ess_threshold=1e-3).analyse(E, MIX_OBS, rng)
    assert res.info["resampled"] == 0.0 and res.weights is not None
    np.testing.assert_array_equal(res.E, E)  # no resampling: the particles are unchanged
    w, x = res.weights, res.E[:, 0]
    assert res.info["ess"] == pytest.approx(1.0 / np.sum(w**2))
    omega, mean, sd = mixture_posterior()
    for k in range(3):
        f = (z == k).astype(float)
        est = float(w @ f)
        assert abs(est - omega[k]) < 4.5 * snis_se(w, f, est), (k, est, omega[k])
    m = float(w @ x)
    assert abs(m - mean) < 4.5 * snis_se(w, x, m)
    v = float(w @ (x - m) ** 2)
    se_sd = snis_se(w, (x - m) ** 2, v) / (2 * np.sqrt(v))
    assert abs(np.sqrt(v) - sd) < 4.5 * se_sd


@pytest.mark.parametrize("scheme", ["systematic", "residual"])
def test_mixture_posterior_after_resampling(scheme: str) -> None:
    rng = np.random.default_rng(12)
    N = 200_000
    E, z = mixture_sample(N, rng)
    pf = ParticleFilter(scheme=scheme, ess_threshold=1.0)
    res = pf.analyse(E, MIX_OBS, rng)
    assert res.info["resampled"] == 1.0 and res.weights is None
    np.testing.assert_array_equal(res.E, E[pf.ancestors])  # bandwidth 0: copies
    w_is = np.exp(gaussian_log_likelihood(E, MIX_OBS) - gaussian_log_likelihood(E, MIX_OBS).max())
    w_is /= w_is.sum()
    omega, mean, sd = mixture_posterior()
    za, x = z[pf.ancestors], res.E[:, 0]
    for k in range(3):
        est = float(np.mean(za == k))
        # importance-sampling error plus (at most multinomial) resampling error
        se = np.hypot(snis_se(w_is, (z == k).astype(float), omega[k]),
                      np.sqrt(omega[k] * (1 - omega[k]) / N))
        assert abs(est - omega[k]) < 4.5 * se, (k, est, omega[k])
    se_mean = np.hypot(snis_se(w_is, E[:, 0], mean), sd / np.sqrt(N))
    assert abs(x.mean() - mean) < 4.5 * se_mean
    assert abs(x.std() - sd) < 4.5 * np.sqrt(2) * se_mean  # std error ~ a few times the mean's


# ---------------------------------------------------------------------------------------
# linear-Gaussian state-space model: the PF tracks the Kalman filter

A_LG = np.array([[0.9, 0.3], [-0.2, 0.8]])
Q_LG = np.diag([0.2, 0.1])
H_LG = np.array([[1.0, 0.0]])  # only the first component observed
R_LG = np.array([[0.5]])
M0, P0 = np.array([1.0, -1.0]), np.eye(2)
T_LG = 20


def lg_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(M0, P0)
    ys = []
    for t in range(T_LG):
        if t:
            x = A_LG @ x + rng.multivariate_normal(np.zeros(2), Q_LG)
        ys.append(H_LG @ x + rng.multivariate_normal(np.zeros(1), R_LG))
    return np.array(ys)


def kalman_filter(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, P = M0.copy(), P0.copy()
    ms, Ps = [], []
    for t, y in enumerate(ys):
        if t:
            m, P = A_LG @ m, A_LG @ P @ A_LG.T + Q_LG
        S = H_LG @ P @ H_LG.T + R_LG
        K = np.linalg.solve(S, H_LG @ P).T
        m, P = m + K @ (y - H_LG @ m), P - K @ H_LG @ P
        ms.append(m)
        Ps.append(P)
    return np.array(ms), np.array(Ps)


def test_pf_tracks_kalman_filter() -> None:
    """Mean and variance of 20 independent PF runs vs the Kalman filter, per time."""
    ys = lg_data()
    kf_m, kf_P = kalman_filter(ys)
    reps, N = 30, 2000
    err_m = np.empty((reps, T_LG, 2))
    err_v = np.empty((reps, T_LG, 2))
    Lq = np.linalg.cholesky(Q_LG)
    for r in range(reps):
        rng = np.random.default_rng(1000 + r)
        pf = ParticleFilter(ess_threshold=0.5, scheme="stratified")
        E = M0 + rng.standard_normal((N, 2)) @ np.linalg.cholesky(P0).T
        n_resampled = 0
        for t in range(T_LG):
            if t:
                E = E @ A_LG.T + rng.standard_normal((N, 2)) @ Lq.T
            obs = Observation(y=ys[t], R=R_LG, h=lambda X: X @ H_LG.T)
            res = pf.analyse(E, obs, rng)
            E = res.E
            w = np.full(N, 1.0 / N) if res.weights is None else res.weights
            m = w @ E
            err_m[r, t] = m - kf_m[t]
            err_v[r, t] = w @ (E - m) ** 2 - np.diag(kf_P[t])
            n_resampled += int(res.info["resampled"])
        assert 0 < n_resampled < T_LG  # weights were both carried and reset
    for err in (err_m, err_v):
        z = err.mean(axis=0) / (err.std(axis=0, ddof=1) / np.sqrt(reps))
        assert np.abs(z).max() < 5.0, np.abs(z).max()
        assert np.sqrt(np.mean(z**2)) < 2.0  # ~1 for an unbiased estimator


# ---------------------------------------------------------------------------------------
# weights carried between analyses, state, regularization, inflation


def test_weights_carried_are_the_product_of_likelihoods() -> None:
    rng = np.random.default_rng(5)
    N = 50
    E = rng.standard_normal((N, 3))
    R = np.diag([1.0, 2.0])
    H = rng.standard_normal((2, 3))
    obs1 = Observation(y=np.array([0.3, -0.2]), R=R, h=lambda X: X @ H.T)
    obs2 = Observation(y=np.array([-0.1, 0.4]), R=R, h=lambda X: X @ H.T)
    pf = ParticleFilter(ess_threshold=1e-6)
    r1 = pf.analyse(E, obs1, rng)
    r2 = pf.analyse(E, obs2, rng)
    assert r1.info["resampled"] == r2.info["resampled"] == 0.0
    ll = gaussian_log_likelihood(E @ H.T, obs1) + gaussian_log_likelihood(E @ H.T, obs2)
    expected = np.exp(ll - ll.max())
    np.testing.assert_allclose(r2.weights, expected / expected.sum(), rtol=1e-12)
    np.testing.assert_allclose(pf.get_state()["log_weights"], np.log(r2.weights), rtol=1e-12)
    # state round trip: a fresh filter given the state continues identically
    pf2 = ParticleFilter(ess_threshold=1e-6)
    pf2.set_state(pf.get_state())
    a = pf.analyse(E, obs1, np.random.default_rng(1))
    b = pf2.analyse(E, obs1, np.random.default_rng(1))
    np.testing.assert_array_equal(a.weights, b.weights)
    with pytest.raises(ValueError, match="reset"):
        pf.analyse(E[:10], obs1, rng)
    pf.reset()
    assert pf.get_state() == {"log_weights": None}
    assert pf.analyse(E[:10], obs1, rng).E.shape == (10, 3)


def test_log_likelihood_estimate_matches_gaussian_evidence() -> None:
    """For a Gaussian prior sample the estimate of log p(y) converges to the exact value."""
    rng = np.random.default_rng(6)
    N = 400_000
    E = rng.standard_normal((N, 1)) * 1.5 + 0.2
    obs = Observation(y=np.array([1.0]), R=np.array([[0.7]]), h=lambda X: X)
    res = ParticleFilter().analyse(E, obs, rng)
    s2 = 1.5**2 + 0.7
    exact = -0.5 * (1.0 - 0.2) ** 2 / s2 - 0.5 * np.log(2 * np.pi * s2)
    lik = np.exp(gaussian_log_likelihood(E, obs) - 0.5 * np.log(2 * np.pi * 0.7))
    se = lik.std() / np.sqrt(N) / lik.mean()  # relative MC error of the mean likelihood
    assert abs(res.info["log_likelihood"] - exact) < 4.5 * se


def test_regularization_and_liu_west_covariances() -> None:
    """Jitter adds bandwidth^2 V; Liu-West keeps the mean and covariance V."""
    rng = np.random.default_rng(7)
    N = 100_000
    C = np.array([[1.0, 0.6], [0.6, 2.0]])
    E = rng.multivariate_normal([1.0, -2.0], C, size=N)
    flat = Observation(y=np.zeros(1), R=np.array([[1e12]]), h=lambda X: X[:, :1])  # ~ no info
    V = np.cov(E.T, bias=True)
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / N)  # of sample covariance entries
    for pf, factor in [(ParticleFilter(ess_threshold=1.0, bandwidth=0.5), 1.25),
                       (ParticleFilter(ess_threshold=1.0, shrinkage=0.8), 1.0),
                       (ParticleFilter(ess_threshold=1.0, scheme="multinomial"), 1.0)]:
        res = pf.analyse(E, flat, rng)
        Ea = res.E
        np.testing.assert_array_less(np.abs(Ea.mean(axis=0) - E.mean(axis=0)),
                                     6 * np.sqrt(factor * np.diag(C) / N))
        np.testing.assert_array_less(np.abs(np.cov(Ea.T) - factor * V), 6 * factor * se)


def test_ensemble_space_jitter_when_d_exceeds_particles() -> None:
    """d > N uses ensemble-space jitter: the jittered particles stay in the ensemble span."""
    rng = np.random.default_rng(8)
    N, d = 6, 40
    E = rng.standard_normal((N, d))
    obs = Observation(y=np.zeros(2), R=np.eye(2), h=lambda X: X[:, :2])
    pf = ParticleFilter(ess_threshold=1.0, bandwidth=0.3)
    res = pf.analyse(E, obs, rng)
    assert np.abs(res.E - E[pf.ancestors]).min() > 0  # every particle was moved
    A = E - E.mean(axis=0)
    coef, *_ = np.linalg.lstsq(A.T, (res.E - E.mean(axis=0)).T, rcond=None)
    np.testing.assert_allclose(A.T @ coef, (res.E - E.mean(axis=0)).T, atol=1e-10)


def test_inflation_scales_anomalies_after_regularization() -> None:
    rng_data = np.random.default_rng(9)
    E = rng_data.standard_normal((300, 2))
    obs = Observation(y=np.array([0.5]), R=np.array([[0.3]]), h=lambda X: X[:, :1])
    for thr in (1.0, 1e-6):  # resampled (equal weights) and weighted output
        a = ParticleFilter(ess_threshold=thr, bandwidth=0.2).analyse(
            E, obs, np.random.default_rng(1))
        b = ParticleFilter(ess_threshold=thr, bandwidth=0.2, inflation=1.1).analyse(
            E, obs, np.random.default_rng(1))
        wa = np.full(300, 1 / 300) if a.weights is None else a.weights
        ma, mb = wa @ a.E, wa @ b.E
        np.testing.assert_allclose(mb, ma, atol=1e-12)
        np.testing.assert_allclose(b.E - mb, 1.1 * (a.E - ma), atol=1e-12)


# ---------------------------------------------------------------------------------------
# tempering


def far_obs_problem(N: int = 2000, seed: int = 3):
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((N, 1))  # prior N(0, 1)
    r = 1e-4
    obs = Observation(y=np.array([30.0]), R=np.array([[r]]), h=lambda X: X)
    return E, obs, r, rng


def test_untempered_collapse_raises() -> None:
    E, obs, _, rng = far_obs_problem()
    with pytest.raises(ValueError, match="temper=True"):
        ParticleFilter().analyse(E, obs, rng)


def test_tempering_recovers_far_observation() -> None:
    """Every untempered weight underflows; tempering moves the particles to the posterior."""
    E, obs, r, rng = far_obs_problem()
    ll = gaussian_log_likelihood(E, obs)
    assert (np.exp(ll) == 0).all()  # every particle's likelihood underflows
    pf = ParticleFilter(temper=True, temper_ess=0.5, bandwidth=0.5, temper_move="broaden")
    res = pf.analyse(E, obs, rng)
    assert np.isfinite(res.E).all() and np.isfinite(list(res.info.values())).all()
    assert res.info["ess_untempered"] == 1.0
    assert res.info["temper_capped"] == 0.0 and res.info["temper_stages"] > 5
    # the last stage starts from equal weights, so its ESS is at least the target
    assert res.info["ess_fraction"] >= 0.5 - 1e-9
    w = np.full(E.shape[0], 1 / E.shape[0]) if res.weights is None else res.weights
    mean = float(w @ res.E[:, 0])
    post_mean, post_sd = 30.0 / (1 + r), np.sqrt(r / (1 + r))
    # jitter can only broaden the effective prior, which moves the mean towards y by at
    # most y r / (1 + r) = 0.3 posterior std; the MC error is ~ post_sd / sqrt(ESS)
    bound = 30.0 * r / (1 + r) + 4.5 * post_sd / np.sqrt(res.info["ess"])
    assert abs(mean - post_mean) < bound
    sd = float(np.sqrt(w @ (res.E[:, 0] - mean) ** 2))
    assert 0.7 < sd / post_sd < 1.4


def test_tempering_with_covariance_preserving_moves() -> None:
    """An observation 4 prior std away with a tiny R: the untempered weights collapse onto
    one particle (ESS = 1); the tempered filter (default "preserve" moves) recovers the
    Gaussian posterior, whose spread the final regularization widens by sqrt(1 + h^2)."""
    rng = np.random.default_rng(1)
    N, h, r, y = 2000, 0.5, 1e-3, 4.0
    E = rng.standard_normal((N, 1))
    obs = Observation(y=np.array([y]), R=np.array([[r]]), h=lambda X: X)
    res = ParticleFilter(temper=True, bandwidth=h).analyse(E, obs, rng)
    assert res.info["ess_untempered"] < 1.5 and res.info["temper_stages"] > 2
    assert res.info["resampled"] == 1.0 and res.info["ess_fraction"] >= 0.5 - 1e-9
    x = res.E[:, 0]
    post_mean, post_sd = y / (1 + r), np.sqrt(r / (1 + r))
    se = np.sqrt(1 + h * h) * post_sd / np.sqrt(res.info["ess"])
    assert abs(x.mean() - post_mean) < 5 * se
    # sample std of ~N draws: relative standard error 1 / sqrt(2 N_eff)
    assert abs(x.std() / (post_sd * np.sqrt(1 + h * h)) - 1) < 5 / np.sqrt(2 * res.info["ess"])


def test_tempering_is_one_stage_when_weights_are_healthy() -> None:
    rng = np.random.default_rng(4)
    E = rng.standard_normal((500, 2))
    obs = Observation(y=np.array([0.2]), R=np.array([[4.0]]), h=lambda X: X[:, :1])
    a = ParticleFilter(temper=True, bandwidth=0.1).analyse(E, obs, np.random.default_rng(2))
    b = ParticleFilter(bandwidth=0.1).analyse(E, obs, np.random.default_rng(2))
    assert a.info["temper_stages"] == 1.0
    np.testing.assert_array_equal(a.E, b.E)
    assert a.info == b.info


def test_temper_stage_cap_is_reported() -> None:
    E, obs, _, rng = far_obs_problem(500)
    res = ParticleFilter(temper=True, bandwidth=0.5, max_temper_stages=3).analyse(E, obs, rng)
    assert res.info["temper_stages"] == 3.0 and res.info["temper_capped"] == 1.0
    assert np.isfinite(res.E).all()


# ---------------------------------------------------------------------------------------
# configuration and bad input


def test_registry_and_bandwidth_helper() -> None:
    assert FILTERS["ParticleFilter"] is ParticleFilter
    assert silverman_bandwidth(1000, 1) == pytest.approx((4 / 3000) ** 0.2)


@pytest.mark.parametrize("kwargs, match", [
    ({"ess_threshold": 0.0}, r"ess_threshold must be in \(0, 1\]"),
    ({"ess_threshold": 1.5}, r"ess_threshold must be in \(0, 1\]"),
    ({"ess_threshold": float("nan")}, "ess_threshold must be finite"),
    ({"bandwidth": -0.1}, "bandwidth must be >= 0"),
    ({"shrinkage": 0.0}, r"shrinkage must be in \(0, 1\]"),
    ({"shrinkage": 1.2}, r"shrinkage must be in \(0, 1\]"),
    ({"shrinkage": 0.9, "bandwidth": 0.1}, "either bandwidth or shrinkage"),
    ({"scheme": "foo"}, "scheme must be one of"),
    ({"temper": "yes"}, "temper must be True or False"),
    ({"temper_ess": 1.0}, r"temper_ess must be in \(0, 1\)"),
    ({"max_temper_stages": 0}, "max_temper_stages must be >= 1"),
    ({"temper_move": "jitter"}, "temper_move must be one of"),
    ({"inflation": 0.9}, "inflation must be >= 1"),
])
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ParticleFilter(**kwargs)


def test_bad_calls() -> None:
    obs = Observation(y=np.zeros(1), R=np.eye(1), h=lambda X: X[:, :1])
    with pytest.raises(ValueError, match="N >= 2"):
        ParticleFilter().analyse(np.zeros((1, 2)), obs, 0)
    with pytest.raises(ValueError, match="rng must be"):
        ParticleFilter().analyse(np.zeros((5, 2)), obs, None)
    pf = ParticleFilter()
    with pytest.raises(ValueError, match="log-weights are -inf"):
        pf.set_state({"log_weights": [None, None]})
    pf.set_state({"log_weights": [None, 0.0, -1.0]})  # None: zero weight (JSON-safe)
    assert pf.get_state()["log_weights"][0] is None
    with pytest.raises(ValueError, match="only 'log_weights'"):
        pf.set_state({"rho": 1.0})
    huge = Observation(y=np.zeros(1), R=np.eye(1), h=lambda X: X[:, :1] * 1e200)
    with pytest.raises(ValueError, match="zero weight"):  # overflow: every particle impossible
        ParticleFilter(temper=True).analyse(np.ones((4, 2)), huge, 0)
