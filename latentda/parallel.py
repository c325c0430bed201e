"""Ensemble forecasts mapped over Dask: batches of members on a chosen scheduler.

A :class:`Forecaster` splits an ensemble ``E`` (N, n) into batches of members
(never one task per member), runs ``model.step`` on every batch and stacks the
results. Where the batches run is the ``scheduler``:

``"synchronous"``
    in the calling thread, one batch after the other, without building a graph;
``"threads"``
    Dask's threaded scheduler in this process (the Numba kernels are
    ``nogil=True``, so threads run them in parallel);
``"processes"``
    a ``distributed.LocalCluster`` of ``n_workers`` processes with one thread
    each, started on first use and shut down by :meth:`Forecaster.close`;
``"distributed"``
    the existing cluster named by ``DASK_SCHEDULER_ADDRESS`` (or Dask's
    ``scheduler-address`` config);
an address (``"tcp://host:8786"``) or a scheduler file (``"scheduler.json"``)
    an existing cluster; :meth:`Forecaster.close` only disconnects from it;
``"auto"`` (default)
    synchronous when a forecast holds less than :data:`AUTO_THRESHOLD`
    member-variable-steps (there the Dask overhead would cost more than the
    second core saves) or when only one core is usable, threads otherwise.

Results are bit-identical whatever the scheduler, the number of workers and the
batch size: every system integrates each member on its own with deterministic,
serial kernels (no ``parallel=True``, no fastmath), and no forecast draws random
numbers (tasks are still submitted with ``pure=False``, so nothing is served
from a cache). A model whose forecast needs randomness must draw it from
per-member streams, ``numpy.random.SeedSequence(seed).spawn(N)``, never from a
global generator.

Nothing starts at import: Dask is imported, and clusters started or connected,
only when a forecast (or :meth:`Forecaster.start`) needs them. Worker processes
started here run every library with one thread (``NUMBA_NUM_THREADS``,
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` = 1; torch
reads ``OMP_NUM_THREADS``), set through Dask's ``distributed.nanny.pre-spawn-environ``
(which, as for Dask's own defaults, also writes them into this process's
environment); under threads, BLAS/OpenMP pools and torch are capped to one
thread while the batches run. Ensemble batches are scattered to the
workers (never embedded in the task graph); a batch lost with a dying worker is
scattered again and resubmitted (``retries``). Only the caller writes stores:
workers return arrays, so each zarr store keeps a single writer.

Large ensembles can stay on the cluster: :meth:`Forecaster.to_dask` gives a Dask
array chunked by member, and :meth:`Forecaster.step` maps a Dask array to a
(persisted) Dask array without gathering it on the client.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from latentda._validate import check_ensemble, check_int
from latentda.dynamics.base import Dynamics

__all__ = [
    "AUTO_THRESHOLD",
    "SCHEDULERS",
    "Forecaster",
    "check_scheduler",
    "member_batches",
    "usable_cores",
]

#: scheduler names (besides an address or a scheduler file)
SCHEDULERS = ("auto", "synchronous", "threads", "processes", "distributed")
#: address schemes of distributed schedulers
ADDRESS_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")
#: work, in member-variable-steps (N * n * nsteps), below which "auto" stays synchronous.
#: Measured (benchmarks/scaling.py, 2 cores): the threaded path costs 0.2 ms (bare Dask
#: scheduler, quiet machine) to 0.8 ms (shared machine) per forecast and the fastest kernel
#: (Lorenz-96) runs ~3.6e8 variable-steps/s, so two threads break even at 2 * overhead * rate
#: = 1.5e5-6e5; measured, threads lose at 8e5 (0.9x) and win at 3.2e6 (1.2x).
AUTO_THRESHOLD = 2_000_000
#: environment variables that size the thread pools of Numba, OpenMP (torch), MKL, OpenBLAS
INNER_THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                     "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def usable_cores() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_scheduler(value: Any, name: str = "scheduler") -> str:
    """Validate a scheduler choice and return it as a string.

    Accepted: one of :data:`SCHEDULERS`, a scheduler address (``tcp://host:8786``
    and the other schemes of :data:`ADDRESS_SCHEMES`) or the path of a Dask
    scheduler file (``*.json``; it must exist when the forecaster connects).

    Raises
    ------
    ValueError
        Naming ``name`` and the allowed values.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be one of {', '.join(SCHEDULERS)}, a scheduler address "
                         f"such as tcp://host:8786, or a scheduler file *.json (got {value!r})")
    v = value.strip()
    if v in SCHEDULERS or v.startswith(ADDRESS_SCHEMES) or v.endswith(".json"):
        return v
    hint = ""
    if "://" in v:
        hint = f"; address schemes are {', '.join(s[:-3] for s in ADDRESS_SCHEMES)}"
    elif ":" in v:
        hint = f"; write the address with its scheme, e.g. tcp://{v}"
    raise ValueError(f"{name} must be one of {', '.join(SCHEDULERS)}, a scheduler address "
                     f"such as tcp://host:8786, or a scheduler file *.json (got {v!r}){hint}")


