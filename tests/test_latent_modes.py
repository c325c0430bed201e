"""LatentSpace modes (manifold, noisy_manifold, hybrid) against exact linear algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentda.filters import ETKF, Background, EnKF, HybridETKF, Observation, ParticleFilter
from latentda.priors import LinearGaussianPrior
from latentda.spaces import LatentSpace, StateSpace


def _prior(n: int, k: int, seed: int = 0, invertible: bool = False) -> LinearGaussianPrior:
    rng = np.random.default_rng(seed)
    p = LinearGaussianPrior(n, k, 0.0, "float64")
    W = rng.normal(size=(n, k))
    if invertible:
        W += 3 * np.eye(n)
    with torch.no_grad():
        p.W.copy_(torch.as_tensor(W))
        p.b.copy_(torch.as_tensor(rng.normal(size=n)))
        L = rng.normal(size=(n, n)) * 0.2
        p.res_cov.copy_(torch.as_tensor(L @ L.T + 0.05 * np.eye(n)))
    return p


def _obs(rng, H, R):
    return Observation(y=rng.normal(size=H.shape[0]), R=R, h=lambda X: X @ H.T)


def test_noisy_manifold_encode_decode_is_exact():
    prior = _prior(7, 3)
    space = LatentSpace(prior, "noisy_manifold")
    X = np.random.default_rng(0).normal(size=(5, 7)) * 3
    V = space.encode(X)
    assert V.shape == (5, 3 + 7) and space.dim == 10
    np.testing.assert_allclose(space.decode(V), X, rtol=0, atol=1e-12)
    # the manifold mode drops the residual: decode(encode(x)) is the projection
    m = LatentSpace(prior, "manifold")
    assert np.abs(m.decode(m.encode(X)) - X).max() > 0.1


def test_noisy_manifold_hybrid_equals_state_hybrid_with_the_mapped_background():
    """Linear prior x = W z + b + eta: the [z, eta] analysis is the state analysis with
    B = s W W^T + gamma Sigma_eta (same transform, same mean gain)."""
    rng = np.random.default_rng(1)
    n, k, N = 8, 3, 10
    prior = _prior(n, k, seed=2)
    s, gamma, beta = 0.3, 0.5, 0.4
    space = LatentSpace(prior, "noisy_manifold", static_var=s, residual_scale=gamma)
    E = rng.normal(size=(N, n)) * 2
    H = rng.normal(size=(5, n))
    obs = _obs(rng, H, np.diag(rng.uniform(0.5, 1.5, 5)))
    filt = HybridETKF(beta=beta, inflation=1.03)
    lat = space.assimilate(filt, E, obs, None)
    W = prior.W.numpy()
    Sig = prior.residual_cov
    B = s * W @ W.T + gamma * Sig
    ref = StateSpace(n, background=Background.from_covariance(B)).assimilate(filt, E, obs, None)
    np.testing.assert_allclose(lat.E, ref.E, rtol=1e-9, atol=1e-9)
    assert lat.latent_analysis.shape == (N, k)
    np.testing.assert_allclose(lat.HE, E @ H.T, atol=1e-12)


def test_hybrid_mode_splits_the_observation_precision_exactly():
    """Invertible linear prior, ETKF in both steps: y assimilated with R/f then R/(1-f)
    gives the single-step ETKF posterior (mean and covariance)."""
    rng = np.random.default_rng(3)
    n, N = 5, 30
    prior = _prior(n, n, seed=4, invertible=True)
    H = rng.normal(size=(3, n))
    obs = _obs(rng, H, np.diag([0.4, 0.8, 1.1]))
    E = rng.normal(size=(N, n)) * 1.5 + 2
    space = LatentSpace(prior, "hybrid", obs_fraction=0.3, state_filter=ETKF())
    out = space.assimilate(ETKF(), E, obs, None)
    ref = ETKF().analyse(E, obs, None).E
    np.testing.assert_allclose(out.E.mean(0), ref.mean(0), atol=1e-9)
    np.testing.assert_allclose(np.cov(out.E.T), np.cov(ref.T), atol=1e-9)


def test_manifold_mode_with_a_background_uses_s_identity():
    prior = _prior(6, 2)
    space = LatentSpace(prior, "manifold", static_var=0.2)
    np.testing.assert_allclose(space.background.sqrt @ space.background.sqrt.T,
                               0.2 * np.eye(2), atol=1e-14)
    rng = np.random.default_rng(5)
    E = rng.normal(size=(6, 6))
    H = np.eye(6)[:4]
    obs = _obs(rng, H, np.eye(4))
    out = space.assimilate(HybridETKF(beta=0.5), E, obs, None)
    W, b = prior.W.numpy(), prior.b.numpy()
    # every analysis state lies on the range of G
    resid = out.E - b
    proj = resid @ np.linalg.pinv(W).T @ W.T
    np.testing.assert_allclose(resid, proj, atol=1e-9)


def test_bad_settings_name_the_field():
    prior = _prior(6, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        LatentSpace(prior, "latent")
    with pytest.raises(ValueError, match="state_filter"):
        LatentSpace(prior, "hybrid")
    with pytest.raises(ValueError, match="obs_fraction"):
        LatentSpace(prior, "hybrid", obs_fraction=1.0, state_filter=ETKF())
    with pytest.raises(ValueError, match="static_var"):
        LatentSpace(prior, "manifold", static_var=-1.0)
    with pytest.raises(ValueError, match="background"):
        StateSpace(6, background=Background(np.eye(5)))


def test_noisy_manifold_needs_a_full_residual_covariance():
    class DiagPrior:
        encode = decode = None
        latent_dim, state_dim = 2, 6
        residual_cov = np.ones(6)

    with pytest.raises(ValueError, match="full residual covariance"):
        LatentSpace(DiagPrior(), "noisy_manifold", static_var=0.1)


@pytest.mark.parametrize("make", [lambda: EnKF(inflation=1.02),
                                  lambda: ParticleFilter(ess_threshold=1.0)],
                         ids=["stochastic EnKF", "particle filter"])
def test_noisy_manifold_of_a_linear_prior_is_an_exact_reparametrization(make):
    """x = W z + b + eta is affine in [z, eta]: any filter whose analysis is a
    combination of members (EnKF with the same perturbed observations, the particle
    filter with the same resampling) gives the state-space analysis."""
    rng = np.random.default_rng(6)
    n, k, N = 8, 3, 12
    prior = _prior(n, k, seed=7)
    E = rng.normal(size=(N, n)) * 2
    H = rng.normal(size=(5, n))
    obs = _obs(rng, H, np.eye(5))
    lat = LatentSpace(prior, "noisy_manifold").assimilate(make(), E, obs,
                                                          np.random.default_rng(1))
    ref = StateSpace(n).assimilate(make(), E, obs, np.random.default_rng(1))
    np.testing.assert_allclose(lat.E, ref.E, rtol=1e-9, atol=1e-9)

