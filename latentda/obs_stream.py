"""Observations over a run: from a twin experiment or from a user's file.

An :class:`ObservationStream` holds the analysis times, the observed values
(NaN where missing), their error variances, the operator that maps a state to
them, and the truth when it is known (twin experiments). User files are
netCDF or zarr datasets with ``time``, ``obs_value (time, obs)``,
``obs_error_var (obs)`` or ``(time, obs)``, and ``obs_state_index (obs)``
naming the observed state variable of each observation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from latentda.observations import ObservationOperator, Subset


@dataclass
class ObservationStream:
    """Observations at a sequence of analysis times.

    Attributes
    ----------
    times : ndarray, shape (K,)
        Strictly increasing analysis times (model time units).
    values : ndarray, shape (K, m)
        Observed values; NaN marks a missing value.
    variances : ndarray, shape (K, m)
        Observation-error variances (diagonal R per time).
    operator : ObservationOperator
        Maps states (N, n) to observations (N, m).
    truth : ndarray, shape (K, n), optional
        The true state at each time (twin experiments); ``None`` for real data.
    initial_truth : ndarray, shape (n,), optional
        The true state at the initial time.
    R : ndarray, shape (m, m), optional
        A full (correlated) error covariance used at every time instead of
        ``diag(variances)``.
    """

    times: np.ndarray
    values: np.ndarray
    variances: np.ndarray
    operator: ObservationOperator
    truth: np.ndarray | None = None
    initial_truth: np.ndarray | None = None
    R: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.values = np.asarray(self.values, dtype=np.float64)
        K, m = len(self.times), self.operator.obs_dim
        if self.times.ndim != 1 or K == 0:
            raise ValueError(f"time must be a non-empty 1-D coordinate (got {self.times.shape})")
        if not np.all(np.isfinite(self.times)) or np.any(np.diff(self.times) <= 0):
            bad = int(np.argmax(~np.isfinite(self.times) | np.r_[False, np.diff(self.times) <= 0]))
            raise ValueError(f"observation times must be finite and strictly increasing "
                             f"(offending index {bad})")
        if self.values.shape != (K, m):
            raise ValueError(f"obs_value must have shape (time, obs) = ({K}, {m}) "
                             f"(got {self.values.shape})")
        var = np.asarray(self.variances, dtype=np.float64)
        if var.shape == (m,):
            var = np.broadcast_to(var, (K, m))
        if var.shape != (K, m):
            raise ValueError(f"obs_error_var must have shape (obs,) or (time, obs) = ({K}, {m}) "
                             f"(got {var.shape})")
        ok = np.isfinite(var) & (var > 0)
        need = np.isfinite(self.values)
        if np.any(need & ~ok):
            t, j = np.argwhere(need & ~ok)[0]
            raise ValueError(f"obs_error_var must be finite and > 0 where an observation is "
                             f"given (time index {t}, obs index {j})")
        self.variances = var
        if self.truth is not None:
            self.truth = np.asarray(self.truth, dtype=np.float64)
            if self.truth.shape != (K, self.operator.state_dim):
                raise ValueError(f"truth must have shape (time, state) = "
                                 f"({K}, {self.operator.state_dim}) (got {self.truth.shape})")

    def error(self, c: int) -> np.ndarray:
        """Observation-error spec at time index ``c``: variances (m,) or the full R (m, m)."""
        return self.variances[c] if self.R is None else self.R

    def __len__(self) -> int:
        return len(self.times)

    @property
    def has_truth(self) -> bool:
        """Whether skill against a truth can be computed."""
        return self.truth is not None

    @classmethod
    def from_twin(cls, ds: xr.Dataset, operator: ObservationOperator) -> ObservationStream:
        """From the dataset of :func:`latentda.twin.twin_experiment`."""
        return cls(times=ds["time"].values, values=ds["obs_value"].values,
                   variances=ds["obs_error_var"].values, operator=operator,
                   truth=ds["truth"].values, initial_truth=ds["initial_truth"].values)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, state_dim: int) -> ObservationStream:
        """From a user dataset (see the module docstring for the layout)."""
        for name in ("obs_value", "obs_error_var", "obs_state_index"):
            if name not in ds.variables:
                raise ValueError(f"observation dataset lacks {name!r}; it needs time, "
                                 "obs_value(time, obs), obs_error_var(obs) and "
                                 "obs_state_index(obs)")
        operator = Subset(state_dim, np.asarray(ds["obs_state_index"].values).astype(np.int64))
        truth = ds["truth"].values if "truth" in ds.variables else None
        return cls(times=ds["time"].values, values=ds["obs_value"].transpose("time", "obs").values,
                   variances=ds["obs_error_var"].values, operator=operator, truth=truth)

    @classmethod
    def from_file(cls, path: str | os.PathLike, state_dim: int) -> ObservationStream:
        """From a netCDF (``.nc``) or zarr file of observations."""
        p = Path(path)
        if not p.exists():
            raise ValueError(f"observations.file {p} does not exist")
        if p.suffix == ".nc":
            with xr.open_dataset(p) as ds:
                return cls.from_dataset(ds.load(), state_dim)
        with xr.open_zarr(p) as ds:
            return cls.from_dataset(ds.load(), state_dim)
