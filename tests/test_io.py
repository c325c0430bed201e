"""Tests of the run output store (latentda.io): zarr v3 writer, reader, netCDF export."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
import xarray as xr
import zarr

import latentda
from latentda.io import RunWriter, VarSpec, export_netcdf, flag_coordinate, open_run, run_info

pytestmark = pytest.mark.filterwarnings("error")

N, NX, M, K = 4, 5, 3, 2  # members, state size, observations, latent size


def _a(long_name: str, units: str = "1") -> dict:
    return {"units": units, "long_name": long_name}


VARIABLES = [
    VarSpec("truth", ("state",), attrs=_a("true state", "m")),
    VarSpec("obs_value", ("obs",), "float32", attrs=_a("observed value", "m")),
    VarSpec("analysis", ("member", "state"), attrs=_a("analysis ensemble", "m")),
    VarSpec("latent_analysis", ("member", "latent"), attrs=_a("analysis codes")),
    VarSpec("rmse_analysis", (), attrs=_a("analysis RMSE", "m")),
    VarSpec("rank_hist", ("rank",), "int64", attrs=_a("rank histogram counts")),
    VarSpec("n_obs", (), "int32", attrs=_a("number of observations")),
    VarSpec("ood_flag", (), "bool", attrs={**_a("out-of-distribution flag"),
                                           "flag_values": [0, 1],
                                           "flag_meanings": "in_distribution ood"}),
]
COORDS = {
    "x": ("state", np.arange(NX, dtype=np.int32), _a("variable index on the ring")),
    "obs_index": ("obs", np.array([0, 2, 4]), _a("observed state index")),
}
SIZES = {"member": N, "latent": K, "rank": N + 1}
CONFIG = {"model": {"name": "lorenz96", "F": 8.0}, "filter": ["etkf", 1.02], "prior": None}


def make_writer(path, **kwargs) -> RunWriter:
    opts = dict(variables=VARIABLES, coords=COORDS, sizes=SIZES,
                attrs={"seed": 7, "case_name": "unit test", "config": CONFIG, "localize": True},
                block=3)
    opts.update(kwargs)
    return RunWriter(path, **opts)


def cycle(i: int) -> dict:
    """Values of cycle ``i``: distinct, deterministic, with a NaN for 'not available'."""
    rng = np.random.default_rng(1000 + i)
    obs = rng.normal(size=M).astype(np.float32)
    if i % 4 == 1:
        obs[1] = np.nan
    return {
        "truth": rng.normal(size=NX),
        "obs_value": obs,
        "analysis": rng.normal(size=(N, NX)),
        "latent_analysis": rng.normal(size=(N, K)),
        "rmse_analysis": float(i) + 0.5,
        "rank_hist": rng.integers(0, 10, size=N + 1),
        "n_obs": np.int32(M - (i % 4 == 1)),
        "ood_flag": bool(i % 3 == 0),
    }


def times(n: int) -> np.ndarray:
    return 0.05 * np.arange(1, n + 1)


def write_cycles(w: RunWriter, start: int, stop: int) -> None:
    for i in range(start, stop):
        w.write(times(stop)[i], **cycle(i))


def assert_cycles(ds: xr.Dataset, n: int) -> None:
    """The store holds cycles 0..n-1 in order with their exact values."""
    assert ds.sizes["time"] == n
    np.testing.assert_array_equal(ds["time"].values, times(n))
    for name in ds.data_vars:
        expected = np.stack([np.asarray(cycle(i)[name]) for i in range(n)])
        got = ds[name].values
        assert got.dtype == np.dtype(next(v.dtype for v in VARIABLES if v.name == name)), name
        np.testing.assert_array_equal(got, expected, err_msg=name)


# ---------------------------------------------------------------------------------------------


def test_round_trip_values_dims_and_attrs(tmp_path):
    path = tmp_path / "run.zarr"
    w = make_writer(path)
    write_cycles(w, 0, 7)
    w.close()
    ds = open_run(path).load()

    assert dict(ds.sizes) == {"time": 7, "member": N, "state": NX, "obs": M, "latent": K,
                              "rank": N + 1}
    assert_cycles(ds, 7)
    assert np.isnan(ds["obs_value"].values[1, 1])  # NaN stands for 'not available'
    for name, var in ds.variables.items():
        assert isinstance(var.attrs.get("units"), str) and var.attrs["units"], name
        assert isinstance(var.attrs.get("long_name"), str) and var.attrs["long_name"], name
    for spec in VARIABLES:
        assert ds[spec.name].dims == ("time", *spec.dims)
        assert ds[spec.name].attrs == spec.attrs
    # member: added automatically, integer, CF realization
    np.testing.assert_array_equal(ds["member"].values, np.arange(N))
    assert ds["member"].attrs["standard_name"] == "realization"
    np.testing.assert_array_equal(ds["x"].values, COORDS["x"][1])
    # time: plain float with units that are not a date reference
    assert ds["time"].dtype == np.float64
    assert ds["time"].attrs["units"] == "model time units"
    assert "since" not in ds["time"].attrs["units"]
    assert ds["time"].attrs["standard_name"] == "time" and ds["time"].attrs["axis"] == "T"
    # global attributes
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert ds.attrs["latentda_version"] == latentda.__version__
    assert ds.attrs["status"] == "complete"
    datetime.fromisoformat(ds.attrs["created"])
    assert ds.attrs["seed"] == 7 and ds.attrs["case_name"] == "unit test"
    assert json.loads(ds.attrs["config"]) == CONFIG  # nested values as JSON
    assert ds.attrs["localize"] == 1  # bools as ints (netCDF has no bool attribute)


def test_time_chunks_equal_block(tmp_path):
    path = tmp_path / "run.zarr"
    w = make_writer(path, block=4, chunks={"member": 3})
    write_cycles(w, 0, 5)
    w.close()
    ds = open_run(path)
    assert ds["analysis"].encoding["chunks"] == (4, 3, NX)
    assert ds["time"].encoding["chunks"] == (4,)
    assert np.isnan(ds["analysis"].encoding["_FillValue"])


def test_block_flushing_and_abandoned_writer(tmp_path):
    path = tmp_path / "run.zarr"
    w = make_writer(path, block=4)
    assert open_run(path).sizes["time"] == 0  # the store exists from the start
    seen = []
    for i in range(10):
        w.write(times(10)[i], **cycle(i))
        seen.append((w.n_written, w.n_buffered))
    assert seen == [(0, 1), (0, 2), (0, 3), (4, 0), (4, 1), (4, 2), (4, 3), (8, 0), (8, 1),
                    (8, 2)]
    assert open_run(path).sizes["time"] == 8
    del w  # abandoned without close: the flushed blocks stay readable, the buffer is lost
    ds = open_run(path).load()
    assert_cycles(ds, 8)
    assert ds.attrs["status"] == "running"


def test_partial_final_block(tmp_path):
    path = tmp_path / "run.zarr"
    w = make_writer(path, block=3)
    write_cycles(w, 0, 8)
    assert w.n_written == 6
    w.close()
    assert w.n_written == 8
    assert_cycles(open_run(path).load(), 8)


def test_manual_flush_mid_block_keeps_alignment(tmp_path):
    path = tmp_path / "run.zarr"
    w = make_writer(path, block=3)
    w.write(times(9)[0], **cycle(0))
    w.flush()  # 1 cycle: the next append starts inside a chunk
    w.flush()  # nothing buffered: no-op
    assert w.n_written == 1
    for i in range(1, 5):
        w.write(times(9)[i], **cycle(i))
    w.flush()
    for i in range(5, 9):
        w.write(times(9)[i], **cycle(i))
    w.close()
    assert_cycles(open_run(path).load(), 9)


def test_refuses_to_overwrite_and_old_store_intact(tmp_path):
    path = tmp_path / "run.zarr"
    with make_writer(path) as w:
        write_cycles(w, 0, 4)
    with pytest.raises(FileExistsError) as info:
        make_writer(path)
    assert str(path) in str(info.value) and "overwrite" in str(info.value)
    # invalid arguments with overwrite=True: error before anything is deleted
    with pytest.raises(ValueError, match="rank"):
        make_writer(path, overwrite=True, sizes={"member": N, "latent": K})
    with pytest.raises(ValueError, match="block"):
        make_writer(path, overwrite=True, block=0)
    ds = open_run(path).load()
    assert_cycles(ds, 4)
    assert ds.attrs["status"] == "complete"


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "run.zarr"
    with make_writer(path) as w:
        write_cycles(w, 0, 5)
    other = [VarSpec("rmse_analysis", (), attrs=_a("analysis RMSE", "m"))]
    with RunWriter(path, variables=other, coords={}, block=2, overwrite=True) as w:
        assert open_run(path).attrs["status"] == "running"
        w.write(1.0, rmse_analysis=0.25)
    ds = open_run(path).load()
    assert list(ds.data_vars) == ["rmse_analysis"]
    np.testing.assert_array_equal(ds["rmse_analysis"].values, [0.25])
    np.testing.assert_array_equal(ds["time"].values, [1.0])


def test_overwrite_refuses_to_delete_non_store(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        make_writer(target, overwrite=True)
    assert (target / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize(("values", "match"), [
    ({"analysis": np.zeros((N, NX + 1))}, r"'analysis' must have shape \(4, 5\)"),
    ({"rmse_analysis": np.zeros(2)}, r"'rmse_analysis' must have shape \(\)"),
    ({"rank_hist": np.full(N + 1, 0.5)}, r"'rank_hist' has dtype float64"),
    ({"ood_flag": np.array("yes")}, r"'ood_flag' has dtype"),
    ({"bogus": 1.0}, r"unknown variable\(s\) \['bogus'\]"),
])
def test_bad_values_name_the_variable(tmp_path, values, match):
    w = make_writer(tmp_path / "run.zarr")
    w.write(0.1, **cycle(0))
    with pytest.raises(ValueError, match=match):
        w.write(0.2, **{**cycle(1), **values})
    assert w.n_buffered == 1  # the bad cycle was not buffered
    w.close()
    assert open_run(tmp_path / "run.zarr").sizes["time"] == 1


def test_missing_variable_and_time_order(tmp_path):
    w = make_writer(tmp_path / "run.zarr")
    values = cycle(0)
    del values["truth"]
    with pytest.raises(ValueError, match=r"\['truth'\] missing"):
        w.write(0.1, **values)
    w.write(0.1, **cycle(0))
    with pytest.raises(ValueError, match="time must increase"):
        w.write(0.1, **cycle(1))
    with pytest.raises(ValueError, match="time must be finite"):
        w.write(float("nan"), **cycle(1))
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(0.2, **cycle(1))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "a", "dims": ("member",), "attrs": {"long_name": "x"}}, "'units'"),
    ({"name": "a", "dims": (), "attrs": {"units": "m"}}, "'long_name'"),
    ({"name": "a", "dims": ("time", "state"), "attrs": _a("x")}, "exclude 'time'"),
    ({"name": "a", "dims": "state", "attrs": _a("x")}, "tuple"),
    ({"name": "a", "dims": (), "dtype": "complex128", "attrs": _a("x")}, "dtype must be one of"),
    ({"name": "a", "dims": (), "attrs": {**_a("x"), "_FillValue": 0.0}}, "_FillValue"),
])
def test_varspec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VarSpec(**kwargs)


def test_writer_argument_validation(tmp_path):
    path = tmp_path / "run.zarr"
    with pytest.raises(ValueError, match="since"):
        make_writer(path, time_attrs={"units": "days since 2000-01-01"})
    with pytest.raises(ValueError, match="coords\\['names'\\] must be numeric"):
        make_writer(path, coords={**COORDS, "names": ("obs", np.array(["a", "b", "c"]), _a("n"))})
    with pytest.raises(ValueError, match="coords\\['x'\\] must have .*'units'"):
        make_writer(path, coords={"x": ("state", np.arange(NX), {"long_name": "x"})})
    with pytest.raises(ValueError, match=r"sizes\['state'\] = 6 disagrees"):
        make_writer(path, sizes={**SIZES, "state": NX + 1})
    with pytest.raises(ValueError, match="'status'"):
        make_writer(path, attrs={"status": "mine"})
    with pytest.raises(ValueError, match="JSON"):
        make_writer(path, attrs={"bad": object()})
    assert not path.exists()  # nothing was created by the failed attempts


def test_flag_coordinate_round_trip(tmp_path):
    path = tmp_path / "run.zarr"
    coord = flag_coordinate("state", ["prey", "predator"], "species")
    spec = VarSpec("truth", ("state",), attrs=_a("population", "individuals"))
    member = ("member", np.arange(3), _a("member number"))  # no standard_name given
    with RunWriter(path, variables=[spec, VarSpec("analysis", ("member", "state"),
                                                  attrs=_a("analysis", "individuals"))],
                   coords={"species": coord, "member": member}) as w:
        w.write(0.0, truth=[50.0, 100.0], analysis=np.ones((3, 2)))
    ds = open_run(path)
    assert ds["species"].attrs["flag_meanings"] == "prey predator"
    assert list(ds["species"].attrs["flag_values"]) == [0, 1]
    assert ds["member"].attrs["standard_name"] == "realization"
    with pytest.raises(ValueError, match="whitespace"):
        flag_coordinate("state", ["two words"], "bad")


def test_netcdf_export_round_trip(tmp_path):
    path = tmp_path / "run.zarr"
    with make_writer(path) as w:
        write_cycles(w, 0, 8)
    out = export_netcdf(path, tmp_path / "run.nc")
    assert out == tmp_path / "run.nc"
    zs = open_run(path).load()
    with xr.open_dataset(out, engine="netcdf4") as nc:
        nc = nc.load()
    assert nc.identical(zs)  # values, dims, coordinates, variable and global attributes
    assert nc["ood_flag"].dtype == bool and nc["time"].dtype == np.float64
    assert json.loads(nc.attrs["config"]) == CONFIG
    with pytest.raises(FileExistsError, match="overwrite"):
        export_netcdf(path, out)
    with make_writer(path, overwrite=True) as w:
        write_cycles(w, 0, 2)
    export_netcdf(path, out, overwrite=True)
    with xr.open_dataset(out, engine="netcdf4") as nc:
        assert nc.sizes["time"] == 2


def test_run_info_summary(tmp_path):
    path = tmp_path / "run.zarr"
    with make_writer(path) as w:
        write_cycles(w, 0, 8)
    text = run_info(path)
    for spec in VARIABLES:
        assert spec.name in text and spec.attrs["long_name"] in text
    assert "[m]" in text
    assert "cycles: 8" in text
    assert "status: complete" in text and "seed: 7" in text and "unit test" in text
    assert f"{times(8)[0]:g} .. {times(8)[-1]:g}" in text
    assert latentda.__version__ in text
    with pytest.raises(FileNotFoundError, match="no run store"):
        run_info(tmp_path / "missing.zarr")


def test_context_manager_records_failure(tmp_path):
    path = tmp_path / "run.zarr"
    with pytest.raises(RuntimeError, match="boom"), make_writer(path, block=3) as w:
        write_cycles(w, 0, 5)
        raise RuntimeError("boom")
    assert w.closed
    ds = open_run(path).load()
    assert ds.attrs["status"].startswith("failed: RuntimeError") and "boom" in ds.attrs["status"]
    assert_cycles(ds, 5)  # the complete buffered cycles were flushed


def test_close_with_custom_status_and_twice(tmp_path):
    path = tmp_path / "run.zarr"
    w = make_writer(path)
    write_cycles(w, 0, 2)
    w.close(status="diverged at cycle 2")
    w.close()  # no-op
    assert open_run(path).attrs["status"] == "diverged at cycle 2"


def test_interrupted_flush_is_repaired(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    w = make_writer(path, block=3)
    write_cycles(w, 0, 3)
    real_resize = zarr.Array.resize
    calls = {"n": 0}

    def flaky_resize(self, *args, **kwargs):
        # the process is interrupted after some arrays grew (and were written), the others not
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_resize(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Array, "resize", flaky_resize)
    with pytest.raises(OSError, match="disk full"):
        write_cycles(w, 3, 6)
    assert (w.n_written, w.n_buffered) == (3, 3)
    monkeypatch.undo()
    write_cycles(w, 6, 7)  # retries the failed block first, then buffers cycle 6
    w.close()
    assert_cycles(open_run(path).load(), 7)
