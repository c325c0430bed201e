"""Conditional normalizing flow / amortized neural posterior (NPE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentda.inference.npe import (
    ConditionalAffineCoupling,
    ConditionalFlow,
    NeuralPosterior,
    NeuralPosteriorEnsemble,
)

torch.set_num_threads(1)

A = np.array([[1.0, -0.5], [0.3, 0.8]])
L = np.array([[0.5, 0.0], [0.3, 0.4]])
SIGMA = L @ L.T


def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Random weights everywhere (the zero-initialized output layers start as the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.fixture(scope="module")
def trained():
    """theta | s ~ N(A s, Sigma) with s ~ N(0, I): a short training."""
    rng = np.random.default_rng(0)
    n = 4000
    s = rng.standard_normal((n, 2))
    theta = s @ A.T + rng.standard_normal((n, 2)) @ L.T
    q = NeuralPosterior(2, 2, squash_inputs=False, n_layers=2, hidden=32, embed_dim=16)
    hist = q.fit(theta, s, batch_size=200, lr=3e-3, max_epochs=20, patience=6, seed=0)
    return q, hist


def test_flow_inverse_and_log_det_match_autograd():
    torch.manual_seed(0)
    flow = ConditionalFlow(3, 2, n_layers=3, hidden=16, embed_dim=8).double()
    _perturb(flow)
    x = torch.randn(5, 3, dtype=torch.float64)
    s = torch.randn(5, 2, dtype=torch.float64)
    h = flow.context(s)
    # inverse(forward(x)) = x for each coupling
    for layer in flow.couplings:
        y, _ = layer(x, h)
        torch.testing.assert_close(layer.inverse(y, h), x)
    # log q from the change of variables equals log N(T(x)) + log|det dT/dx| by autograd
    lq = flow.log_prob(x, s)
    for i in range(5):
        def T(xi, i=i):
            z, _ = flow.first(xi[None], h[i:i + 1])
            for layer in flow.couplings:
                z, _ = layer(z, h[i:i + 1])
            return z[0]
        J = torch.autograd.functional.jacobian(T, x[i])
        z = T(x[i])
        ref = (torch.slogdet(J)[1] - 0.5 * (z @ z) - 1.5 * math.log(2 * math.pi))
        torch.testing.assert_close(lq[i], ref)


def test_coupling_mask_must_leave_something_to_transform():
    with pytest.raises(ValueError, match="mask"):
        ConditionalAffineCoupling([True, True], 4, 8)


def test_learns_a_conditional_gaussian(trained):
    q, hist = trained
    assert hist["best_epoch"] >= 1
    assert hist["val_loss"][hist["best_epoch"]] < hist["val_loss"][0]
    rng = np.random.default_rng(1)
    s = rng.standard_normal((300, 2))
    theta = s @ A.T + rng.standard_normal((300, 2)) @ L.T
    r = np.linalg.solve(L, (theta - s @ A.T).T)
    lp = -0.5 * np.sum(r * r, axis=0) - math.log(2 * math.pi) - np.log(np.linalg.det(L))
    kl = float(np.mean(lp - q.log_prob(theta, s)))  # estimates E_s KL(p || q) >= 0
    assert kl < 0.06
    sd = np.sqrt(np.diag(SIGMA))
    for j, s0 in enumerate(([0.0, 0.0], [1.0, -1.0], [-1.5, 0.5])):
        x = q.sample(np.array(s0), 4000, seed=j)
        assert x.shape == (4000, 2)
        np.testing.assert_array_less(np.abs(x.mean(axis=0) - A @ s0) / sd, 0.15)
        np.testing.assert_allclose(np.cov(x.T), SIGMA, rtol=0.2, atol=0.02)


def test_several_contexts_and_seeds(trained):
    q, _ = trained
    S = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    x = q.sample(S, 7, seed=3)
    assert x.shape == (3, 7, 2)
    np.testing.assert_array_equal(q.sample(S, 7, seed=3), x)
    assert not np.array_equal(q.sample(S, 7, seed=4), x)


def test_bounded_density_normalizes_on_the_box_and_samples_stay_inside():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((200, 1))
    theta = 0.5 + 0.2 * np.tanh(s) + 0.05 * rng.standard_normal((200, 1))
    q = NeuralPosterior(1, 1, bounds=([0.0], [1.0]), hidden=16, embed_dim=4)
    q.fit(theta, s, max_epochs=1)
    _perturb(q.flow, seed=2, scale=0.2)
    grid = np.linspace(0.0, 1.0, 20001)[1:-1, None]
    for s0 in (-1.0, 0.7):
        dens = np.exp(q.log_prob(grid, np.array([s0])))
        assert abs(np.trapezoid(dens, grid[:, 0]) - 1.0) < 2e-3
    x = q.sample(np.array([0.3]), 2000, seed=0)
    assert np.all((x > 0.0) & (x < 1.0))
    assert q.log_prob(np.array([[1.5]]), np.array([0.3]))[0] == -np.inf


def test_save_and_load_round_trip(trained, tmp_path):
    q, _ = trained
    path = q.save(tmp_path / "npe.pt")
    q2 = NeuralPosterior.load(path)
    th = np.array([[0.1, 0.2], [1.0, -1.0]])
    s = np.array([[0.5, 0.5], [0.0, 1.0]])
    np.testing.assert_allclose(q2.log_prob(th, s), q.log_prob(th, s))
    np.testing.assert_array_equal(q2.sample(s[0], 5, seed=1), q.sample(s[0], 5, seed=1))


def test_ensemble_is_the_equal_weight_mixture(trained, tmp_path):
    q, _ = trained
    q2 = NeuralPosterior.from_state_dict(q.state_dict())
    _perturb(q2.flow, seed=3, scale=0.05)  # a second, different member
    ens = NeuralPosteriorEnsemble([q, q2])
    th = np.array([[0.1, 0.2], [1.0, -1.0], [-0.5, 0.3]])
    s = np.array([0.5, -0.2])
    expected = np.log(0.5 * np.exp(q.log_prob(th, s)) + 0.5 * np.exp(q2.log_prob(th, s)))
    np.testing.assert_allclose(ens.log_prob(th, s), expected, rtol=1e-12, atol=1e-12)
    # a one-member ensemble is the member itself
    np.testing.assert_allclose(NeuralPosteriorEnsemble([q]).log_prob(th, s), q.log_prob(th, s))
    # stratified draws: exactly n // K from each member, shuffled; mean = mixture mean
    x = ens.sample(s, 4001, seed=0)
    assert x.shape == (4001, 2)
    m1 = q.sample(s, 20000, seed=1).mean(axis=0)
    m2 = q2.sample(s, 20000, seed=2).mean(axis=0)
    sd = np.sqrt(np.diag(SIGMA))
    np.testing.assert_array_less(np.abs(x.mean(axis=0) - 0.5 * (m1 + m2)), 5 * sd / 60)
    xs = ens.sample(np.stack([s, -s]), 10, seed=0)
    assert xs.shape == (2, 10, 2)
    np.testing.assert_array_equal(ens.sample(s, 7, seed=3), ens.sample(s, 7, seed=3))
    ens2 = NeuralPosteriorEnsemble.load(ens.save(tmp_path / "ens.pt"))
    np.testing.assert_allclose(ens2.log_prob(th, s), ens.log_prob(th, s))
    with pytest.raises(ValueError, match="members"):
        NeuralPosteriorEnsemble([])
    with pytest.raises(ValueError, match="not trained"):
        NeuralPosteriorEnsemble([NeuralPosterior(2, 2)])
    with pytest.raises(ValueError, match="share theta_dim"):
        other = NeuralPosterior(3, 2, hidden=8, embed_dim=4)
        other.fit(np.random.default_rng(0).standard_normal((40, 3)), np.zeros((40, 2)),
                  max_epochs=1)
        NeuralPosteriorEnsemble([q, other])


@pytest.mark.parametrize("call, field", [
    (lambda: NeuralPosterior(0, 2), "theta_dim"),
    (lambda: NeuralPosterior(2, 2, bounds=([0.0, 0.0], [1.0, 0.0])), "bounds"),
    (lambda: NeuralPosterior(2, 2).sample(np.zeros(2), 3), "not trained"),
    (lambda: NeuralPosterior(2, 2).fit(np.zeros((10, 2)), np.zeros((9, 2))), "same number"),
    (lambda: NeuralPosterior(2, 2).fit(np.zeros((10, 3)), np.zeros((10, 2))), "theta"),
    (lambda: NeuralPosterior(2, 2).fit(np.zeros((10, 2)), np.zeros((10, 2)),
                                       input_noise=[1.0]), "input_noise"),
    (lambda: NeuralPosterior(2, 2).fit(np.zeros((10, 2)), np.zeros((10, 2)),
                                       validation_fraction=0.9), "validation_fraction"),
    (lambda: NeuralPosterior(1, 1, bounds=([0.0], [1.0])).fit(np.full((10, 1), 2.0),
                                                             np.zeros((10, 1))), "bounds"),
])
def test_bad_input_is_refused(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_quantile_transform_gives_normal_scores_and_is_monotone():
    from latentda.inference.npe import _normal_scores, _quantile_knots

    rng = np.random.default_rng(3)
    # a skewed, heavy-tailed column and one with ties (half its mass on one value)
    c = np.column_stack([rng.lognormal(0.0, 1.5, 200_000),
                         np.where(rng.random(200_000) < 0.5, 0.0, rng.standard_normal(200_000))])
    xs, zs = _quantile_knots(c, 71)
    assert all(np.all(np.diff(x) > 0) for x in xs)
    # lognormal: F^-1(Phi(z)) = exp(1.5 z) must map back to z (binomial error of the
    # sample quantiles is about 0.003-0.02 in z over [-3, 3])
    z = np.linspace(-3.0, 3.0, 25)
    out = _normal_scores(torch.as_tensor(np.column_stack([np.exp(1.5 * z), z])), xs, zs)
    np.testing.assert_allclose(out[:, 0].numpy(), z, atol=0.05)
    # strictly increasing everywhere, tails extrapolated linearly with the end segments
    v = torch.as_tensor(np.column_stack([np.linspace(-5.0, 1e3, 5001),
                                         np.linspace(-9.0, 9.0, 5001)]))
    o = _normal_scores(v, xs, zs).numpy()
    assert np.all(np.diff(o, axis=0) > 0)
    far = _normal_scores(torch.as_tensor(np.array([[2e3, 20.0], [3e3, 30.0]])), xs, zs).numpy()
    slope = (zs[0][-1] - zs[0][-2]) / (xs[0][-1] - xs[0][-2])
    np.testing.assert_allclose(far[1, 0] - far[0, 0], 1e3 * slope, rtol=1e-9)


def test_quantile_inputs_learn_a_heavy_tailed_summary_and_round_trip(tmp_path):
    """s = exp(3 (theta + e)): theta | s ~ N(log(s) / 3 * v / (v + w), v w / (v + w))."""
    rng = np.random.default_rng(0)
    n, v, w = 4000, 1.0, 0.25
    theta = np.sqrt(v) * rng.standard_normal((n, 1))
    s = np.exp(3.0 * (theta + np.sqrt(w) * rng.standard_normal((n, 1))))
    q = NeuralPosterior(1, 1, input_transform="quantile", n_layers=2, hidden=32,
                        embed_dim=8)
    q.fit(theta, s, batch_size=200, lr=3e-3, max_epochs=20, patience=6, seed=0)
    assert q.config["input_transform"] == "quantile"
    sd = math.sqrt(v * w / (v + w))
    for j, y in enumerate((-1.0, 0.0, 1.2)):
        x = q.sample(np.array([math.exp(3.0 * y)]), 4000, seed=j)
        assert abs(x.mean() - y * v / (v + w)) / sd < 0.15
        assert abs(x.std() / sd - 1.0) < 0.15
    q2 = NeuralPosterior.load(q.save(tmp_path / "q.pt"))
    th, ss = np.array([[0.3], [-0.5]]), np.array([[2.0], [0.01]])
    np.testing.assert_allclose(q2.log_prob(th, ss), q.log_prob(th, ss))


def test_input_transform_must_be_known():
    with pytest.raises(ValueError, match="input_transform"):
        NeuralPosterior(1, 1, input_transform="rank")
