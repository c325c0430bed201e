"""RealNVP flow prior: bijectivity, exact log-det, normalization, symmetry, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import latentda.priors.flow  # noqa: F401  (registers the family)
from latentda.priors import load, save, training
from latentda.priors.flow import RealNVPPrior

MLP = {"kind": "mlp", "hidden": [16, 16]}
CONV = {"kind": "conv1d", "channels": 8, "blocks": 1, "kernel": 3}


def perturbed(prior: RealNVPPrior, amp: float = 0.3, seed: int = 0) -> RealNVPPrior:
    """Move every parameter off its identity initialization (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(amp * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return prior.eval()


def small(kind: str, dtype: str = "float64", amp: float = 0.3, **kw) -> RealNVPPrior:
    n = 6 if kind == "mlp" else 8
    torch.manual_seed(0)
    p = RealNVPPrior(n, arch=MLP if kind == "mlp" else CONV, n_layers=4, dtype=dtype, **kw)
    rng = np.random.default_rng(1)
    p.set_normalization(rng.standard_normal(n) if kind == "mlp" else np.full(n, 1.5),
                        np.exp(0.3 * rng.standard_normal(n)) if kind == "mlp" else np.full(n, 2.0))
    return perturbed(p, amp)


@pytest.mark.parametrize("kind", ["mlp", "conv1d"])
@pytest.mark.parametrize("dtype,amp,tol", [("float32", 0.1, 1e-5), ("float64", 0.3, 1e-10)])
def test_inverse_of_forward_is_the_identity(kind, dtype, amp, tol):
    # amp 0.3 makes log|det| vary over ~20 nats: float32 round-off is then amplified
    # beyond 1e-5, so the float32 check uses a milder (still far from identity) flow
    p = small(kind, dtype, amp)
    X = np.random.default_rng(2).standard_normal((64, p.state_dim)) * 3.0 + 1.0
    Z = p.encode(X)
    assert Z.shape == X.shape and np.abs(Z - p._from(p._to(X, p.state_dim, "X"))).max() > 0.1
    back = p.decode(Z)
    Xr = p._from(p._to(X, p.state_dim, "X"))  # X rounded to the network dtype
    assert np.max(np.abs(back - Xr) / (1.0 + np.abs(Xr))) < tol
    u = torch.randn(16, p.state_dim, dtype=p.dtype)
    z, _ = p.forward_and_logdet(u)
    assert torch.max(torch.abs(p.inverse(z) - u) / (1 + u.abs())) < tol


@pytest.mark.parametrize("kind,kw", [("mlp", {}), ("mlp", {"actnorm": False}),
                                     ("conv1d", {}), ("mlp", {"log_vars": [0, 3]})])
def test_logdet_equals_slogdet_of_the_autograd_jacobian(kind, kw):
    p = small(kind, **kw)
    u = torch.randn(5, p.state_dim, dtype=torch.float64)
    if "log_vars" in kw:  # keep the log variables inside their (positive) support
        L = torch.tensor(kw["log_vars"])
        u[:, L] = (torch.rand(5, len(L), dtype=torch.float64) + 0.2 - p.shift[L]) / p.scale[L]
    _, logdet = p.forward_and_logdet(u)
    assert logdet.abs().max() > 0.1  # the flow is not volume preserving
    for i in range(u.shape[0]):
        J = torch.autograd.functional.jacobian(
            lambda v: p.forward_and_logdet(v[None])[0][0], u[i])
        sign, ref = torch.linalg.slogdet(J)
        assert sign != 0
        assert float(logdet[i].detach()) == pytest.approx(float(ref), abs=1e-10)


def test_log_prob_integrates_to_one_in_physical_units():
    torch.manual_seed(3)
    p = RealNVPPrior(2, arch={"kind": "mlp", "hidden": [8]}, n_layers=4, scale_bound=0.7,
                     dtype="float64")
    p.set_normalization([1.0, -2.0], [0.5, 2.0])
    perturbed(p, amp=0.4, seed=3)
    S = p.sample(20_000, seed=0)  # a box around the samples, padded by 20 %
    lo, hi = S.min(0), S.max(0)
    pad = 0.2 * (hi - lo)
    x0 = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 401)
    x1 = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 401)
    G = np.stack(np.meshgrid(x0, x1, indexing="ij"), -1).reshape(-1, 2)
    dens = np.exp(p.log_prob(G)).reshape(401, 401)
    mass = np.trapezoid(np.trapezoid(dens, x1, axis=1), x0)
    assert mass == pytest.approx(1.0, abs=1e-3)
    # the density is far from the untrained one, N(shift, diag(scale^2))
    ref = multivariate_normal([1.0, -2.0], np.diag([0.25, 4.0])).pdf(G).reshape(401, 401)
    assert np.trapezoid(np.trapezoid(np.abs(dens - ref), x1, axis=1), x0) > 0.1


