"""Twin experiments: a spun-up truth, its trajectory and noisy observations from one seed."""

from __future__ import annotations

import numpy as np
import xarray as xr

from latentda._validate import check_ensemble, check_float, check_int, check_rng
from latentda.dynamics.base import Dynamics
from latentda.observations import GaussianNoise, ObservationOperator, ObsSchedule, mask_missing


def obs_coords(model: Dynamics, operator: ObservationOperator) -> dict:
    """Coordinates along the ``obs`` dimension: observed state index and locations."""
    m = operator.obs_dim
    coords: dict = {
        "obs": ("obs", np.arange(m, dtype=np.int32),
                {"long_name": "observation index", "units": "1"}),
    }
    idx = operator.indices
    if idx is not None:
        coords["obs_state_index"] = ("obs", idx.astype(np.int32), {
            "long_name": "index of the observed state variable", "units": "1"})
    loc = operator.locations(model.state_locations())
    if loc is not None:
        for d in range(loc.shape[1]):
            coords[f"obs_location_{d}"] = ("obs", loc[:, d], {
                "long_name": f"observation location, axis {d}", "units": "model length units"})
    return coords


def twin_experiment(model: Dynamics, operator: ObservationOperator, noise: GaussianNoise, *,
                    n_cycles: int, schedule: ObsSchedule | None = None,
                    spinup_steps: int | None = None, missing_fraction: float = 0.0,
                    seed: int | np.random.Generator = 0,
                    initial_state: np.ndarray | None = None) -> xr.Dataset:
    """Simulate a truth and observations of it.

    The truth starts from a random state, is spun up for ``spinup_steps``
    (default: the model's), and is then integrated; at each analysis time of
    ``schedule`` it is observed through ``operator`` with ``noise`` added.

    Parameters
    ----------
    model : Dynamics
        The system.
    operator : ObservationOperator
        Observation operator, ``operator.state_dim == model.state_dim``.
    noise : GaussianNoise
        Observation error with ``noise.dim == operator.obs_dim``.
    n_cycles : int
        Number of analysis times.
    schedule : ObsSchedule, optional
        When observations are taken (default: every model step).
    spinup_steps : int, optional
        Spin-up of the truth before time 0.
    missing_fraction : float
        Fraction of observation values replaced by NaN at random (missing data).
    seed : int or numpy.random.Generator
        Everything random (initial state, noise, missing values) derives from it.
    initial_state : ndarray, shape (n,), optional
        The truth at time 0 (then no spin-up is done); default: a random state
        spun up by ``spinup_steps``.

    Returns
    -------
    xarray.Dataset
        ``truth (time, state)``, ``obs_value (time, obs)``, ``obs_error_var (obs)``,
        ``initial_truth (state)`` (the truth at time 0), model-time coordinate ``time``.
    """
    if operator.state_dim != model.state_dim:
        raise ValueError(
            f"operator.state_dim ({operator.state_dim}) must equal the model's state size "
            f"({model.state_dim})"
        )
    if noise.dim != operator.obs_dim:
        raise ValueError(
            f"noise dimension ({noise.dim}) must equal the number of observations "
            f"({operator.obs_dim})"
        )
    n_cycles = check_int("n_cycles", n_cycles, min_value=1)
    missing_fraction = check_float("missing_fraction", missing_fraction, min_value=0.0,
                                   max_value=1.0)
    schedule = schedule or ObsSchedule(every=1)
    rng = check_rng(seed)
    init_rng, noise_rng, miss_rng = rng.spawn(3)

    if initial_state is None:
        x0 = model.climatology(1, init_rng, spinup_steps)
    else:
        x0 = check_ensemble("initial_state", initial_state, model.state_dim)[:1]
    steps = schedule.steps(n_cycles)
    truth = np.empty((n_cycles, model.state_dim))
    x, k = x0, 0
    for c, s in enumerate(steps):
        x = model.step(x, int(s - k))
        k = int(s)
        truth[c] = x[0]
    y = operator(truth) + noise.sample(noise_rng, n_cycles)
    if missing_fraction > 0:
        y = mask_missing(y, missing_fraction, miss_rng)

    coords: dict = {
        "time": ("time", steps * model.dt, {
            "long_name": "analysis time", "units": "model time units", "standard_name": "time",
            "axis": "T"}),
        "state": ("state", np.arange(model.state_dim, dtype=np.int32),
                  {"long_name": "state variable index", "units": "1"}),
        **model.state_coords(),
        **obs_coords(model, operator),
    }
    ds = xr.Dataset(
        {
            "truth": (("time", "state"), truth, {
                "long_name": "true state", "units": "model units"}),
            "obs_value": (("time", "obs"), y, {
                "long_name": "observed value (NaN: missing)", "units": "model units"}),
            "obs_error_var": ("obs", noise.variances, {
                "long_name": "observation error variance", "units": "model units squared"}),
            "initial_truth": ("state", x0[0], {
                "long_name": "true state at time 0", "units": "model units"}),
        },
        coords={k: xr.Variable(*v) for k, v in coords.items()},
        attrs={
            "model": repr(model), "operator": repr(operator), "obs_every_steps": schedule.every,
            "missing_fraction": missing_fraction,
            "seed": seed if isinstance(seed, int) else -1,
        },
    )
    return ds
