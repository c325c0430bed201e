"""The cycling engine: step-by-step API, stores, missing data, reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from latentda.config import parse_case
from latentda.cycle import Cycle
from latentda.dynamics import Lorenz96
from latentda.experiment import prepare, run_case
from latentda.filters import ETKF, EnKF
from latentda.obs_stream import ObservationStream
from latentda.observations import GaussianNoise, Identity, Subset
from latentda.twin import twin_experiment


def small_case(**over):
    base = {
        "name": "t", "seed": 1, "model": {"system": "lorenz96", "n": 20},
        "observations": {"operator": {"kind": "every", "k": 2}, "error_variance": 0.5},
        "ensemble": {"size": 12}, "filter": {"method": "etkf", "inflation": 1.05},
        "cycles": 30, "burn_in": 5, "output": {"block": 8},
    }
    base.update(over)
    return parse_case(base)


@pytest.fixture(scope="module")
def l96_setup():
    m = Lorenz96(n=20)
    H = Subset.every(20, 2)
    twin = twin_experiment(m, H, GaussianNoise.scalar(0.5, H.obs_dim), n_cycles=40, seed=3)
    E0 = m.climatology(12, np.random.default_rng(4))
    return m, H, ObservationStream.from_twin(twin, H), E0


def test_step_by_step_equals_run(l96_setup):
    m, H, stream, E0 = l96_setup
    a = Cycle(m, EnKF(inflation=1.05), H, E0, seed=9)
    series = a.run(stream)
    b = Cycle(m, EnKF(inflation=1.05), H, E0, seed=9)
    for c in range(len(stream)):
        b.forecast(until=stream.times[c])
        rec = b.analyse(stream.values[c], stream.variances[c], truth=stream.truth[c])
        assert rec.scalars["rmse_analysis"] == series["rmse_analysis"][c]
    np.testing.assert_array_equal(a.ensemble, b.ensemble)
    assert a.t == pytest.approx(stream.times[-1])


def test_analysis_improves_on_forecast_and_stays_consistent():
    m = Lorenz96(n=20)
    H = Identity(20)
    twin = twin_experiment(m, H, GaussianNoise.scalar(0.5, 20), n_cycles=150, seed=3)
    E0 = m.climatology(16, np.random.default_rng(4))
    series = Cycle(m, ETKF(inflation=1.05), H, E0).run(ObservationStream.from_twin(twin, H))
    tail = slice(50, None)
    assert np.mean(series["rmse_analysis"][tail]) < np.mean(series["rmse_forecast"][tail])
    # well below the observation error std (0.71) and the climatological std (3.6)
    assert np.mean(series["rmse_analysis"][tail]) < 0.4
    assert 0.5 < np.mean(series["innovation_chi2"][tail]) < 2


def test_missing_observations_give_forecast_only_steps(l96_setup):
    m, H, stream, E0 = l96_setup
    cyc = Cycle(m, ETKF(), H, E0)
    cyc.forecast(stream.times[0])
    Ef = cyc.ensemble
    rec = cyc.analyse(np.full(H.obs_dim, np.nan), stream.variances[0], stream.truth[0])
    np.testing.assert_array_equal(rec.analysis, Ef)
    assert rec.obs_valid == 0 and np.isnan(rec.scalars["innovation_rms"])
    y = stream.values[1].copy()
    y[::2] = np.nan
    cyc.forecast(stream.times[1])
    rec = cyc.analyse(y, stream.variances[1], stream.truth[1])
    assert rec.obs_valid == H.obs_dim - len(y[::2])
    assert not np.array_equal(rec.analysis, rec.forecast)


def test_full_error_covariance_is_used(l96_setup):
    m, H, stream, E0 = l96_setup
    R = np.diag(stream.variances[0])
    a, b = Cycle(m, ETKF(), H, E0), Cycle(m, ETKF(), H, E0)
    for c in (a, b):
        c.forecast(stream.times[0])
    ra = a.analyse(stream.values[0], stream.variances[0])
    rb = b.analyse(stream.values[0], R)
    np.testing.assert_allclose(ra.analysis, rb.analysis, rtol=1e-12, atol=1e-12)


def test_cycle_validates_inputs(l96_setup):
    m, H, stream, E0 = l96_setup
    with pytest.raises(ValueError, match="at least 2 members"):
        Cycle(m, ETKF(), H, E0[:1])
    with pytest.raises(ValueError, match="operator.state_dim"):
        Cycle(m, ETKF(), Identity(5), E0)
    bad = E0.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="ensemble must be finite"):
        Cycle(m, ETKF(), H, bad)
    cyc = Cycle(m, ETKF(), H, E0)
    with pytest.raises(ValueError, match="y must have shape"):
        cyc.analyse(np.zeros(3), np.ones(3))


EXPECTED_VARS = {
    "truth": ("time", "state"), "obs_value": ("time", "obs"), "forecast_mean": ("time", "state"),
    "analysis_mean": ("time", "state"), "forecast_std": ("time", "state"),
    "analysis_std": ("time", "state"), "rmse_forecast": ("time",), "rmse_analysis": ("time",),
    "spread_forecast": ("time",), "spread_analysis": ("time",), "crps_analysis": ("time",),
    "innovation_chi2": ("time",), "rank_histogram": ("time", "rank"),
    "forecast": ("time", "member", "state"), "analysis": ("time", "member", "state"),
}


def test_run_writes_the_documented_store(tmp_path):
    case = small_case(output={"block": 8, "store_ensemble": True})
    summary, store = run_case(case, store=tmp_path / "run.zarr")
    ds = xr.open_zarr(store)
    assert ds.sizes["time"] == 30 and ds.sizes["member"] == 12 and ds.sizes["state"] == 20
    assert ds.sizes["obs"] == 10 and ds.sizes["rank"] == 13
    for name, dims in EXPECTED_VARS.items():
        assert ds[name].dims == dims, name
    for name in list(ds.data_vars) + list(ds.coords):
        assert ds[name].attrs.get("units") and ds[name].attrs.get("long_name"), name
    assert ds["member"].attrs["standard_name"] == "realization"
    assert ds["time"].dtype == np.float64 and "since" not in ds["time"].attrs["units"]
    np.testing.assert_allclose(np.diff(ds.time.values), 0.05)
    assert ds.attrs["status"] == "complete" and ds.attrs["seed"] == 1
    assert ds.attrs["case_name"] == "t" and "latentda_version" in ds.attrs
    assert json.loads(ds.attrs["case_config"])["model"]["system"] == "lorenz96"
    # the stored means and scores agree with each other
    np.testing.assert_allclose(ds.analysis.mean("member"), ds.analysis_mean, atol=1e-12)
    rmse = np.sqrt(((ds.analysis_mean - ds.truth) ** 2).mean("state"))
    np.testing.assert_allclose(rmse, ds.rmse_analysis, rtol=1e-12)
    assert (ds.rank_histogram.sum("rank") == 20).all()
    assert summary["rmse_analysis"] == pytest.approx(float(ds.rmse_analysis[5:].mean()))


def test_runs_are_reproducible_and_seeded(tmp_path):
    case = small_case(filter={"method": "enkf", "inflation": 1.05})
    s1, p1 = run_case(case, store=tmp_path / "a.zarr")
    s2, p2 = run_case(case, store=tmp_path / "b.zarr")
    a, b = xr.open_zarr(p1), xr.open_zarr(p2)
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    s3, _ = run_case(small_case(seed=2, filter={"method": "enkf", "inflation": 1.05}),
                     write=False)
    assert s3["rmse_analysis"] != s1["rmse_analysis"]


def test_existing_store_is_refused_before_any_work(tmp_path):
    case = small_case()
    _, store = run_case(case, store=tmp_path / "r.zarr")
    before = xr.open_zarr(store).rmse_analysis.values.copy()
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare(case, store=store)
    np.testing.assert_array_equal(xr.open_zarr(store).rmse_analysis.values, before)
    run_case(small_case(seed=5), store=store, overwrite=True)
    assert xr.open_zarr(store).attrs["seed"] == 5


def test_user_observation_file_without_truth(tmp_path):
    m = Lorenz96(n=20)
    H = Subset.every(20, 4)
    twin = twin_experiment(m, H, GaussianNoise.scalar(1.0, H.obs_dim), n_cycles=12, seed=0)
    twin.drop_vars(["truth", "initial_truth"]).to_netcdf(tmp_path / "obs.nc")
    case = small_case(observations={"file": str(tmp_path / "obs.nc")}, cycles=12)
    summary, store = run_case(case, store=tmp_path / "u.zarr")
    ds = xr.open_zarr(store)
    assert ds.sizes["obs"] == 5 and ds.attrs["has_truth"] == 0
    assert np.isnan(ds.rmse_analysis).all() and np.isfinite(ds.innovation_rms).all()
    np.testing.assert_array_equal(ds.obs_value.values, twin.obs_value.values)


def test_shallow_water_letkf_run_reports_skill_per_component(tmp_path):
    case = parse_case({
        "name": "sw", "seed": 2,
        "model": {"system": "shallow_water", "nx": 16, "ny": 16},
        "observations": {"operator": {"kind": "strided_grid", "stride": 4, "field": "h"},
                         "error_variance": 0.01, "every": 5},
        "ensemble": {"size": 8}, "filter": {"method": "letkf", "radius": 2.0e5,
                                            "inflation": 1.1},
        "cycles": 6, "output": {"block": 4},
    })
    summary, store = run_case(case, store=tmp_path / "sw.zarr")
    ds = xr.open_zarr(store)
    assert ds.sizes["component"] == 3 and ds.sizes["obs"] == 16 and ds.sizes["state"] == 768
    assert ds.component.attrs["flag_meanings"] == "h u v"
    h = (ds.field == 0).values
    err = (ds.analysis_mean - ds.truth).values[:, h]
    np.testing.assert_allclose(ds.rmse_analysis_by_component[:, 0], np.sqrt((err**2).mean(1)),
                               rtol=1e-12)
    assert summary["rmse_analysis_h"] == pytest.approx(float(
        ds.rmse_analysis_by_component[:, 0].mean()))
    # analysed heights beat the forecast where the observations are
    assert float(ds.rmse_analysis_by_component[:, 0].mean()) < float(
        ds.rmse_forecast_by_component[:, 0].mean())


def test_every_stored_name_is_documented(tmp_path):
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "output.md").read_text()
    case = small_case(output={"block": 8, "store_ensemble": True})
    _, store = run_case(case, store=tmp_path / "d.zarr")
    ds = xr.open_zarr(store)
    names = list(ds.data_vars) + list(ds.coords) + list(ds.dims) + list(ds.attrs)
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"docs/output.md does not document {missing}"