@pytest.mark.parametrize("permute", [False, True])
def test_untrained_flow_is_the_standardizing_gaussian(permute):
    p = RealNVPPrior(5, n_layers=3, permute=permute, dtype="float64")
    shift, scale = np.arange(5.0), np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    p.set_normalization(shift, scale)
    X = np.random.default_rng(4).standard_normal((20, 5)) * 3
    ref = multivariate_normal(shift, np.diag(scale**2)).logpdf(X)
    np.testing.assert_allclose(p.log_prob(X), ref, rtol=1e-12)
    Z, U = p.encode(X), (X - shift) / scale
    if permute:  # the codes are the standardized state, permuted
        np.testing.assert_allclose(np.sort(Z, axis=1), np.sort(U, axis=1), rtol=1e-12)
        assert not np.allclose(Z, U)
    else:
        np.testing.assert_allclose(Z, U, rtol=1e-12)
    assert p.validation_metrics(X)["val_loss"] == pytest.approx(-ref.mean(), rel=1e-12)


def test_actnorm_data_init_standardizes_the_codes():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3000, 4)) * [1.0, 5.0, 0.1, 2.0] + [3.0, -1.0, 0.0, 7.0]
    p = RealNVPPrior(4, n_layers=4, dtype="float64")
    p.set_normalization(X.mean(), X.std())  # one global scale: variables stay unequal
    p.initialize_from_data(X)
    Z = p.encode(X)
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(Z.std(0), 1.0, atol=1e-6)


def test_conv1d_flow_is_equivariant_under_shifts_by_two_sites():
    p = small("conv1d")
    X = np.random.default_rng(6).standard_normal((10, 8)) * 3.0
    Xs = np.roll(X, 2, axis=1)
    np.testing.assert_allclose(p.encode(Xs), np.roll(p.encode(X), 2, axis=1), atol=1e-12)
    np.testing.assert_allclose(p.log_prob(Xs), p.log_prob(X), atol=1e-10)
    # a shift by one site swaps the parities: not a symmetry of the perturbed flow
    assert np.abs(p.log_prob(np.roll(X, 1, axis=1)) - p.log_prob(X)).max() > 1e-3


def test_log_variables_are_positive_by_construction():
    p = small("mlp", log_vars=[1, 2])
    X = p.sample(500, seed=0)
    assert (X[:, [1, 2]] > 0).all() and (X[:, [0, 3]] < 0).any()
    np.testing.assert_allclose(p.decode(p.encode(X)), X, rtol=1e-10, atol=1e-10)
    bad = X[:3].copy()
    bad[0, 1], bad[1, 2] = 0.0, -1.0
    lp = p.log_prob(bad)
    assert lp[0] == -np.inf and lp[1] == -np.inf and np.isfinite(lp[2])


@pytest.mark.parametrize("kind", ["mlp", "conv1d"])
def test_save_load_round_trip_gives_identical_outputs(kind, tmp_path):
    p = small(kind, dtype="float32", log_vars=[0] if kind == "mlp" else None)
    path = save(p, tmp_path / "flow.pt", meta={"trained_on": "test"})
    q = load(path, device="cpu", state_dim=p.state_dim, latent_dim=p.state_dim)
    assert isinstance(q, RealNVPPrior) and q.config() == p.config()
    assert q.meta == {"trained_on": "test"}
    X = np.abs(np.random.default_rng(7).standard_normal((9, p.state_dim))) + 0.5
    np.testing.assert_array_equal(q.encode(X), p.encode(X))
    np.testing.assert_array_equal(q.decode(X), p.decode(X))
    np.testing.assert_array_equal(q.log_prob(X), p.log_prob(X))
    np.testing.assert_array_equal(q.sample(4, seed=2), p.sample(4, seed=2))
    if kind == "mlp":  # the permutations are buffers restored from the checkpoint
        perms = [k for k in p.state_dict() if k.endswith("perm")]
        assert len(perms) == 4
        for k in perms:
            assert torch.equal(q.state_dict()[k], p.state_dict()[k])


