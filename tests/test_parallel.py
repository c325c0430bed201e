"""Dask-parallel ensemble forecasts: identical results on every scheduler, batch size and
worker count, worker failures survived, clusters started only on demand and closed."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from latentda.config import CaseError, parse_case
from latentda.dynamics import Lorenz96, LotkaVolterra, ShallowWater2D
from latentda.experiment import run_case
from latentda.parallel import Forecaster, check_scheduler, member_batches

pytest.importorskip("distributed")


def _models():
    rng = np.random.default_rng(7)
    l96 = Lorenz96()
    sw = ShallowWater2D(nx=16, ny=16)
    lv = LotkaVolterra(augmented=True, param_spread=0.2)
    return [(l96, l96.climatology(23, rng, 200), 7),
            (sw, sw.sample_climatology(9, rng, spinup_steps=20), 5),
            (lv, lv.random_state(11, rng), 30)]


MODELS = _models()
IDS = ["lorenz96", "shallow_water", "lotka_volterra"]


class KillOnce(Lorenz96):
    """Lorenz-96 whose first batch stepped in a worker process kills that process (SIGKILL).

    The marker file records the killed pid, so the kill happens once in all.
    """

    def __init__(self, marker: str, client_pid: int) -> None:
        super().__init__()
        self.marker = marker
        self.client_pid = client_pid

    def _advance(self, E: np.ndarray, nsteps: int) -> np.ndarray:
        if os.getpid() != self.client_pid:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return super()._advance(E, nsteps)


@pytest.fixture(scope="module")
def cluster():
    """A real LocalCluster: 2 worker processes with 1 thread each."""
    import cloudpickle
    from distributed import LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # KillOnce for the workers
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1", silence_logs=50,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
                      env={"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}) as lc:
        yield lc
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# ------------------------------------------------------------------------------ local


def test_import_starts_nothing():
    code = textwrap.dedent("""
        import multiprocessing, sys, threading
        import latentda.parallel, latentda.experiment, latentda.cli
        from latentda.parallel import Forecaster
        fc = [Forecaster(s) for s in ("auto", "threads", "processes")]
        assert not [m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")]
        assert multiprocessing.active_children() == [], multiprocessing.active_children()
        assert threading.active_count() == 1, threading.enumerate()
        assert all(f.client is None for f in fc)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize(("model", "E", "nsteps"), MODELS, ids=IDS)
def test_models_pickle_and_every_batching_is_bit_identical(model, E, nsteps):
    ref = model.step(E, nsteps)
    assert np.array_equal(model.step(E, nsteps), ref)  # deterministic: no hidden randomness
    clone = pickle.loads(pickle.dumps(model))
    assert np.array_equal(clone.step(E, nsteps), ref)
    N = E.shape[0]
    for b in (1, 2, 4, N - 1, N, None):
        out = Forecaster("synchronous", batch_size=b).step(model, E, nsteps)
        assert np.array_equal(out, ref), f"synchronous, batch {b}"
    for workers, b in ((2, 3), (3, 1), (2, None)):
        fc = Forecaster("threads", n_workers=workers, batch_size=b)
        assert np.array_equal(fc.step(model, E, nsteps), ref), f"threads {workers}, batch {b}"
        assert fc.last_mode == "threads"
    # a single member forecast alone equals its row of the batched forecast
    assert np.array_equal(model.step(E[N // 2], nsteps)[0], ref[N // 2])


def test_member_batches_cover_the_ensemble():
    for N, b in ((1, 1), (10, 3), (10, 10), (10, 20), (64, 16)):
        sl = member_batches(N, b)
        idx = np.concatenate([np.arange(N)[s] for s in sl])
        assert np.array_equal(idx, np.arange(N))
        assert max(s.stop - s.start for s in sl) <= b


def test_auto_is_synchronous_for_small_work_and_threads_above():
    l96 = Lorenz96()
    E = l96.climatology(40, np.random.default_rng(1), 50)
    fc = Forecaster()
    out = fc.step(l96, E, 1)
    assert fc.last_mode == "synchronous"  # 40 x 40 x 1 is far below the threshold
    big = Forecaster(n_workers=2, auto_threshold=1000)
    assert np.array_equal(big.step(l96, E, 1), out) and big.last_mode == "threads"
    one = Forecaster(n_workers=1, auto_threshold=0)
    one.step(l96, E, 1)
    assert one.last_mode == "synchronous"  # one core: never pay for threads
    assert fc.mode_for(40, 40, 10**6) == ("threads" if fc.workers() > 1 else "synchronous")


def test_dask_array_in_dask_array_out_locally():
    sw, E, k = MODELS[1]
    fc = Forecaster("threads", n_workers=2)
    D = fc.to_dask(E, batch_size=4)
    assert D.chunks[0] == (4, 4, 1) and D.chunks[1] == (E.shape[1],)
    out = fc.step(sw, D, k)
    assert out.chunks[0] == (4, 4, 1)
    assert np.array_equal(out.compute(), sw.step(E, k))
    import dask.array as da

    # chunks split across variables are regrouped into whole members
    split = da.from_array(E, chunks=(3, 100))
    assert np.array_equal(Forecaster("synchronous").step(sw, split, k).compute(), sw.step(E, k))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"scheduler": "fast"}, "scheduler must be one of"),
     ({"scheduler": "localhost:8786"}, "tcp://localhost:8786"),
     ({"scheduler": ""}, "scheduler must be one of"),
     ({"scheduler": "synchronous", "n_workers": 2}, "n_workers applies"),
     ({"scheduler": "tcp://127.0.0.1:1", "n_workers": 2}, "n_workers applies"),
     ({"scheduler": "threads", "n_workers": 0}, "n_workers must be >= 1"),
     ({"batch_size": 0}, "batch_size must be >= 1"),
     ({"scheduler": "no/such/scheduler.json"}, "scheduler file .* does not exist")],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Forecaster(**kwargs)


def test_distributed_needs_an_address(monkeypatch):
    import dask

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None}), \
            pytest.raises(ValueError, match="DASK_SCHEDULER_ADDRESS"):
        Forecaster("distributed")
    assert check_scheduler(" tcp://h:1 ") == "tcp://h:1"
    fc = Forecaster("threads")
    with pytest.raises(ValueError, match="E must have shape"):
        fc.step(Lorenz96(), np.zeros((3, 7)), 1)
    with pytest.raises(ValueError, match="nsteps must be >= 0"):
        fc.step(Lorenz96(), np.zeros((3, 40)), -1)


