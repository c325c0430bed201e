"""`kind: sbi` case files: validation, overrides, the store and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from latentda.cli import main
from latentda.config import CaseError, load_case
from latentda.experiment import run_case
from latentda.sbi_case import parse_sbi_case

CASE = Path(__file__).resolve().parent.parent / "cases" / "lv_sbi.yaml"


def test_sbi_case_runs_and_stores_both_posteriors(tmp_path):
    case = load_case(CASE).quick()
    summary, store = run_case(case, store=tmp_path / "s.zarr")
    ds = xr.open_zarr(store)
    assert ds.attrs["kind"] == "sbi" and ds.sizes["parameter"] == 4
    w = ds.particle_weights.values
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    # the stored means are those of the stored samples, and the summary's distances theirs
    np.testing.assert_allclose(ds.npe_mean, ds.npe_samples.mean("sample"), rtol=1e-12)
    np.testing.assert_allclose(ds.particle_mean, w @ ds.particle_samples.values, rtol=1e-12)
    d = (ds.npe_mean - ds.particle_mean) / ds.particle_std
    np.testing.assert_allclose(d, ds.dmean_over_std, rtol=1e-12)
    assert summary["max_abs_dmean_over_std"] == pytest.approx(float(np.abs(d).max()))
    # the NPE samples respect the prior box
    lo = ds.theta_true.values - case.model.prior_half_width
    hi = ds.theta_true.values + case.model.prior_half_width
    X = ds.npe_samples.values
    assert np.all((X >= lo) & (X <= hi))
    # the same seed reproduces the run
    again, _ = run_case(case, write=False)
    assert again["npe_mean_log_alpha"] == summary["npe_mean_log_alpha"]
    assert again["particle_mean_log_delta"] == summary["particle_mean_log_delta"]


def test_sbi_case_refuses_cycles_and_bad_fields(tmp_path):
    with pytest.raises(CaseError, match="cycles does not apply"):
        load_case(CASE, cycles=10)
    assert load_case(CASE, seed=5).seed == 5
    with pytest.raises(CaseError, match="log_theta"):
        parse_sbi_case({"kind": "sbi", "name": "x", "model": {"log_theta": [0.0, 1.0]}})
    with pytest.raises(CaseError, match="n_train"):
        parse_sbi_case({"kind": "sbi", "name": "x", "npe": {"n_train": 5}})
    store = tmp_path / "exists.zarr"
    store.mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_case(load_case(CASE).quick(), store=store)


def test_cli_run_of_an_sbi_case_prints_the_agreement(tmp_path, capsys, monkeypatch):
    import yaml

    data = yaml.safe_load(CASE.read_text())
    data.update(npe={"n_train": 600, "max_epochs": 2, "hidden": 16, "n_layers": 2,
                     "n_samples": 200},
                particle={"n_particles": 50, "n_sims": 2, "n_importance": 100,
                          "importance_sims": 2})
    f = tmp_path / "lv_sbi.yaml"
    f.write_text("# tiny\n" + yaml.safe_dump(data))
    assert main(["run", str(f), "--no-write", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "max |dmean|/std" in out and "log_gamma" in out
    assert main(["run", str(f), "--cycles", "3"]) == 2


def test_report_of_an_sbi_store_draws_the_posterior_marginals(tmp_path):
    _, store = run_case(load_case(CASE).quick(), store=tmp_path / "s.zarr")
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "(sbi_posteriors.png)" in md and "| log_alpha |" in md and "nan" not in md
    png = (tmp_path / "rep" / "sbi_posteriors.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_oscillating_and_summary_scale():
    from latentda.dynamics.lotka_volterra_ssa import (
        TRUE_LOG_THETA,
        StochasticLotkaVolterra,
        oscillating,
        summary_scale,
    )

    traj = np.ones((3, 5, 2))
    traj[1, -1, 0] = 0  # predators died out
    ok = oscillating(traj, np.array([False, False, True]))  # the third hit the event cap
    assert ok.tolist() == [True, False, False]
    scale, n_ok = summary_scale(StochasticLotkaVolterra(), TRUE_LOG_THETA,
                                np.random.default_rng(0), 300)
    assert scale.shape == (9,) and np.all(scale > 0) and 0 < n_ok <= 300