def test_sample_shape_dtype_and_seed():
    p = small("conv1d", dtype="float32")
    S = p.sample(7, seed=3)
    assert S.shape == (7, 8) and S.dtype == np.float64
    assert p.dtype == torch.float32 and p.latent_dim == p.state_dim == 8
    np.testing.assert_array_equal(S, p.sample(7, seed=3))
    assert not np.array_equal(S, p.sample(7, seed=4))
    assert p.log_prob(S).shape == (7,) and p.encode(S).shape == (7, 8)


@pytest.fixture
def one_thread():
    """Small networks train faster on one thread (and do not fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_short_training_reaches_the_entropy_of_a_correlated_gaussian(one_thread):
    rng = np.random.default_rng(8)
    C = np.array([[1.0, 1.6], [1.6, 4.0]])  # correlation 0.8
    mu = np.array([2.0, -1.0])
    X = rng.multivariate_normal(mu, C, size=24_000)
    Xtr, Xva, Xte = X[:16_000], X[16_000:18_000], X[18_000:]
    torch.manual_seed(0)
    p = RealNVPPrior(2, arch={"kind": "mlp", "hidden": [32, 32]}, n_layers=4)
    p.set_normalization(Xtr.mean(0), Xtr.std(0))
    p.initialize_from_data(Xtr)
    true_nll = -multivariate_normal(mu, C).logpdf(Xte)
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 2 * np.linalg.det(C))
    diag_gap = -0.5 * math.log(1 - 0.8**2)  # KL of the best diagonal Gaussian: 0.51 nats
    nll0 = -p.log_prob(Xte)
    assert nll0.mean() - true_nll.mean() > 0.8 * diag_gap
    res = training.fit(p, Xtr, Xva, steps=300, batch_size=256, lr=5e-3, warmup=30,
                       eval_every=100, patience=5, seed=0, progress=False)
    assert res.best_metrics["val_loss"] == res.best_metrics["nll"]
    nll = -p.log_prob(Xte)
    # paired difference estimates KL(truth || flow) >= 0; its MC error is ~0.005
    assert nll.mean() - true_nll.mean() < 0.03
    assert nll.mean() == pytest.approx(entropy, abs=0.06)
    assert p.validation_metrics(Xte)["nll"] == pytest.approx(nll.mean(), rel=1e-12)


@pytest.mark.parametrize("kwargs,field", [
    ({"state_dim": 1}, "state_dim"),
    ({"state_dim": 7, "arch": {"kind": "conv1d"}}, "state_dim must be even"),
    ({"arch": {"kind": "conv2d", "ny": 2, "nx": 2}}, "arch.kind"),
    ({"arch": {"kind": "mlp", "hidden": []}}, "arch.hidden"),
    ({"arch": {"kind": "conv1d", "kernel": 4}}, "arch.kernel"),
    ({"n_layers": 0}, "n_layers"),
    ({"hidden": 0}, "hidden"),
    ({"scale_bound": 0.0}, "scale_bound"),
    ({"scale_bound": math.inf}, "scale_bound"),
    ({"permute": True, "arch": {"kind": "conv1d"}}, "permute must be False"),
    ({"actnorm": "yes"}, "actnorm"),
    ({"perm_seed": -1}, "perm_seed"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"log_vars": [0, 0]}, "log_vars"),
    ({"log_vars": [6]}, "log_vars"),
    ({"dtype": "float16"}, "dtype"),
])
def test_bad_constructor_input_names_the_parameter(kwargs, field):
    kw = {"state_dim": 6} | kwargs
    with pytest.raises(ValueError, match=field):
        RealNVPPrior(**kw)


def test_bad_data_is_refused():
    p = RealNVPPrior(4)
    with pytest.raises(ValueError, match=r"X must have shape \(N >= 2, 4\)"):
        p.initialize_from_data(np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"X must have shape \(N, 4\)"):
        p.log_prob(np.zeros((2, 5)))
