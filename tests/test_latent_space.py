"""LatentSpace: the same filters on codes of a generative prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentda.cycle import Cycle
from latentda.dynamics import Lorenz96
from latentda.filters import ETKF, Observation
from latentda.obs_stream import ObservationStream
from latentda.observations import GaussianNoise, Subset
from latentda.priors import LinearGaussianPrior
from latentda.spaces import LatentSpace, StateSpace
from latentda.twin import twin_experiment


def _full_rank_prior(n: int, seed: int = 0) -> LinearGaussianPrior:
    """k = n, sigma2 = 0, float64: G is an exact affine bijection."""
    rng = np.random.default_rng(seed)
    p = LinearGaussianPrior(n, n, 0.0, "float64")
    with torch.no_grad():
        p.W.copy_(torch.as_tensor(rng.normal(size=(n, n)) + 3 * np.eye(n)))
        p.b.copy_(torch.as_tensor(rng.normal(size=n)))
    return p


def test_latent_etkf_equals_state_etkf_for_an_invertible_linear_prior():
    rng = np.random.default_rng(1)
    n, N = 6, 12
    prior = _full_rank_prior(n)
    space = LatentSpace(prior)
    E = rng.normal(size=(N, n)) * 2 + 1
    H = rng.normal(size=(4, n))
    obs = Observation(y=rng.normal(size=4), R=0.5 * np.eye(4), h=lambda X: X @ H.T)
    lat = Observation(y=obs.y, R=obs.R, h=space.observe(obs.h))
    f = ETKF(inflation=1.0)
    Xa_state = f.analyse(E, obs, None).E
    Xa_latent = space.decode(f.analyse(space.encode(E), lat, None).E)
    np.testing.assert_allclose(Xa_latent, Xa_state, rtol=1e-10, atol=1e-10)


def test_latent_etkf_matches_the_kalman_posterior_for_large_ensembles():
    """Linear-Gaussian prior and H: the latent ETKF mean/cov -> the exact posterior."""
    rng = np.random.default_rng(2)
    n, N = 4, 20000
    prior = _full_rank_prior(n, seed=3)
    W = prior.W.numpy()
    b = prior.b.numpy()
    B = W @ W.T  # x = W z + b, z ~ N(0, I)
    H = np.array([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]])
    R = np.diag([0.3, 0.6])
    y = np.array([0.5, -1.0])
    Z = rng.standard_normal((N, n))
    Z = (Z - Z.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(Z.T))).T  # exact moments
    space = LatentSpace(prior)
    obs = Observation(y=y, R=R, h=space.observe(lambda X: X @ H.T))
    Xa = space.decode(ETKF().analyse(Z, obs, None).E)
    K = B @ H.T @ np.linalg.inv(H @ B @ H.T + R)
    mean = b + K @ (y - H @ b)
    cov = B - K @ H @ B
    np.testing.assert_allclose(Xa.mean(0), mean, atol=1e-8)
    np.testing.assert_allclose(np.cov(Xa.T), cov, atol=1e-8)


def test_cycle_in_latent_space_runs_and_equals_state_space_cycle():
    model = Lorenz96(n=8)
    H = Subset(8, [0, 2, 4, 6])
    twin = twin_experiment(model, H, GaussianNoise.scalar(1.0, 4), n_cycles=10, seed=1)
    stream = ObservationStream.from_twin(twin, H)
    E0 = model.climatology(10, np.random.default_rng(0))
    prior = _full_rank_prior(8, seed=5)
    a = Cycle(model, ETKF(inflation=1.02), H, E0, space=LatentSpace(prior), seed=1).run(stream)
    s = Cycle(model, ETKF(inflation=1.02), H, E0, space=StateSpace(8), seed=1).run(stream)
    np.testing.assert_allclose(a["rmse_analysis"], s["rmse_analysis"], rtol=1e-8)


def test_bad_prior_is_refused():
    with pytest.raises(ValueError, match="prior must provide encode"):
        LatentSpace(object())
