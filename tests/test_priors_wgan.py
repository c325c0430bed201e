"""WGAN-GP prior: gradient penalty, projection encoder, critic, training, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from torch import nn

from latentda.priors import load, save, training
from latentda.priors.wgan import WGANPrior, gradient_penalty, sliced_wasserstein


def _unit(n: int, seed: int) -> torch.Tensor:
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w / w.norm()


# ------------------------------------------------------------------ gradient penalty
def test_gradient_penalty_vanishes_exactly_for_a_unit_linear_critic():
    n, B = 7, 64
    g = torch.Generator().manual_seed(0)
    real = torch.randn(B, n, generator=g, dtype=torch.float64)
    fake = 3.0 * torch.randn(B, n, generator=g, dtype=torch.float64) + 1.0
    critic = nn.Linear(n, 1).double()
    w = _unit(n, 1)
    for c in (1.0, 0.5, 2.0, 3.0):  # gradient norm c everywhere: penalty (c - 1)^2
        with torch.no_grad():
            critic.weight.copy_(c * w[None])
        gp = gradient_penalty(critic, real, fake)
        assert float(gp.detach()) == pytest.approx((c - 1.0) ** 2, abs=1e-14)
    # differentiable in the critic's parameters: d/dc (c-1)^2 = 2 (c - 1) along w
    gp.backward()
    np.testing.assert_allclose(critic.weight.grad[0].numpy(), (2.0 * (3.0 - 1.0) * w).numpy(),
                               atol=1e-12)


def test_gradient_penalty_is_taken_at_the_interpolates():
    # f(u) = ||u||^2 / 2 has gradient u: the penalty is mean (||u_hat|| - 1)^2
    class Quad(nn.Module):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return 0.5 * (u * u).sum(1, keepdim=True)

    g = torch.Generator().manual_seed(2)
    real = torch.randn(20, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(20, 4, generator=g, dtype=torch.float64)
    alpha = torch.rand(20, 1, generator=g, dtype=torch.float64)
    u = alpha * real + (1 - alpha) * fake
    want = ((u.norm(dim=1) - 1) ** 2).mean()
    got = gradient_penalty(Quad(), real, fake, alpha).detach()
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    mlp = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 1)).double()
    assert float(gradient_penalty(mlp, real, fake).detach()) > 1e-3  # a generic critic is penalized
    with pytest.raises(ValueError, match="real and fake"):
        gradient_penalty(mlp, real, fake[:5])


def test_sliced_wasserstein_in_one_dimension_is_the_exact_w1():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 1))
    B = 2.0 * rng.standard_normal((300, 1)) + 0.5
    assert sliced_wasserstein(A, B) == pytest.approx(wasserstein_distance(A[:, 0], B[:, 0]),
                                                     rel=1e-12)
    assert sliced_wasserstein(A, A + 0.7) == pytest.approx(0.7, rel=1e-12)
    assert sliced_wasserstein(A, A) == 0.0


# ------------------------------------------------------------------ projection encoder
def _linear_prior(lam: float, steps: int = 400, restarts: int = 1) -> WGANPrior:
    n, k = 6, 3
    p = WGANPrior(n, k, arch={"kind": "linear"}, project_lam=lam, project_steps=steps,
                  project_restarts=restarts, dtype="float64")
    Q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(3),
                                       dtype=torch.float64))
    with torch.no_grad():
        p.generator.weight.copy_(Q)
        p.generator.bias.copy_(torch.linspace(-1, 1, n, dtype=torch.float64))
    p.set_normalization(np.linspace(-2.0, 3.0, n), np.linspace(0.5, 2.0, n))
    return p


def test_projection_inverts_an_orthonormal_linear_generator():
    p = _linear_prior(lam=1e-10)
    Z = np.random.default_rng(4).standard_normal((9, 3))
    X = p.decode(Z)
    np.testing.assert_allclose(p.encode(X), Z, atol=1e-6)              # encode o decode = id
    np.testing.assert_allclose(p.decode(p.encode(X)), X, atol=1e-6)    # G(E(G(z))) = G(z)


def test_projection_is_the_ridge_solution_off_the_range():
    # minimiser of ||u - Qz - b||^2 + lam ||z||^2 with orthonormal Q: Q^T (u - b) / (1 + lam)
    lam = 0.5
    p = _linear_prior(lam=lam)
    X = np.random.default_rng(5).standard_normal((11, 6)) * 2.0
    U = (X - p.shift.numpy()) / p.scale.numpy()
    Q, b = p.generator.weight.detach().numpy(), p.generator.bias.detach().numpy()
    np.testing.assert_allclose(p.encode(X), (U - b) @ Q / (1.0 + lam), atol=1e-6)
    # each member's code depends on its own state only
    np.testing.assert_allclose(p.encode(X[3:4]), p.encode(X)[3:4], atol=1e-10)


def test_restarts_never_do_worse_and_are_deterministic():
    torch.manual_seed(0)
    p = WGANPrior(5, 2, arch={"kind": "mlp", "hidden": [32]}, project_steps=60,
                  project_restarts=1, dtype="float64")
    with torch.no_grad():  # a wiggly generator whose projection has local minima
        for m in p.generator.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)
    x = torch.as_tensor(p.sample(40, seed=1) + 0.3 * np.random.default_rng(6).standard_normal(
        (40, 5)))
    _, one = p.projection_t(x, restarts=1)
    p.project_restarts = 6
    z6, six = p.projection_t(x)
    assert torch.all(six <= one + 1e-9)
    assert torch.any(six < one - 1e-3)          # some member escapes a worse local minimum
    torch.testing.assert_close(p.projection_t(x)[0], z6, rtol=0, atol=0)


# ------------------------------------------------------------------ critic
def test_critic_values_and_gradients_in_physical_units():
    n = 4
    p = WGANPrior(n, 2, arch={"kind": "linear"}, dtype="float64")
    w = _unit(n, 7)
    with torch.no_grad():
        p.critic_net.weight.copy_(w[None])
        p.critic_net.bias.fill_(0.25)
    shift, scale = np.array([1.0, -1.0, 0.0, 2.0]), np.array([2.0, 0.5, 1.0, 4.0])
    p.set_normalization(shift, scale)
    X = np.random.default_rng(8).standard_normal((5, n))
    d = p.critic(X)
    assert d.shape == (5,) and d.dtype == np.float64
    np.testing.assert_allclose(d, ((X - shift) / scale) @ w.numpy() + 0.25, rtol=1e-12)
    vals, grads = p.critic_grad(X)
    np.testing.assert_allclose(vals, d, rtol=1e-12)
    np.testing.assert_allclose(grads, np.broadcast_to(w.numpy() / scale, (5, n)), rtol=1e-12)


def test_conv_critic_is_differentiable_and_matches_finite_differences():
    torch.manual_seed(1)
    p = WGANPrior(8, 3, arch={"kind": "conv1d", "channels": 4, "blocks": 1, "kernel": 3},
                  dtype="float64")
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    d = p.critic_t(x)
    assert d.shape == (3,)
    (g,) = torch.autograd.grad(d.sum(), x)
    h = 1e-6
    for j in (0, 5):
        e = torch.zeros_like(x)
        e[:, j] = h
        with torch.no_grad():
            fd = (p.critic_t(x + e) - p.critic_t(x - e)) / (2 * h)
        np.testing.assert_allclose(g[:, j].numpy(), fd.numpy(), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ training
def test_train_step_runs_n_critic_critic_updates_per_generator_update():
    p = WGANPrior(3, 2, arch={"kind": "mlp", "hidden": [8]}, n_critic=4)
    opts = p.make_optimizers(1e-3)
    assert all(g["betas"] == (0.0, 0.9) for o in opts for g in o.param_groups)
    logs = p.train_step(torch.randn(30, 3), opts, 1)
    assert set(logs) == {"critic_loss", "wasserstein", "gp", "gen_loss"}
    g_opt, c_opt = opts
    assert {int(s["step"]) for s in g_opt.state.values()} == {1}
    assert {int(s["step"]) for s in c_opt.state.values()} == {4}
    assert all(q.requires_grad for q in p.parameters())


def _circle(N: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 2.0 * np.pi, N)
    return np.c_[1.0 + 2.0 * np.cos(t), -1.0 + 2.0 * np.sin(t)]


def test_short_training_puts_samples_on_a_circle():
    # gp_weight 0.1 as in the toy experiments of Gulrajani et al. (10 makes this 2-D game
    # oscillate for thousands of steps)
    r, c = 2.0, np.array([1.0, -1.0])
    X = _circle(4000, 0)
    torch.manual_seed(0)
    p = WGANPrior(2, 2, arch={"kind": "mlp", "hidden": [64, 64]}, gp_weight=0.1,
                  val_metric="sliced_wasserstein", val_states=16, val_project_steps=5)
    p.set_normalization(X.mean(0), X.std(0))

    def off(P: WGANPrior) -> float:
        return float(np.mean(np.abs(np.linalg.norm(P.sample(2000, seed=3) - c, axis=1) - r)))

    before = off(p)
    res = training.fit(p, X, _circle(500, 1), steps=250, batch_size=500, lr=2e-3, warmup=20,
                       eval_every=250, patience=1, seed=0, progress=False)
    after = off(p)
    assert before > 0.5 * r                   # the untrained generator is far off the circle
    assert after < 0.12 * r, (before, after)  # trained samples lie near it
    angles = np.arctan2(*(p.sample(2000, seed=4) - c).T[::-1])
    hist = np.histogram(angles, bins=8, range=(-np.pi, np.pi))[0]
    assert (hist > 2000 / 8 / 3).all(), hist    # and spread all around it
    assert res.best_metrics["val_loss"] == res.best_metrics["sliced_wasserstein"]
    assert {"recon_rmse", "wasserstein_estimate"} <= set(res.best_metrics)


# ------------------------------------------------------------------ checkpoints, errors
def test_save_load_round_trip_is_identical(tmp_path):
    torch.manual_seed(2)
    p = WGANPrior(10, 4, arch={"kind": "conv1d", "channels": 4, "blocks": 1, "kernel": 3},
                  critic_arch={"kind": "mlp", "hidden": [16]}, n_critic=3, gp_weight=5.0,
                  betas=(0.5, 0.9), project_steps=15, project_restarts=2, project_seed=9)
    p.set_normalization(np.linspace(0, 1, 10), np.linspace(1, 2, 10))
    q = load(save(p, tmp_path / "w.pt"), device="cpu", state_dim=10, latent_dim=4)
    assert isinstance(q, WGANPrior) and q.config() == p.config()
    X = np.random.default_rng(0).standard_normal((6, 10))
    Z = np.random.default_rng(1).standard_normal((6, 4))
    np.testing.assert_array_equal(q.decode(Z), p.decode(Z))
    np.testing.assert_array_equal(q.encode(X), p.encode(X))
    np.testing.assert_array_equal(q.critic(X), p.critic(X))
    np.testing.assert_array_equal(q.sample(5, seed=2), p.sample(5, seed=2))


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"n_critic": 0}, "n_critic"), ({"gp_weight": -1.0}, "gp_weight"),
    ({"drift": float("nan")}, "drift"), ({"betas": (1.0, 0.9)}, "betas"),
    ({"betas": (0.5,)}, "betas"), ({"critic_lr_scale": 0.0}, "critic_lr_scale"),
    ({"project_steps": 0}, "project_steps"), ({"project_lam": -1e-3}, "project_lam"),
    ({"project_lr": 0.0}, "project_lr"), ({"project_restarts": 0}, "project_restarts"),
    ({"project_restarts": 2.5}, "project_restarts"), ({"project_seed": -1}, "project_seed"),
    ({"val_metric": "fid"}, "val_metric"), ({"val_states": 1}, "val_states"),
    ({"val_project_steps": 0}, "val_project_steps"), ({"critic_arch": {"kind": "rnn"}},
                                                      "arch.kind"),
    ({"dtype": "float16"}, "dtype"),
])
def test_bad_options_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WGANPrior(4, 2, **kwargs)


def test_bad_arrays_raise_naming_the_argument():
    p = WGANPrior(4, 2)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 4\)"):
        p.encode(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"X must have shape \(N, 4\)"):
        p.critic(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"Z must have shape \(N, 2\)"):
        p.decode(np.zeros((2, 3)))