def _base(**over):
    d = {"name": "par", "model": {"system": "lorenz96", "n": 40}, "cycles": 8,
         "ensemble": {"size": 10}, "filter": {"method": "etkf", "inflation": 1.02},
         "observations": {"operator": {"kind": "every", "k": 2}},
         "output": {"block": 4, "store_ensemble": True}}
    d.update(over)
    return d


def _sw_case(**over):
    return _base(model={"system": "shallow_water", "nx": 16, "ny": 16}, cycles=4,
                 ensemble={"size": 8}, spinup_steps=40,
                 observations={"operator": {"kind": "strided_grid", "stride": 4},
                               "every": 5, "error_variance": 0.01}, **over)


def test_case_and_cli_options(tmp_path, capsys):
    with pytest.raises(CaseError, match="parallel.scheduler"):
        parse_case(_base(parallel={"scheduler": "gpu"}))
    with pytest.raises(CaseError, match="parallel.n_workers"):
        parse_case(_base(parallel={"n_workers": 0}))
    with pytest.raises(CaseError, match="parallel: n_workers applies"):
        parse_case(_base(parallel={"scheduler": "tcp://h:8786", "n_workers": 2}))
    assert parse_case(_base()).parallel.scheduler == "auto"
    from latentda.cli import main

    case = tmp_path / "par.yaml"
    case.write_text("# parallel\n" + yaml.safe_dump(_base()))
    ref, thr = tmp_path / "ref.zarr", tmp_path / "thr.zarr"
    assert main(["run", str(case), "--out", str(ref), "--quiet", "--scheduler",
                 "synchronous"]) == 0
    assert main(["run", str(case), "--out", str(thr), "--quiet", "--scheduler", "threads",
                 "--workers", "2", "--batch-size", "3"]) == 0
    with xr.open_zarr(ref) as a, xr.open_zarr(thr) as b:
        xr.testing.assert_equal(a, b)
        assert '"scheduler":"threads"' in b.attrs["case_config"].replace(" ", "")
    capsys.readouterr()
    assert main(["run", str(case), "--no-write", "--quiet", "--scheduler", "fast"]) == 2
    assert "parallel.scheduler" in capsys.readouterr().err
    assert main(["run", str(case), "--no-write", "--quiet", "--batch-size", "0"]) == 2
    assert "parallel.batch_size" in capsys.readouterr().err


# ------------------------------------------------------------------------------ clusters


