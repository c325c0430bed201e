"""`latentda train-prior`: config validation, outputs, cards, cache, refusal to overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from latentda import priors
from latentda.cli import main
from latentda.config import CaseError
from latentda.prior_training import load_prior_config, simulate_climatology, train_prior

BASE = {
    "name": "tiny_vae",
    "description": "tiny test prior",
    "system": {"system": "lorenz96", "n": 8, "F": 8.0},
    "climatology": {"members": 12, "snapshots": 20, "spacing": 5, "spinup_steps": 200,
                    "seed": 3},
    "family": "vae",
    "latent_dim": 4,
    "arch": {"kind": "conv1d", "channels": 4, "blocks": 1, "kernel": 3},
    "normalization": "global",
    "training": {"steps": 40, "batch_size": 32, "lr": 0.005, "warmup": 5, "eval_every": 20,
                 "patience": 3, "max_minutes": 2.0, "seed": 1, "threads": 1},
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDA_CACHE", str(tmp_path / "cache"))


def _write(tmp_path, **over) -> str:
    cfg = {**BASE, **over}
    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("over, field", [
    ({"family": "diffusion"}, "family"),
    ({"options": {"gamma": 2.0}}, "options.gamma"),
    ({"latent_dim": None}, "latent_dim"),
    ({"arch": {"kind": "conv2d"}}, "arch.ny"),
    ({"colour": "blue"}, "colour"),
    ({"training": {"steps": 0}}, "training.steps"),
])
def test_bad_configs_name_the_field(tmp_path, over, field):
    with pytest.raises(CaseError, match=field.replace(".", r"\.")):
        load_prior_config(_write(tmp_path, **over))


def test_train_writes_checkpoint_and_cards_and_refuses_to_overwrite(tmp_path):
    path = _write(tmp_path)
    pc = load_prior_config(path)
    prior, card = train_prior(pc, path, progress=False)
    pt = tmp_path / "tiny_vae.pt"
    for suffix in (".pt", ".json", ".md"):
        assert (tmp_path / f"tiny_vae{suffix}").stat().st_size > 0
    on_disk = json.loads((tmp_path / "tiny_vae.json").read_text())
    assert on_disk["metrics"]["recon_rmse"] == pytest.approx(card["metrics"]["recon_rmse"])
    assert on_disk["command"] == f"latentda train-prior {path}"
    assert on_disk["climatology"]["test_states"] == 20 * 1  # 10 % of 12 runs -> 1 run
    assert on_disk["training"]["steps"] <= 40
    # the residual covariance is the sample covariance of held-out reconstruction errors
    assert prior.residual_cov.shape == (8, 8)
    assert np.trace(prior.residual_cov) > 0
    # round trip: identical outputs
    back = priors.load(pt, "cpu", state_dim=8, latent_dim=4, system="lorenz96")
    X = np.random.default_rng(0).normal(size=(5, 8))
    np.testing.assert_array_equal(back.encode(X), prior.encode(X))
    np.testing.assert_array_equal(back.residual_cov, prior.residual_cov)
    # refusal before any work: the checkpoint is untouched
    mtime = pt.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_prior(pc, path, progress=False)
    assert pt.stat().st_mtime_ns == mtime


def test_climatology_is_cached_and_reproducible(tmp_path):
    pc = load_prior_config(_write(tmp_path))
    a = simulate_climatology(pc, progress=False)
    b = simulate_climatology(pc, progress=False)  # from the zarr cache
    c = simulate_climatology(pc, progress=False, use_cache=False)  # simulated again
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert a.shape == (12, 20, 8)
    assert np.isfinite(a).all() and 2.0 < a.std() < 5.0  # spun up onto the attractor


@pytest.mark.parametrize("system", [
    {"system": "lorenz96", "n": 8, "F": 8.0},
    {"system": "shallow_water", "nx": 8, "ny": 8, "init_family": "vortices"},
])
def test_climatology_does_not_depend_on_the_thread_count(tmp_path, monkeypatch, system):
    """Members are split over threads; each is integrated on its own, so 1 and 5 threads
    give the same states bit for bit, equal to one serial model.step of the whole batch."""
    import latentda.prior_training as pt
    from latentda.config import build_model

    pc = load_prior_config(_write(tmp_path, system=system, climatology={
        "members": 7, "snapshots": 3, "spacing": 4, "spinup_steps": 10, "seed": 2}))
    runs = []
    for workers in (1, 5):
        monkeypatch.setattr(pt, "_climatology_workers", lambda members, w=workers: w)
        runs.append(simulate_climatology(pc, progress=False, use_cache=False))
    np.testing.assert_array_equal(runs[0], runs[1])
    model = build_model(pc.system)
    rng = np.random.default_rng([2, 7])
    X0 = (model.sample_climatology(7, rng, family="vortices", spinup_steps=10)
          if "init_family" in system else model.climatology(7, rng, 10))
    np.testing.assert_array_equal(runs[1][:, 0], X0)
    np.testing.assert_array_equal(runs[1][:, 2], model.step(X0, 8))
    assert np.ptp(runs[1][:, 2] - runs[1][:, 0]) > 0  # the snapshots do move


def test_linear_family_card_has_exact_likelihood_numbers(tmp_path):
    path = _write(tmp_path, name="tiny_lin", family="linear", latent_dim=8)
    prior, card = train_prior(load_prior_config(path), path, progress=False)
    m = card["metrics"]
    # k = n: PPCA is the full-covariance Gaussian fitted by maximum likelihood
    assert m["nll"] == pytest.approx(m["gaussian_nll"], abs=0.05)
    assert m["recon_rmse"] < 1e-4


def test_load_refuses_other_systems_and_corrupted_files(tmp_path):
    path = _write(tmp_path)
    train_prior(load_prior_config(path), path, progress=False)
    pt = tmp_path / "tiny_vae.pt"
    with pytest.raises(ValueError, match="lorenz96 system, not shallow_water"):
        priors.load(pt, system="shallow_water")
    with pytest.raises(ValueError, match="state_dim 8, but 40"):
        priors.load(pt, state_dim=40)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(ValueError, match="bad.pt cannot be read"):
        priors.load(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no CUDA device"):
        priors.resolve_device("cuda")
    assert priors.resolve_device("auto").type == "cpu"


def test_cli_train_prior(tmp_path, capsys):
    path = _write(tmp_path, name="cli_vae")
    assert main(["train-prior", path, "--steps", "10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recon_rmse" in out and "cli_vae.pt" in out
    card = json.loads((tmp_path / "cli_vae.json").read_text())
    assert card["command"].endswith("--steps 10") and card["training"]["steps"] == 10
    assert main(["train-prior", path, "--quiet"]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train-prior", _write(tmp_path, name="x", family="gan"), "--quiet"]) == 2


def test_per_field_normalization_and_component_metrics(tmp_path):
    """Shallow water (8x8 grid): one mean/std per field; h, u, v scored separately."""
    path = _write(tmp_path, name="tiny_sw",
                  system={"system": "shallow_water", "nx": 8, "ny": 8, "init_family": "bumps"},
                  climatology={"members": 10, "snapshots": 3, "spacing": 5, "spinup_steps": 20,
                               "seed": 0},
                  family="linear", latent_dim=6, normalization="per_field",
                  arch={"kind": "mlp"})
    pc = load_prior_config(path)
    from latentda.config import build_model
    from latentda.prior_training import _normalization

    X = simulate_climatology(pc, progress=False).reshape(-1, 192)
    shift, scale = _normalization(pc, X, build_model(pc.system))
    for sl in (slice(0, 64), slice(64, 128), slice(128, 192)):
        assert np.ptp(shift[sl]) == 0 and shift[sl][0] == pytest.approx(X[:, sl].mean())
        assert scale[sl][0] == pytest.approx(X[:, sl].std())
    _, card = train_prior(pc, path, progress=False)
    for name in ("h", "u", "v"):
        assert np.isfinite(card["metrics"][f"recon_rel_error_{name}"])
