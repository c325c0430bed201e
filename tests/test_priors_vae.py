"""The VAE prior: closed-form ELBO, IWAE bounds, collapse diagnostics, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentda.priors import VAEPrior
from latentda.priors.training import fit


def _linear_vae(n: int = 4, k: int = 2, seed: int = 0) -> VAEPrior:
    torch.manual_seed(seed)
    p = VAEPrior(n, k, {"kind": "linear"}, dtype="float64")
    rng = np.random.default_rng(seed)
    p.set_normalization(rng.normal(size=n), rng.uniform(0.5, 2.0, size=n))
    with torch.no_grad():
        p.dec_logvar.fill_(math.log(0.3))
    return p


def _closed_form_elbo(p: VAEPrior, x: np.ndarray) -> float:
    """ELBO of a VAE with linear encoder and decoder, all expectations analytic."""
    enc, dec = p.encoder, p.decoder
    u = (x - p.shift.numpy()) / p.scale.numpy()
    h = enc.weight.detach().numpy() @ u + enc.bias.detach().numpy()
    mu, var = h[:p.latent_dim], np.exp(np.clip(h[p.latent_dim:], -30, 20))
    W, b = dec.weight.detach().numpy(), dec.bias.detach().numpy()
    s2 = math.exp(float(p.dec_logvar.detach()))
    r = u - W @ mu - b
    e_loglik = -0.5 * (np.sum(r ** 2 + np.einsum("ij,j,ij->i", W, var, W)) / s2
                       + p.state_dim * math.log(2 * math.pi * s2))
    kl = 0.5 * np.sum(mu ** 2 + var - 1.0 - np.log(var))
    return float(e_loglik - kl - np.log(p.scale.numpy()).sum())


def _log_marginal(p: VAEPrior, x: np.ndarray) -> float:
    """Exact log p(x) of the linear-Gaussian VAE: u ~ N(b, W W^T + s2 I)."""
    u = (x - p.shift.numpy()) / p.scale.numpy()
    W, b = p.decoder.weight.detach().numpy(), p.decoder.bias.detach().numpy()
    C = W @ W.T + math.exp(float(p.dec_logvar.detach())) * np.eye(p.state_dim)
    d = u - b
    _, logdet = np.linalg.slogdet(C)
    return float(-0.5 * (d @ np.linalg.solve(C, d) + logdet + p.state_dim * math.log(2 * math.pi))
                 - np.log(p.scale.numpy()).sum())


def test_elbo_matches_closed_form_within_mc_error():
    p = _linear_vae()
    x = np.array([0.3, -1.0, 2.0, 0.5])
    reps = 20000
    draws = p.elbo(np.tile(x, (reps, 1)), n_samples=1, seed=3)  # independent single draws
    se = draws.std(ddof=1) / math.sqrt(reps)
    exact = _closed_form_elbo(p, x)
    assert abs(draws.mean() - exact) < 3.5 * se
    assert se < 0.05 * abs(exact)  # the check has power


def test_iwae_nondecreasing_in_k_and_bounded_by_log_marginal():
    p = _linear_vae(seed=1)
    x = np.array([1.0, 0.2, -0.7, 1.4])
    logp = _log_marginal(p, x)
    reps = 3000
    X = np.tile(x, (reps, 1))
    means, ses = [], []
    for K in (1, 5, 50):
        v = p.iwae(X, K=K, seed=K)
        means.append(v.mean())
        ses.append(v.std(ddof=1) / math.sqrt(reps))
    elbo = p.elbo(X, 1, seed=11)
    # IWAE-1 is the ELBO's estimator
    assert abs(means[0] - elbo.mean()) < 3.5 * math.hypot(ses[0], elbo.std() / math.sqrt(reps))
    for a, b, sa, sb in zip(means[:-1], means[1:], ses[:-1], ses[1:], strict=True):
        assert b > a - 3 * math.hypot(sa, sb)
    assert means[2] > means[0] + 3 * math.hypot(ses[0], ses[2])  # strictly tighter here
    assert means[2] < logp + 3 * ses[2]  # still a lower bound
    assert logp - means[2] < logp - means[0]  # closer to log p(x)


def test_kl_per_dim_is_the_closed_form():
    p = _linear_vae(seed=2)
    X = np.random.default_rng(0).normal(size=(50, 4))
    mu, logvar = (t.detach().numpy() for t in p.posterior_t(torch.as_tensor(X)))
    expect = 0.5 * (mu ** 2 + np.exp(logvar) - 1 - logvar).mean(0)
    np.testing.assert_allclose(p.kl_per_dim(X), expect, rtol=1e-10)


def _subspace_data(N: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    B = np.linalg.qr(rng.normal(size=(6, 2)))[0]
    Z = rng.normal(size=(N, 2)) * np.array([3.0, 1.5])
    return Z @ B.T + np.array([1.0, 2.0, 0, 0, -1, 0]) + 0.01 * rng.normal(size=(N, 6))


def test_training_learns_a_two_dimensional_subspace():
    X = _subspace_data(3000)
    torch.manual_seed(0)
    p = VAEPrior(6, 2, {"kind": "mlp", "hidden": [32]})
    p.set_normalization(X.mean(0), X.std(0))
    res = fit(p, X[:2500], X[2500:], steps=600, lr=1e-2, warmup=50, eval_every=200,
              batch_size=128, progress=False)
    anom = X[2500:] - X[2500:].mean(0)
    rel = np.linalg.norm(X[2500:] - p.reconstruct(X[2500:])) / np.linalg.norm(anom)
    assert rel < 0.1
    assert res.best_metrics["recon_rmse"] == pytest.approx(
        np.sqrt(np.mean((X[2500:] - p.reconstruct(X[2500:])) ** 2)), rel=1e-5)
    assert p.active_units(X) == 2


def test_collapsed_vae_is_flagged_and_its_posterior_is_its_prior():
    """A decoder that ignores z: training drives q(z|x) to the prior, KL -> 0, no active units."""
    X = _subspace_data(2000, seed=1)
    torch.manual_seed(1)
    p = VAEPrior(6, 3, {"kind": "mlp", "hidden": [16]})
    p.set_normalization(X.mean(0), X.std(0))
    with torch.no_grad():
        p.decoder[0].weight.zero_()  # the first layer sees z: zero it and freeze it
    p.decoder[0].weight.requires_grad_(False)
    fit(p, X[:1800], X[1800:], steps=500, lr=1e-2, warmup=50, eval_every=250,
        progress=False)
    assert p.active_units(X) == 0
    assert p.kl_per_dim(X).max() < 0.02
    mu, logvar = (t.detach().numpy() for t in p.posterior_t(torch.as_tensor(X[:200],
                                                                               dtype=p.dtype)))
    assert np.abs(mu).max() < 0.2 and np.abs(logvar).max() < 0.3


@pytest.mark.parametrize("kw, field", [({"beta": 0.0}, "beta"), ({"decoder_var": "full"},
                                                                   "decoder_var"),
                                       ({"arch": {"kind": "resnet"}}, "arch.kind")])
def test_bad_options_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        VAEPrior(4, 2, **kw)


def test_time_cap_evaluates_before_stopping():
    X = _subspace_data(400)
    p = VAEPrior(6, 2, {"kind": "mlp", "hidden": [8]})
    p.set_normalization(X.mean(0), X.std(0))
    res = fit(p, X[:300], X[300:], steps=1000, eval_every=500, max_minutes=1e-9,
              progress=False)
    assert res.stopped == "time" and res.steps == 1
    assert res.best_step == 1 and len(res.history) == 1  # the step taken is kept


def test_saturated_log_variance_still_gets_a_gradient():
    """The encoder log-variance is bounded to [-30, 20] with the gradient of the unbounded
    value: one pushed to 50 (where a hard clamp has no gradient and the KL is stuck at
    0.5 e^20) is pulled back down by the loss."""
    p = _linear_vae()
    with torch.no_grad():
        p.encoder.bias[p.latent_dim:] = 50.0
    u = torch.zeros(3, p.state_dim, dtype=torch.float64)
    _, logvar = p._posterior_n(u)
    assert float(logvar.detach().max()) == 20.0         # the value stays bounded
    loss, _ = p.training_loss(u)
    loss.backward()
    g = p.encoder.bias.grad[p.latent_dim:]
    assert bool((g > 1e6).all())                        # descent lowers the log-variance