def member_batches(N: int, batch_size: int) -> list[slice]:
    """Consecutive member slices of at most ``batch_size`` members covering ``range(N)``."""
    N = check_int("N", N, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    return [slice(a, min(a + batch_size, N)) for a in range(0, N, batch_size)]


def _step_batch(model: Dynamics, E: np.ndarray, nsteps: int) -> np.ndarray:
    """The task run on every batch: ``model.step`` (module level, so it pickles by name).

    Arrays unpickled from the network can be unaligned, which Numba treats as a new
    signature (compiled again in every worker, writing its cache at once): copy them.
    """
    if not E.flags.aligned:
        E = E.copy()
    return model.step(E, nsteps)


def _step_block(E: np.ndarray, model: Dynamics, nsteps: int) -> np.ndarray:
    """``map_blocks`` form of :func:`_step_batch` (the block comes first)."""
    return _step_batch(model, E, nsteps)


def _is_dask_array(E: Any) -> bool:
    return type(E).__module__.startswith("dask.array") and hasattr(E, "chunks")


def _is_client(obj: Any) -> bool:
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "scatter")


_CONTROLLER: Any = None


@contextlib.contextmanager
def _inner_threads_capped() -> Iterator[None]:
    """BLAS/OpenMP pools and torch at one thread while worker threads run kernels."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        with _CONTROLLER.limit(limits=1):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)


class Forecaster:
    """Run ensemble forecasts over batches of members on a Dask scheduler.

    Parameters
    ----------
    scheduler : str or distributed.Client
        ``"auto"`` (default), ``"synchronous"``, ``"threads"``, ``"processes"``,
        ``"distributed"`` (the cluster at ``DASK_SCHEDULER_ADDRESS``), a scheduler
        address ``"tcp://host:8786"``, a scheduler file ``"*.json"``, or (Python
        API only) a connected ``distributed.Client``, which is used and never closed.
    n_workers : int, optional
        Threads (``threads``, ``auto``) or worker processes (``processes``); default:
        the usable cores. Not allowed for ``synchronous`` or an existing cluster.
    batch_size : int, optional
        Members per task. Default: the whole ensemble when synchronous, else
        ``ceil(N / (2 * workers))`` (two batches per worker, for load balance).
    retries : int
        How often a batch lost with a dying worker is scattered and submitted again.
    auto_threshold : int
        Work (``N * n * nsteps``) below which ``auto`` runs synchronously.

    Notes
    -----
    Use it as a context manager, or call :meth:`close`: a cluster started here is
    shut down; a cluster connected to is left running. Nothing is started before
    :meth:`start` or the first forecast that needs it.
    """

    def __init__(self, scheduler: Any = "auto", n_workers: int | None = None,
                 batch_size: int | None = None, *, retries: int = 3,
                 auto_threshold: int = AUTO_THRESHOLD) -> None:
        self._given_client = scheduler if _is_client(scheduler) else None
        self.scheduler = "client" if self._given_client is not None else check_scheduler(
            scheduler)
        local = self.scheduler in ("auto", "threads", "processes")
        if n_workers is not None:
            n_workers = check_int("n_workers", n_workers, min_value=1)
            if not local:
                raise ValueError(f"n_workers applies to the auto, threads and processes "
                                 f"schedulers (scheduler is {self.scheduler!r}); remove it")
        self.n_workers = n_workers
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size,
                                                                    min_value=1)
        self.retries = check_int("retries", retries, min_value=0)
        self.auto_threshold = check_int("auto_threshold", auto_threshold, min_value=0)
        if self.scheduler.endswith(".json") and not Path(self.scheduler).is_file():
            raise ValueError(f"scheduler file {self.scheduler} does not exist; start the "
                             "cluster first (dask scheduler --scheduler-file ...) or give "
                             "its address")
        if self.scheduler == "distributed" and not self._env_address():
            raise ValueError("scheduler 'distributed' connects to the cluster at "
                             "DASK_SCHEDULER_ADDRESS, which is not set; set it or give the "
                             "address (tcp://host:8786) or a scheduler file")
        self._client: Any = self._given_client
        self._cluster: Any = None
        self._model_cache: tuple[bytes, Any] | None = None
        self._warm: set[type] = set()
        #: the path taken by the last forecast: synchronous, threads or distributed
        self.last_mode: str | None = None
        #: batches scattered and submitted again after their worker died (all forecasts)
        self.resubmitted = 0

    @classmethod
    def from_config(cls, cfg: Any) -> Forecaster:
        """A forecaster from a case's ``parallel`` section (scheduler, n_workers, batch_size)."""
        return cls(cfg.scheduler, n_workers=cfg.n_workers, batch_size=cfg.batch_size)

    @staticmethod
    def _env_address() -> str | None:
        import importlib.util

        addr = os.environ.get("DASK_SCHEDULER_ADDRESS")
        if addr or importlib.util.find_spec("dask") is None:
            return addr
        import dask

        return dask.config.get("scheduler-address", None)

    def __repr__(self) -> str:
        return (f"Forecaster(scheduler={self.scheduler!r}, n_workers={self.n_workers}, "
                f"batch_size={self.batch_size})")

    # ------------------------------------------------------------------ lifecycle

    @property
    def distributed(self) -> bool:
        """Whether forecasts run on a distributed cluster (local processes or remote)."""
        return self.scheduler not in ("auto", "synchronous", "threads")

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (None before :meth:`start` or when local)."""
        return self._client

    def start(self) -> Forecaster:
        """Start the local cluster or connect to the remote one now (idempotent).

        For local schedulers this does nothing. Call it before long preparations so
        that an unreachable cluster fails fast.
        """
        if not self.distributed or self._client is not None:
            return self
        from distributed import Client

        if self.scheduler == "processes":
            import logging

            import dask
            from distributed import LocalCluster

            n = self.n_workers or usable_cores()
            # set before each worker process is spawned (also on restarts), so they hold
            # even for libraries imported while the child unpickles its __main__ module
            key = "distributed.nanny.pre-spawn-environ"
            caps = {**dask.config.get(key, {}), **dict.fromkeys(INNER_THREAD_VARS, 1)}
            with dask.config.set({key: caps}):
                self._cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None,  # and its health/HTTP routes on a free port:
                    scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
                    silence_logs=logging.ERROR)
            try:
                self._client = Client(self._cluster, set_as_default=False)
            except BaseException:
                self._cluster.close()
                self._cluster = None
                raise
        elif self.scheduler.endswith(".json"):
            self._client = Client(scheduler_file=self.scheduler, set_as_default=False)
        else:
            address = self._env_address() if self.scheduler == "distributed" else self.scheduler
            self._client = Client(address, set_as_default=False)
        return self

    def close(self) -> None:
        """Shut down a cluster started here; disconnect from (never stop) a connected one."""
        client, cluster = self._client, self._cluster
        self._model_cache = None
        if client is not None and client is not self._given_client:
            self._client = None
            client.close()
        if cluster is not None:
            self._cluster = None
            cluster.close()

    def __enter__(self) -> Forecaster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ decisions

    def workers(self) -> int:
        """Worker threads the batches are spread over (1 when synchronous)."""
        if self.scheduler == "synchronous":
            return 1
        if self.distributed:
            if self._client is None:
                return self.n_workers or usable_cores()
            return max(1, sum(self._client.nthreads().values()))
        return self.n_workers or usable_cores()

    def mode_for(self, N: int, n: int, nsteps: int) -> str:
        """The path a forecast of ``N`` members of size ``n`` over ``nsteps`` takes.

        Returns ``"synchronous"``, ``"threads"`` or ``"distributed"``.
        """
        if self.distributed:
            return "distributed"
        if self.scheduler != "auto":
            return self.scheduler
        if N < 2 or self.workers() < 2 or N * n * nsteps < self.auto_threshold:
            return "synchronous"
        return "threads"

    def batch_for(self, N: int, mode: str) -> int:
        """Members per task for an ensemble of ``N`` on path ``mode``."""
        if self.batch_size is not None:
            return min(self.batch_size, N)
        if mode == "synchronous":
            return N
        return max(1, math.ceil(N / (2 * self.workers())))

    # ------------------------------------------------------------------ forecasts

    def step(self, model: Dynamics, E: Any, nsteps: int = 1) -> Any:
        """Advance every member of ``E`` by ``nsteps`` model steps.

        Parameters
        ----------
        model : Dynamics
            The system; it is pickled to process workers.
        E : ndarray (N, n) or dask.array.Array
            The ensemble, members first. A Dask array gives a persisted Dask array
            chunked by member (it stays on the cluster for distributed schedulers).
        nsteps : int
            Model steps (>= 0).

        Returns
        -------
        ndarray or dask.array.Array, shape (N, n)
            Bit-identical to ``model.step(E, nsteps)``.
        """
        if not isinstance(model, Dynamics):
            raise ValueError(f"model must be a latentda Dynamics (got {type(model).__name__})")
        nsteps = check_int("nsteps", nsteps, min_value=0)
        if _is_dask_array(E):
            return self._step_dask(model, E, nsteps)
        E = check_ensemble("E", E, model.state_dim)
        N = E.shape[0]
        mode = self.mode_for(N, model.state_dim, nsteps)
        self.last_mode = mode
        if nsteps == 0:
            return E.copy()
        slices = member_batches(N, self.batch_for(N, mode))
        if mode == "synchronous":
            parts = [_step_batch(model, E[s], nsteps) for s in slices]
        elif mode == "threads":
            parts = self._run_threads(model, E, nsteps, slices)
        else:
            parts = self._run_distributed(model, E, nsteps, slices)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _run_threads(self, model: Dynamics, E: np.ndarray, nsteps: int,
                     slices: list[slice]) -> list[np.ndarray]:
        import dask.threaded

        name = f"latentda-forecast-{uuid.uuid4().hex}"
        dsk = {(name, i): (_step_batch, model, E[s], nsteps) for i, s in enumerate(slices)}
        keys = [(name, i) for i in range(len(slices))]
        with _inner_threads_capped():
            return list(dask.threaded.get(dsk, keys, num_workers=self.workers()))

    def _model_future(self, model: Dynamics, refresh: bool = False) -> Any:
        """The model scattered to every worker once (again when it changed or was lost)."""
        try:
            blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):  # e.g. defined in __main__
            import cloudpickle

            blob = cloudpickle.dumps(model)
        digest = hashlib.sha256(blob).digest()
        cached = self._model_cache
        if (not refresh and cached is not None and cached[0] == digest
                and cached[1].status == "finished"):
            return cached[1]
        fut = self._client.scatter(model, broadcast=True, hash=False)
        self._model_cache = (digest, fut)
        return fut

    def _warm_locally(self, model: Dynamics, E: np.ndarray) -> None:
        """Load/compile the kernel here first, so workers never write Numba's cache at once."""
        if type(model) not in self._warm:
            model.step(E[:1], 1)
            self._warm.add(type(model))

    def _run_distributed(self, model: Dynamics, E: np.ndarray, nsteps: int,
                         slices: list[slice]) -> list[np.ndarray]:
        from concurrent.futures import CancelledError

        self.start()
        client = self._client
        self._warm_locally(model, E)
        mfut = self._model_future(model)
        data = client.scatter([E[s] for s in slices], hash=False)
        futs = [client.submit(_step_batch, mfut, d, nsteps, pure=False) for d in data]
        del data
        try:
            return list(client.gather(futs))  # all batches at once, fetched concurrently
        except CancelledError:
            pass  # a batch was lost with a dying worker: collect one by one and resubmit
        out: list[np.ndarray] = []
        for i, s in enumerate(slices):
            for attempt in range(self.retries + 1):
                try:
                    out.append(futs[i].result())
                    break
                except CancelledError as err:  # its input was lost with a dying worker
                    if attempt == self.retries:
                        raise RuntimeError(
                            f"forecast batch of members {s.start}..{s.stop - 1} was lost "
                            f"{attempt + 1} times with dying workers; check the workers' "
                            f"memory and logs, or raise retries") from err
                    self.resubmitted += 1
                    mfut = self._model_future(model, refresh=mfut.status != "finished")
                    d = client.scatter(E[s], hash=False)
                    futs[i] = client.submit(_step_batch, mfut, d, nsteps, pure=False)
            futs[i] = None
        return out

    # ------------------------------------------------------------------ dask arrays

    def to_dask(self, E: np.ndarray, batch_size: int | None = None) -> Any:
        """The ensemble as a Dask array chunked by member (on the workers if distributed).

        Parameters
        ----------
        E : ndarray, shape (N, n)
        batch_size : int, optional
            Members per chunk (default as for a forecast on this scheduler).

        Returns
        -------
        dask.array.Array
        """
        import dask.array as da

        arr = np.asarray(E)
        if arr.ndim != 2:
            raise ValueError(f"E must have shape (N, n) with members first (got {arr.shape})")
        E = check_ensemble("E", arr, arr.shape[1], allow_1d=False)
        N, n = E.shape
        mode = "distributed" if self.distributed else "threads"
        b = check_int("batch_size", batch_size, min_value=1) if batch_size is not None else (
            self.batch_for(N, mode))
        slices = member_batches(N, b)
        if not self.distributed:
            return da.from_array(E, chunks=(tuple(s.stop - s.start for s in slices), n))
        self.start()
        futs = self._client.scatter([E[s] for s in slices], hash=False)
        blocks = [da.from_delayed(f, shape=(s.stop - s.start, n), dtype=np.float64)
                  for f, s in zip(futs, slices, strict=True)]
        return da.concatenate(blocks, axis=0)

    def _step_dask(self, model: Dynamics, E: Any, nsteps: int) -> Any:
        if E.ndim != 2 or E.shape[1] != model.state_dim:
            raise ValueError(f"E must have shape (N, {model.state_dim}) with members first "
                             f"(got {E.shape})")
        E = E.astype(np.float64, copy=False).rechunk({1: -1})  # whole members in every chunk
        N = E.shape[0]
        mode = self.mode_for(N, model.state_dim, nsteps)
        self.last_mode = mode
        if mode == "distributed":
            self.start()
            if type(model) not in self._warm:
                self._warm_locally(model, np.asarray(self._client.compute(E[:1], sync=True)))
            mfut = self._model_future(model)
            out = E.map_blocks(_step_block, mfut, nsteps, dtype=np.float64)
            return self._client.persist(out)
        out = E.map_blocks(_step_block, model, nsteps, dtype=np.float64)
        if mode == "synchronous":
            return out.persist(scheduler="synchronous")
        with _inner_threads_capped():
            return out.persist(scheduler="threads", num_workers=self.workers())
