"""The prior protocol, checked on every registered family (and on the shipped models).

Run on a GPU with ``python -m pytest tests/test_priors_contract.py --device cuda``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentda import priors
from latentda.priors.training import fit

N_STATE, K = 8, 3
MODELS = Path(__file__).resolve().parent.parent / "models"


def _data(N: int = 1200, seed: int = 0) -> np.ndarray:
    """States near a 3-D curved manifold in 8 dimensions."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(N, K))
    B = np.linalg.qr(rng.normal(size=(N_STATE, N_STATE)))[0]
    feats = np.column_stack([Z, 0.3 * np.tanh(Z[:, :2]), 0.2 * Z[:, :1] * Z[:, 1:2],
                             0.1 * np.sin(Z[:, 2:3]), np.zeros((N, 1))])
    return 2.0 * feats @ B.T + 1.0 + 0.01 * rng.normal(size=(N, N_STATE))


def _make(family: str, X: np.ndarray) -> priors.Prior:
    torch.manual_seed(0)
    if family == "linear":
        return priors.LinearGaussianPrior.fit(X, K)
    if family == "vae":
        p = priors.VAEPrior(N_STATE, K, {"kind": "mlp", "hidden": [32, 32]})
    elif family == "flow":
        p = priors.FAMILIES["flow"](N_STATE, arch={"kind": "mlp", "hidden": [32]}, n_layers=4)
    elif family == "wgan":
        p = priors.FAMILIES["wgan"](N_STATE, K, arch={"kind": "mlp", "hidden": [32]},
                                    project_steps=50)
    else:  # a new family must be added here
        raise AssertionError(f"no contract fixture for family {family!r}")
    p.set_normalization(X.mean(0), X.std(0))
    return p


FAMILY_NAMES = sorted(priors.FAMILIES)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return _data()


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def trained(request, data):
    """Each family, briefly trained on the curved-manifold data."""
    p = _make(request.param, data)
    if request.param != "linear":
        fit(p, data[:1000], data[1000:], steps=150, batch_size=128, lr=5e-3, warmup=10,
            eval_every=150, progress=False)
    p.fit_residual(data[1000:])
    return p


def test_every_family_has_a_fixture(data):
    assert {"linear", "vae"} <= set(FAMILY_NAMES)
    for name in FAMILY_NAMES:
        assert isinstance(_make(name, data[:50]), priors.Prior)


def test_shapes_dtypes_and_device(trained, data, device):
    p = trained.to(device)
    assert p.device.type == torch.device(device).type
    assert p.dtype == torch.float32
    Z = p.encode(data[:7])
    X = p.decode(Z)
    S = p.sample(5, seed=1)
    k = p.latent_dim
    assert Z.shape == (7, k) and X.shape == (7, N_STATE) and S.shape == (5, N_STATE)
    assert Z.dtype == X.dtype == S.dtype == np.float64
    np.testing.assert_array_equal(S, p.sample(5, seed=1))  # seeded
    one = p.decode(Z[0])  # a single code is a batch of one
    assert one.shape == (1, N_STATE)
    with pytest.raises(ValueError, match=r"Z must have shape \(N, "):
        p.decode(np.zeros((2, k + 1)))
    with pytest.raises(ValueError, match=r"X must have shape \(N, 8\)"):
        p.encode(np.zeros((2, 5)))
    assert p.residual_cov.shape == (N_STATE, N_STATE)
    p.to("cpu")


def test_save_load_round_trip_is_identical(trained, data, tmp_path, device):
    path = priors.save(trained, tmp_path / "p.pt", meta={"system": {"system": "test"}})
    back = priors.load(path, device, state_dim=N_STATE, latent_dim=trained.latent_dim)
    assert type(back) is type(trained) and back.config() == trained.config()
    X = data[:20]
    ref = trained.to(device)
    np.testing.assert_array_equal(back.encode(X), ref.encode(X))
    np.testing.assert_array_equal(back.decode(ref.encode(X)), ref.decode(ref.encode(X)))
    np.testing.assert_array_equal(back.residual_cov, ref.residual_cov)
    try:
        lp = ref.log_prob(X)
    except NotImplementedError:
        pass
    else:
        np.testing.assert_array_equal(back.log_prob(X), lp)
    trained.to("cpu")


def test_reconstruction_is_close_on_training_states(trained, data):
    """``decode(encode(x))`` is much closer to ``x`` than the climatological spread."""
    X = data[:300]
    rel = np.linalg.norm(X - trained.reconstruct(X)) / np.linalg.norm(X - X.mean(0))
    limit = {"flow": 1e-4, "linear": 0.35, "vae": 0.35, "wgan": 0.8}[trained.family]
    assert rel < limit
    if trained.family == "linear":
        return  # its residual_cov is the analytic one (tests/test_priors_linear.py)
    # the stored residual statistics describe those errors (held-out half)
    R = data[1000:] - trained.reconstruct(data[1000:])
    np.testing.assert_allclose(np.trace(trained.residual_cov), np.trace(np.cov(R.T)),
                               rtol=1e-6)


def _shipped() -> list[Path]:
    return sorted(MODELS.glob("*.pt"))


@pytest.mark.parametrize("pt", _shipped(), ids=lambda p: p.stem)
def test_shipped_model_matches_its_card(pt):
    """Each shipped checkpoint is small, loads, and reproduces its card's held-out numbers."""
    card = json.loads(pt.with_suffix(".json").read_text())
    assert pt.stat().st_size <= 5_000_000
    assert card["checkpoint"]["bytes"] == pt.stat().st_size
    assert pt.with_suffix(".md").read_text().startswith(f"# Model card: {card['name']}")
    p = priors.load(pt, "cpu", system=card["system"]["system"])
    assert (p.state_dim, p.latent_dim) == (card["state_dim"], card["latent_dim"])
    from latentda.prior_training import PriorConfig, simulate_climatology

    pc = PriorConfig.model_validate(card["config"])
    cc = pc.climatology
    fresh = pc.model_copy(update={"climatology": cc.model_copy(update={
        # shallow water: few runs, every snapshot (the family changes with time since
        # release); elsewhere more runs and their first snapshots
        "members": 6 if p.state_dim > 1000 else 40,
        "snapshots": cc.snapshots if p.state_dim > 1000 else min(cc.snapshots, 3),
        "seed": cc.seed + 1000})})
    X = simulate_climatology(fresh, progress=False, use_cache=False).reshape(-1, p.state_dim)
    rmse = float(np.sqrt(np.mean((X - p.reconstruct(X)) ** 2)))
    # fresh runs of the same climatology: within 25 % of the card's held-out number
    assert rmse <= 1.25 * card["metrics"]["recon_rmse"] + 1e-6
