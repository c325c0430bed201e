"""Latent-space cases end to end: schema, errors before any work, outputs, truth shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from latentda.config import CaseError, load_case, parse_case
from latentda.dynamics import Lorenz96
from latentda.experiment import prepare, run_case

ROOT = Path(__file__).resolve().parent.parent
VAE = str(ROOT / "models" / "l96_vae_k32.pt")


def _case(**kw):
    d = {"name": "t", "seed": 2,
         "model": {"system": "lorenz96", "n": 40, "F": 8.0, "dt": 0.05},
         "observations": {"operator": {"kind": "identity"}, "error_variance": 1.0},
         "ensemble": {"size": 6, "init": "perturbed_truth"},
         "prior": {"path": VAE, "device": "cpu"},
         "space": {"kind": "latent", "mode": "noisy_manifold"},
         "filter": {"method": "hybrid_etkf", "beta": 0.3, "static_var": 0.005,
                    "inflation": 1.05},
         "cycles": 5, "burn_in": 1}
    d.update(kw)
    if d.get("prior") is None:
        d.pop("prior")
    return d


def test_latent_run_writes_codes_and_ood_diagnostics(tmp_path):
    case = parse_case(_case(output={"store_ensemble": True}))
    summary, store = run_case(case, store=tmp_path / "r.zarr")
    with xr.open_zarr(store) as ds:
        assert ds["latent_analysis_mean"].dims == ("time", "latent")
        assert ds.sizes["latent"] == 32
        assert ds["latent_forecast"].dims == ("time", "member", "latent")
        assert np.isfinite(ds["latent_analysis"].values).all()
        for v in ("ood_residual", "ood_score", "manifold_distance"):
            assert np.isfinite(ds[v].values).all(), v
        assert ds["ood_flag"].dtype == bool
        assert 0 <= ds["ood_score"].values.min() <= ds["ood_score"].values.max() <= 1
        assert "noisy_manifold" in ds.attrs["space"]
        assert len(ds.attrs["prior_checkpoint_sha256"]) == 64
        # the analysis members decode the analysed codes plus their residuals:
        # in noisy_manifold the codes of the analysis are the analysed codes
        assert np.isfinite(ds["analysis"].values).all()
    assert np.isfinite(summary["rmse_analysis"])


def test_state_run_with_a_prior_writes_ood_but_no_codes(tmp_path):
    case = parse_case(_case(space={"kind": "state"}, filter={"method": "etkf"},
                            observations={"operator": {"kind": "every", "k": 2},
                                          "error_variance": 1.0, "missing_fraction": 0.3}))
    _, store = run_case(case, store=tmp_path / "s.zarr")
    with xr.open_zarr(store) as ds:
        assert "latent_analysis_mean" not in ds
        ok = ds["obs_valid"].values > 0
        assert np.isfinite(ds["ood_residual"].values[ok]).all()


@pytest.mark.parametrize("change, match", [
    ({"prior": None}, "needs a prior"),
    ({"prior": {"path": str(ROOT / "models" / "lv_flow.pt")}}, "prior.path"),
    ({"prior": {"path": VAE, "latent_dim": 16}}, "latent_dim"),
    ({"prior": {"path": "models/nothing.pt"}}, "does not exist"),
    ({"filter": {"method": "letkf", "radius": 4.0}}, "use space.mode hybrid"),
    ({"space": {"kind": "latent", "mode": "hybrid"}}, "state_filter"),
    ({"space": {"kind": "latent", "mode": "manifold", "residual_scale": 0.5}},
     "residual_scale only applies"),
    ({"space": {"kind": "state", "mode": "manifold"}}, "only apply to kind latent"),
    ({"filter": {"method": "hybrid_etkf"}}, "static_var is required"),
    ({"filter": {"method": "etkf", "beta": 0.3}}, "beta only applies"),
    ({"truth_shift": {"cycle": 2, "parameters": {"G": 1.0}}}, "not parameters"),
    ({"truth_shift": {"cycle": 2, "vortex": {"amplitude": 1.0, "width": 1.0}}},
     "shallow_water"),
    ({"truth_shift": {"cycle": 9}}, "must be < cycles"),
    ({"ood": {"enabled": True}, "prior": None, "space": {"kind": "state"},
      "filter": {"method": "etkf"}}, "ood.enabled needs a prior"),
])
def test_bad_latent_cases_fail_before_any_work(change, match, tmp_path):
    d = _case(**change)
    with pytest.raises(CaseError, match=match):
        prepare(parse_case(d), store=tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_truth_shift_changes_the_truth_model_at_its_cycle():
    case = parse_case(_case(cycles=6, truth_shift={"cycle": 3, "parameters": {"F": 10.0}},
                            ood={"enabled": False}))
    p = prepare(case, write=False)
    X = p.stream.truth
    f8, f10 = Lorenz96(n=40, F=8.0), Lorenz96(n=40, F=10.0)
    np.testing.assert_allclose(X[1], f8.step(X[0][None], 1)[0], atol=1e-12)
    np.testing.assert_allclose(X[2], f8.step(X[1][None], 1)[0], atol=1e-12)
    np.testing.assert_allclose(X[3], f10.step(X[2][None], 1)[0], atol=1e-12)
    np.testing.assert_allclose(X[5], f10.step(X[4][None], 1)[0], atol=1e-12)
    np.testing.assert_allclose(np.diff(p.stream.times), 0.05, atol=1e-12)
    assert len(p.stream) == 6


@pytest.mark.parametrize("name", ["l96_latent_etkf", "l96_flow_etkf", "l96_ood"])
def test_shipped_latent_cases_validate_and_prepare(name):
    case = load_case(ROOT / "cases" / f"{name}.yaml", cycles=3)
    p = prepare(case, write=False)
    assert p.setup.space.latent_dim == case.prior.latent_dim


@pytest.mark.parametrize("mode", ["manifold", "noisy_manifold"])
def test_a_smoother_runs_through_a_latent_space(mode):
    """Plumbing: the smoothed ensemble (analysed codes) is decoded and scored.
    (The algebra is tested exactly with linear priors in test_latent_modes.)"""
    case = parse_case(_case(filter={"method": "enks", "lag": 2},
                            space={"kind": "latent", "mode": mode},
                            ood={"enabled": False}, cycles=4))
    summary, _ = run_case(case, write=False)
    assert np.isfinite(summary["rmse_analysis"]) and np.isfinite(summary["rmse_smoothed"])


def test_torch_threads_are_set_for_the_run_and_restored():
    import torch

    from latentda.case_space import build_space

    before = torch.get_num_threads()
    case = parse_case(_case(prior={"path": VAE, "device": "cpu", "threads": before + 1},
                            ood={"enabled": False}, cycles=2))
    p = prepare(case, write=False)
    with p.setup.torch_threads():
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    run_case(case, write=False)
    assert torch.get_num_threads() == before
    assert build_space(parse_case(_case(space={"kind": "state"}, prior=None,
                                        filter={"method": "etkf"})), p.model,
                       p.operator).threads is None


def test_case_files_find_their_prior_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = load_case(ROOT / "cases" / "l96_latent_etkf.yaml")
    assert Path(case.prior.path).is_file()
    assert Path(case.prior.path).samefile(ROOT / "models" / "l96_vae_k32.pt")


def test_window_reanalysis_case_writes_its_diagnostics(tmp_path):
    """window.length 2 on a latent manifold run: the analysis mean is the window's state."""
    case = parse_case(_case(space={"kind": "latent", "mode": "manifold"},
                            filter={"method": "etkf", "inflation": 1.05},
                            window={"length": 2, "iterations": 3}, cycles=3, burn_in=0,
                            ood={"enabled": False}))
    _, store = run_case(case, store=tmp_path / "w.zarr")
    with xr.open_zarr(store) as ds:
        assert ds["window_times"].values.tolist() == [1.0, 2.0, 2.0]
        m = ds["window_misfit"].values
        assert np.all(np.isfinite(m)) and np.all(m > 0)
        # a plausible misfit per observation (R = I; the VAE reconstructs L96 states to
        # about 0.2): about 1, not the ~13 of the climatological mean state
        assert np.all(m < 2.0)