@pytest.mark.parametrize("build", [_base, _sw_case], ids=["lorenz96", "shallow_water"])
def test_local_cluster_store_equals_synchronous(cluster, tmp_path, build):
    sync = parse_case(build(parallel={"scheduler": "synchronous"}))
    dist = parse_case(build(parallel={"scheduler": cluster.scheduler_address,
                                      "batch_size": 3}))
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Count(SchedulerPlugin):
        done = 0

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory" and "_step_batch" in str(key):
                Count.done += 1

    plugin = Count()
    cluster.scheduler.add_plugin(plugin, name="count-batches")
    try:
        s1, p1 = run_case(sync, store=tmp_path / "sync.zarr")
        s2, p2 = run_case(dist, store=tmp_path / "dist.zarr")
    finally:
        cluster.scheduler.remove_plugin(name="count-batches")
    n_batches = -(-sync.ensemble.size // 3)
    assert Count.done == sync.cycles * n_batches  # every forecast ran on the workers
    with xr.open_zarr(p1) as a, xr.open_zarr(p2) as b:
        assert "forecast" in a and a.sizes["time"] == sync.cycles
        xr.testing.assert_equal(a, b)
    np.testing.assert_equal(s1, s2)
    assert cluster.status.name == "running"  # connected, not owned: left running


def test_connected_forecaster_leaves_cluster_and_dask_arrays_stay_there(cluster):
    sw, E, k = MODELS[1]
    with Forecaster(cluster.scheduler_address) as fc:
        D = fc.to_dask(E, batch_size=2)
        out = fc.step(sw, D, k)
        assert out.chunks[0] == (2, 2, 2, 2, 1)
        assert fc.last_mode == "distributed"
        client = fc.client
        assert np.array_equal(client.compute(out, sync=True), sw.step(E, k))
        # persisted on the workers: the client holds one future per member chunk, no data
        from distributed import Future, futures_of

        assert all(isinstance(v, Future) for v in dict(out.__dask_graph__()).values())
        assert len(futures_of(out)) == 5
    assert client.status == "closed"
    assert cluster.status.name == "running"


def test_processes_scheduler_starts_and_closes_its_own_cluster():
    sw, E, k = MODELS[1]
    fc = Forecaster("processes", n_workers=2, batch_size=2)
    assert fc.client is None  # nothing before the first forecast
    try:
        assert np.array_equal(fc.step(sw, E, k), sw.step(E, k))
        client = fc.client
        assert len(client.nthreads()) == 2 and set(client.nthreads().values()) == {1}
        env = client.run(lambda: (os.environ.get("NUMBA_NUM_THREADS"),
                                  os.environ.get("OMP_NUM_THREADS"),
                                  __import__("numba").config.NUMBA_NUM_THREADS))
        assert set(env.values()) == {("1", "1", 1)}  # Numba read the cap at its import
        cluster = fc._cluster
    finally:
        fc.close()
    assert cluster.status.name == "closed" and client.status == "closed"
    fc.close()  # idempotent


def test_worker_killed_mid_forecast_is_retried(cluster, tmp_path):
    marker = tmp_path / "killed"
    model = KillOnce(str(marker), os.getpid())
    E = model.climatology(16, np.random.default_rng(3), 100)
    ref = Lorenz96().step(E, 400)
    with Forecaster(cluster.scheduler_address, batch_size=4) as fc:
        workers_before = set(fc.start().client.run(os.getpid).values())
        out = fc.step(model, E, 400)
        assert marker.exists(), "no worker was killed"
        killed = int(marker.read_text())
        assert killed in workers_before  # a worker process of the cluster died mid-forecast
        assert killed not in set(fc.client.run(os.getpid).values())
    assert np.array_equal(out, ref)


def test_changed_model_is_shipped_again(cluster):
    l96 = Lorenz96()
    E = l96.climatology(6, np.random.default_rng(5), 50)
    with Forecaster(cluster.scheduler_address) as fc:
        assert np.array_equal(fc.step(l96, E, 20), l96.step(E, 20))
        l96.F = 6.0  # the scattered copy on the workers is stale now
        assert np.array_equal(fc.step(l96, E, 20), Lorenz96(F=6.0).step(E, 20))


def test_scheduler_file(cluster, tmp_path):
    import json

    f = tmp_path / "scheduler.json"
    f.write_text(json.dumps({"address": cluster.scheduler_address}))
    lv, E, k = MODELS[2]
    with Forecaster(str(f)) as fc:
        assert np.array_equal(fc.step(lv, E, k), lv.step(E, k))
    assert Path(f).exists()
