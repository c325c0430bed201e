"""Reliability: kill and resume, one writer per store, divergence, hostile input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentda.config import CaseError, parse_case
from latentda.cycle import Cycle, DivergenceError
from latentda.dynamics import Lorenz96
from latentda.experiment import run_case
from latentda.filters import ETKF
from latentda.io import StoreLockedError, open_run, read_checkpoint
from latentda.obs_stream import ObservationStream
from latentda.observations import Subset

CASE = {
    "name": "rel", "seed": 4, "model": {"system": "lorenz96", "n": 40},
    "observations": {"operator": {"kind": "every", "k": 2}, "error_variance": 1.0},
    "ensemble": {"size": 20, "init": "perturbed_truth"},
    "filter": {"method": "etkf_adaptive"},  # carries state across cycles: resume must restore it
    "cycles": 1500, "burn_in": 10, "output": {"block": 25},
}


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "latentda.cli", "run", *args, "--quiet"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stored_cycles(store: Path) -> int:
    try:
        g = zarr.open_group(store, mode="r", use_consolidated=True)
        return int(g["time"].shape[0])
    except Exception:
        return 0


def _data(store: Path) -> xr.Dataset:
    ds = open_run(store).load()
    return ds.drop_attrs()


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    case = tmp_path / "rel.yaml"
    spec = {**CASE, "cycles": 1000}
    case.write_text(yaml.safe_dump(spec))
    ref, _ = run_case(parse_case(spec), store=tmp_path / "ref.zarr")
    store = tmp_path / "killed.zarr"
    rng = np.random.default_rng(0)
    kills = 0
    args = [str(case), "--out", str(store)]
    while kills < 5:
        proc = _cli(*args, cwd=tmp_path)
        target = _stored_cycles(store) + int(rng.integers(1, 120))
        deadline = time.time() + 60
        while _stored_cycles(store) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere in a block
        if proc.poll() is not None:
            break  # it finished before we could kill it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        args = [str(case), "--out", str(store), "--resume", "--break-lock"]
    assert kills >= 5, "the run finished too early to be killed 5 times"
    proc = _cli(*args, cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    a, b = _data(tmp_path / "ref.zarr"), _data(store)
    xr.testing.assert_identical(a, b)
    assert open_run(store).attrs["status"] == "complete"
    n, arrays, meta = read_checkpoint(store)
    assert n == 1000 and meta["cycle_index"] == 1000 and arrays["ensemble"].shape == (20, 40)


def test_resume_refuses_another_case(tmp_path):
    store = tmp_path / "r.zarr"
    run_case(parse_case({**CASE, "cycles": 60}), store=store)
    other = parse_case({**CASE, "cycles": 80, "seed": 5})
    with pytest.raises(ValueError, match="different case configuration"):
        run_case(other, store=store, resume=True)
    # the same case asking for more cycles extends the run, equal to a longer run
    longer = parse_case({**CASE, "cycles": 80})
    run_case(longer, store=store, resume=True)
    run_case(longer, store=tmp_path / "ref.zarr")
    xr.testing.assert_identical(_data(store), _data(tmp_path / "ref.zarr"))


def test_second_writer_is_refused_and_first_finishes(tmp_path):
    case = tmp_path / "rel.yaml"
    case.write_text(yaml.safe_dump({**CASE, "cycles": 800}))
    store = tmp_path / "w.zarr"
    first = _cli(str(case), "--out", str(store), cwd=tmp_path)
    deadline = time.time() + 60
    while _stored_cycles(store) == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before the second could start"
    second = subprocess.run([sys.executable, "-m", "latentda.cli", "run", str(case), "--out",
                             str(store), "--overwrite", "--quiet"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "one writer per store" in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    ds = open_run(store)
    assert ds.attrs["status"] == "complete" and ds.sizes["time"] == 800
    assert not (tmp_path / "w.zarr.lock").exists()


def test_stale_lock_needs_break_lock(tmp_path):
    store = tmp_path / "s.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / "s.zarr.lock").write_text(json.dumps({"pid": dead.pid,
                                                      "host": socket.gethostname()}))
    case = parse_case({**CASE, "cycles": 5, "burn_in": 0})
    with pytest.raises(StoreLockedError, match="stale lock"):
        run_case(case, store=store)
    run_case(case, store=store, break_lock=True)
    assert open_run(store).sizes["time"] == 5


def test_divergence_stops_cleanly_with_status(tmp_path):
    diverging = {**CASE, "ensemble": {"size": 3, "init": "perturbed_truth",
                                      "perturbation_std": 0.3},
                 "filter": {"method": "etkf"}, "cycles": 400, "divergence": {"max_rmse": 3.0},
                 "output": {"block": 7}}
    case = tmp_path / "div.yaml"
    case.write_text(yaml.safe_dump(diverging))
    store = tmp_path / "div.zarr"
    proc = subprocess.run([sys.executable, "-m", "latentda.cli", "run", str(case), "--out",
                           str(store), "--quiet"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert "diverged at time" in proc.stderr and "max_rmse" in proc.stderr
    ds = open_run(store)
    assert ds.attrs["status"].startswith("diverged at time")
    t_bad = float(ds.attrs["status"].split("time ")[1].split(":")[0])
    assert ds.sizes["time"] >= 1 and float(ds.time[-1]) < t_bad
    assert (ds.rmse_analysis <= 3.0).all()  # every stored cycle is a good one


def test_ensemble_blow_up_is_a_divergence(tmp_path):
    blow = {**CASE, "cycles": 50, "ensemble": {"size": 5, "init": "perturbed_truth",
                                               "perturbation_std": 1.0e4}}
    with pytest.raises(DivergenceError, match="not finite"):
        run_case(parse_case(blow), store=tmp_path / "b.zarr")
    assert open_run(tmp_path / "b.zarr").attrs["status"].startswith("diverged at time")


def test_unstable_truth_is_refused_before_cycling(tmp_path):
    blow = {**CASE, "model": {"system": "lorenz96", "n": 40, "dt": 0.9}, "cycles": 50}
    with pytest.raises(CaseError, match="model.dt"):
        run_case(parse_case(blow), store=tmp_path / "u.zarr")
    assert not (tmp_path / "u.zarr").exists()


# ------------------------------------------------------------------ hostile input

@pytest.fixture(scope="module")
def small_cycle_parts():
    m = Lorenz96(n=12)
    H = Subset.every(12, 2)
    E0 = m.climatology(6, np.random.default_rng(0))
    return m, H, E0


finite_or_not = st.one_of(st.floats(-50, 50), st.just(np.nan), st.just(np.inf),
                          st.just(-np.inf))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(y=st.lists(finite_or_not, min_size=6, max_size=6))
def test_hostile_observation_values_are_masked_never_crash(small_cycle_parts, y):
    m, H, E0 = small_cycle_parts
    cyc = Cycle(m, ETKF(inflation=1.1), H, E0)
    cyc.forecast(m.dt)
    y = np.asarray(y)
    rec = cyc.analyse(y, np.ones(6))
    assert rec.obs_valid == int(np.isfinite(y).sum())
    assert np.all(np.isfinite(rec.analysis))
    if rec.obs_valid == 0:
        np.testing.assert_array_equal(rec.analysis, rec.forecast)


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(0, 4), st.integers(0, 7)),
       times=st.lists(st.one_of(st.floats(-1, 1), st.just(np.nan)), min_size=1, max_size=4))
def test_unreconcilable_observation_arrays_are_errors(shape, times):
    op = Subset.every(12, 2)
    vals = np.zeros(shape)
    try:
        s = ObservationStream(times=np.asarray(times), values=vals, variances=np.ones(6),
                              operator=op)
    except ValueError as err:
        assert any(w in str(err) for w in ("time", "obs_value", "obs_error_var"))
    else:
        assert vals.shape == (len(times), 6) and np.all(np.diff(s.times) > 0)


field_values = st.one_of(st.none(), st.integers(-5, 60), st.floats(-2, 50), st.just(np.nan),
                         st.text(max_size=4), st.booleans(), st.lists(st.integers(-2, 41),
                                                                      max_size=3))
FIELDS = [("ensemble", "size"), ("filter", "inflation"), ("filter", "radius"),
          ("filter", "method"), ("observations", "error_variance"), ("observations", "every"),
          ("observations", "missing_fraction"), ("model", "n"), ("model", "dt"), (None, "cycles"),
          (None, "burn_in"), ("output", "block"), ("observations", "operator")]


@settings(max_examples=int(os.environ.get("LATENTDA_HYPOTHESIS_EXAMPLES", 40)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), field_values), min_size=1,
                      max_size=3))
def test_generated_case_files_run_or_are_refused(tmp_path_factory, edits):
    d = json.loads(json.dumps({**CASE, "cycles": 4, "burn_in": 0}))
    for (section, key), value in edits:
        if section is None:
            d[key] = value
        else:
            d.setdefault(section, {})[key] = value
    try:
        case = parse_case(d)
    except CaseError as err:
        assert str(err).startswith("invalid case")
        return
    store = tmp_path_factory.mktemp("gen") / "g.zarr"
    try:
        run_case(case, store=store)
    except CaseError as err:  # refused before any cycling (e.g. an unstable model.dt)
        assert str(err).startswith("model:") and not store.exists()
        return
    except DivergenceError:
        assert open_run(store).attrs["status"].startswith("diverged")
        return
    ds = open_run(store)
    assert ds.attrs["status"] == "complete" and ds.sizes["time"] == case.cycles


def test_user_observation_times_off_the_model_grid_are_refused(tmp_path):
    times = np.array([0.05, 0.1, 0.17, 0.2])
    ds = xr.Dataset({"obs_value": (("time", "obs"), np.zeros((4, 2))),
                     "obs_error_var": ("obs", np.ones(2)),
                     "obs_state_index": ("obs", np.array([0, 5]))}, coords={"time": times})
    ds.to_netcdf(tmp_path / "o.nc")
    case = parse_case({**CASE, "observations": {"file": str(tmp_path / "o.nc")}, "cycles": 4,
                       "burn_in": 0, "ensemble": {"size": 5}})
    with pytest.raises(CaseError, match=r"time 0.17 \(time index 2\)"):
        run_case(case, store=tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
    ds.assign_coords(time=[0.05, 0.1, 0.1, 0.2]).to_netcdf(tmp_path / "dup.nc")
    dup = parse_case({**CASE, "observations": {"file": str(tmp_path / "dup.nc")}, "cycles": 4,
                      "burn_in": 0, "ensemble": {"size": 5}})
    with pytest.raises(ValueError, match="offending index 2"):
        run_case(dup, store=tmp_path / "y.zarr")