@pytest.mark.parametrize("change, match", [
    ({"window": {"length": 2}}, "window.length > 0 needs space.kind latent with space.mode "
                                "manifold"),
    ({"window": {"length": 2}, "space": {"kind": "state"}}, "window.length > 0 needs"),
    ({"window": {"length": 2, "beta": 0.2, "static_var": 1.0},
      "space": {"kind": "latent", "mode": "manifold"}}, "window.background: forecast"),
    ({"window": {"length": 2, "background": "forecast", "beta": 0.2},
      "space": {"kind": "latent", "mode": "manifold"}}, "window.static_var"),
    ({"window": {"length": 2}, "space": {"kind": "latent", "mode": "manifold"},
      "filter": {"method": "enks", "lag": 2}}, "cannot follow filter.method enks"),
    ({"window": {"length": -1}}, "window.length"),
])
def test_window_config_errors_name_the_field(change, match):
    with pytest.raises(CaseError, match=match):
        parse_case(_case(**change))


def test_window_run_refuses_resume_before_any_work(tmp_path):
    case = parse_case(_case(space={"kind": "latent", "mode": "manifold"},
                            filter={"method": "etkf"}, window={"length": 2}))
    with pytest.raises(ValueError, match="--resume is not available with window.length"):
        run_case(case, store=tmp_path / "none.zarr", resume=True)
    assert not (tmp_path / "none.zarr").exists()
