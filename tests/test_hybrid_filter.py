"""HybridETKF: the blended-covariance mean update against closed-form Kalman algebra."""

import numpy as np
import pytest

from latentda.filters import ETKF, Background, HybridETKF, Observation


def _setup(seed=0, N=8, n=6, m=4):
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((N, n)) + 1.0
    H = rng.standard_normal((m, n))
    L = rng.standard_normal((n, n)) * 0.3
    B = L @ L.T + 0.1 * np.eye(n)
    R = np.diag(rng.uniform(0.5, 2.0, m))
    y = rng.standard_normal(m)
    return E, H, B, R, y


def _kalman_mean(E, H, P, R, y):
    xbar = E.mean(axis=0)
    HE = E @ H.T
    K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
    return xbar + K @ (y - HE.mean(axis=0))


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("m", [4, 30])  # both the ensemble-space and observation-space forms
def test_mean_is_the_hybrid_kalman_mean(beta, m):
    E, H, B, R, y = _setup(m=m, n=6 if m == 4 else 40)
    obs = Observation(y=y, R=R, h=lambda X: X @ H.T)
    res = HybridETKF(beta=beta).analyse(E, obs, None,
                                        background=Background.from_covariance(B))
    A = E - E.mean(axis=0)
    P = (1 - beta) * A.T @ A / (E.shape[0] - 1) + beta * B
    np.testing.assert_allclose(res.E.mean(axis=0), _kalman_mean(E, H, P, R, y),
                               rtol=1e-10, atol=1e-10)


def test_anomalies_are_the_etkf_anomalies_and_beta0_is_the_etkf():
    E, H, B, R, y = _setup()
    obs = Observation(y=y, R=R, h=lambda X: X @ H.T)
    bg = Background.from_covariance(B)
    ref = ETKF(inflation=1.1).analyse(E, obs, None).E
    h0 = HybridETKF(beta=0.0, inflation=1.1).analyse(E, obs, None, background=bg).E
    np.testing.assert_allclose(h0, ref, atol=1e-12)
    h1 = HybridETKF(beta=0.7, inflation=1.1).analyse(E, obs, None, background=bg).E
    np.testing.assert_allclose(h1 - h1.mean(0), ref - ref.mean(0), atol=1e-12)


def test_low_rank_background_and_from_covariance():
    rng = np.random.default_rng(3)
    S = rng.standard_normal((5, 2))
    bg = Background.from_covariance(S @ S.T, scale=2.0)
    assert bg.sqrt.shape == (5, 2)
    np.testing.assert_allclose(bg.sqrt @ bg.sqrt.T, 2.0 * S @ S.T, atol=1e-12)
    d = Background.from_covariance(np.array([1.0, 4.0]))
    np.testing.assert_allclose(d.sqrt, np.diag([1.0, 2.0]))


def test_bad_input_names_the_field():
    E, H, B, R, y = _setup()
    obs = Observation(y=y, R=R, h=lambda X: X @ H.T)
    with pytest.raises(ValueError, match="background"):
        HybridETKF().analyse(E, obs, None)
    with pytest.raises(ValueError, match="one row per variable"):
        HybridETKF().analyse(E, obs, None, background=Background(np.ones((3, 2))))
    with pytest.raises(ValueError, match="beta"):
        HybridETKF(beta=1.5)
    with pytest.raises(ValueError, match="background.sqrt"):
        Background(np.ones(3))
