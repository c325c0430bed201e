"""Stochastic (Markov-jump) Lotka–Volterra model, simulated exactly with Gillespie's method.

The setup of Papamakarios, Sterratt & Murray (2019), "Sequential neural
likelihood" (SNL), a standard simulation-based-inference benchmark. Convention
(note: the reverse of :mod:`latentda.dynamics.lotka_volterra`): ``X`` is the number
of **predators**, ``Y`` the number of **prey**; the four reactions are

====  ============  ==============  ===================
 #    change        propensity      meaning
====  ============  ==============  ===================
 1    X -> X + 1    theta1 X Y      a predator is born
 2    X -> X - 1    theta2 X        a predator dies
 3    Y -> Y + 1    theta3 Y        a prey is born
 4    Y -> Y - 1    theta4 X Y      a prey is eaten
====  ============  ==============  ===================

with ``X0 = 50``, ``Y0 = 100`` and true rates
``log theta* = log(0.01, 0.5, 1, 0.01)``. States are recorded every 0.2 time units
for 30 time units (151 records, ``t = 0`` included) and reduced to 9 summary
statistics (:func:`summary_statistics`). In the large-population limit the
concentrations follow the ODE ``dx/dt = theta1 x y - theta2 x``,
``dy/dt = theta3 y - theta4 x y``.

Records: the record at time ``t_k = k * record_dt`` is the state ``(X(t_k), Y(t_k))``
after every event at a time ``<= t_k``. (SNL's reference loop records the state
after the first event past ``t_k``; the difference is one event per record.)

Event cap: at most ``max_events`` events are simulated. A simulation is *capped*
when it would need more than ``max_events`` events to reach ``t_end`` (SNL discards
these as failed). Its records up to the last simulated event are exact; the
remaining records are filled with the last state, and ``capped`` is True for it.

Random numbers: each simulation owns an independent xoshiro256** generator whose
256-bit state is expanded (SplitMix64) from a 63-bit per-simulation seed. The
seeds are drawn from the caller's ``numpy.random.Generator``, so a run with a seed
is reproducible, and simulation ``i`` with seed ``s_i`` gives the same result
alone or inside any batch. (This avoids Numba's global ``np.random`` state, whose
``seed`` only takes 32 bits and would make seed collisions likely in large runs.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from latentda._validate import check_float, check_int, check_rng

#: log(theta*) of Papamakarios et al. (2019)
TRUE_LOG_THETA = np.log(np.array([0.01, 0.5, 1.0, 0.01]))

_U64 = np.uint64


@njit(cache=True, nogil=True, inline="always")
def _rotl(x, k):
    return (x << k) | (x >> (_U64(64) - k))


@njit(cache=True, nogil=True, inline="always")
def _splitmix64(state):
    state = state + _U64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return state, z ^ (z >> _U64(31))


@njit(cache=True, nogil=True, inline="always")
def _xoshiro_next(s0, s1, s2, s3):
    """One xoshiro256** output and the new state."""
    result = _rotl(s1 * _U64(5), _U64(7)) * _U64(9)
    t = s1 << _U64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, _U64(45))
    return result, s0, s1, s2, s3


@njit(cache=True, nogil=True)
def _simulate_one(th1, th2, th3, th4, seed, x0, y0, n_rec, record_dt, max_events, traj, i):
    """Gillespie direct method for simulation ``i``; writes ``traj[i]``.

    Returns ``(capped, n_events)``.
    """
    sm = _U64(seed)
    sm, s0 = _splitmix64(sm)
    sm, s1 = _splitmix64(sm)
    sm, s2 = _splitmix64(sm)
    sm, s3 = _splitmix64(sm)
    inv53 = 1.0 / 9007199254740992.0  # 2**-53
    x = x0
    y = y0
    t = 0.0
    rec = 0
    events = 0
    capped = False
    while True:
        xy = float(x) * float(y)
        a1 = th1 * xy
        a2 = th2 * x
        a3 = th3 * y
        a4 = th4 * xy
        a0 = a1 + a2 + a3 + a4
        if a0 <= 0.0:
            break  # absorbing state: nothing can happen any more
        r, s0, s1, s2, s3 = _xoshiro_next(s0, s1, s2, s3)
        u = (float(r >> _U64(11)) + 1.0) * inv53  # in (0, 1]
        t_new = t - math.log(u) / a0
        while rec < n_rec and rec * record_dt < t_new:
            traj[i, rec, 0] = x
            traj[i, rec, 1] = y
            rec += 1
        if rec == n_rec:
            break
        if events == max_events:
            capped = True
            break
        r, s0, s1, s2, s3 = _xoshiro_next(s0, s1, s2, s3)
        v = float(r >> _U64(11)) * inv53 * a0  # in [0, a0)
        c1 = a1
        c2 = c1 + a2
        c3 = c2 + a3
        if v < c1:
            x += 1
        elif v < c2:
            x -= 1
        elif v < c3:
            y += 1
        elif a4 > 0.0:
            y -= 1
        # rounding can put v at c3 == a0 when a4 == 0: take the last possible reaction
        elif a3 > 0.0:
            y += 1
        elif a2 > 0.0:
            x -= 1
        else:
            x += 1
        events += 1
        t = t_new
    while rec < n_rec:  # absorbed, or capped: hold the last state
        traj[i, rec, 0] = x
        traj[i, rec, 1] = y
        rec += 1
    return capped, events


@njit(cache=True, nogil=True)
def ssa_lotka_volterra(theta, seeds, x0, y0, n_rec, record_dt, max_events, traj, capped,
                       n_events):
    """Simulate ``len(seeds)`` Lotka–Volterra jump processes (Gillespie direct method).

    Parameters
    ----------
    theta : ndarray, shape (n, 4)
        Rates (not log), >= 0.
    seeds : ndarray of int64, shape (n,)
        Non-negative per-simulation seeds.
    x0, y0 : int
        Initial predators and prey.
    n_rec : int
        Number of records at times ``k * record_dt``, ``k = 0 .. n_rec - 1``.
    record_dt : float
        Recording interval.
    max_events : int
        Event cap per simulation.
    traj : ndarray, shape (n, n_rec, 2)
        Output records (X, Y), filled in place.
    capped : ndarray of bool, shape (n,)
        Output: whether the cap was hit.
    n_events : ndarray of int64, shape (n,)
        Output: events simulated.
    """
    for i in range(seeds.shape[0]):
        c, k = _simulate_one(theta[i, 0], theta[i, 1], theta[i, 2], theta[i, 3], seeds[i],
                             x0, y0, n_rec, record_dt, max_events, traj, i)
        capped[i] = c
        n_events[i] = k


def _check_population(name: str, value: Any) -> int:
    return check_int(name, value, min_value=0)


class StochasticLotkaVolterra:
    """Markov-jump Lotka–Volterra model (``X`` predators, ``Y`` prey), Gillespie SSA.

    Parameters
    ----------
    x0 : int
        Initial number of predators (>= 0).
    y0 : int
        Initial number of prey (>= 0).
    t_end : float
        Simulated time span (> 0), a whole multiple of ``record_dt``.
    record_dt : float
        Recording interval (> 0); ``round(t_end / record_dt) + 1`` records.
    max_events : int
        Event cap per simulation (>= 1); see the module docstring.
    """

    name = "stochastic_lotka_volterra"
    true_log_theta = TRUE_LOG_THETA

    def __init__(self, x0: int = 50, y0: int = 100, t_end: float = 30.0,
                 record_dt: float = 0.2, max_events: int = 10_000) -> None:
        self.x0 = _check_population("x0", x0)
        self.y0 = _check_population("y0", y0)
        self.t_end = check_float("t_end", t_end, positive=True)
        self.record_dt = check_float("record_dt", record_dt, positive=True)
        ratio = self.t_end / self.record_dt
        k = int(round(ratio))
        if k < 1 or abs(ratio - k) > 1e-9 * max(1.0, ratio):
            raise ValueError(
                f"t_end must be a positive whole multiple of record_dt (got t_end={self.t_end}, "
                f"record_dt={self.record_dt}); choose t_end = k * record_dt"
            )
        self.n_records = k + 1
        self.max_events = check_int("max_events", max_events, min_value=1)

    def __repr__(self) -> str:
        return (f"StochasticLotkaVolterra(x0={self.x0}, y0={self.y0}, t_end={self.t_end}, "
                f"record_dt={self.record_dt}, max_events={self.max_events})")

    @property
    def times(self) -> np.ndarray:
        """Record times ``k * record_dt``, shape (T,)."""
        return np.arange(self.n_records) * self.record_dt

    def _check_log_theta(self, log_theta: Any, n: int | None) -> np.ndarray:
        arr = np.asarray(log_theta)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"log_theta must be a real numeric array (got dtype {arr.dtype})")
        arr = arr.astype(np.float64)
        if arr.ndim == 1 and arr.shape == (4,):
            n = 1 if n is None else check_int("n", n, min_value=1)
            arr = np.broadcast_to(arr, (n, 4))
        elif arr.ndim == 2 and arr.shape[1] == 4 and arr.shape[0] >= 1:
            if n is not None and check_int("n", n, min_value=1) != arr.shape[0]:
                raise ValueError(
                    f"n must equal log_theta.shape[0] = {arr.shape[0]} when log_theta has one "
                    f"row per simulation (got n={n}); omit n"
                )
        else:
            raise ValueError(
                f"log_theta must have shape (4,) or (n, 4) (got {arr.shape}); "
                "order: log(theta1..theta4)"
            )
        if np.any(np.isnan(arr)) or np.any(arr == np.inf):
            raise ValueError(
                "log_theta must be finite or -inf (a rate of exactly zero); got NaN or +inf"
            )
        return np.ascontiguousarray(arr)

    def simulate_seeds(self, log_theta: Any, seeds: Any) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        """Simulate with explicit per-simulation seeds.

        Parameters
        ----------
        log_theta : array_like, shape (4,) or (n, 4)
            Log-rates; ``-inf`` gives a rate of exactly zero.
        seeds : array_like of int, shape (n,)
            Seeds in ``[0, 2**63)``; simulation ``i`` depends only on ``log_theta[i]``
            and ``seeds[i]``.

        Returns
        -------
        trajectories : ndarray, shape (n, T, 2), float64
            Records of ``(X predators, Y prey)``.
        capped : ndarray of bool, shape (n,)
            Whether the event cap was hit (records after the last event are held).
        n_events : ndarray of int64, shape (n,)
            Number of simulated events.
        """
        s = np.asarray(seeds)
        if s.ndim != 1 or s.shape[0] < 1 or s.dtype.kind not in "iu":
            raise ValueError(
                f"seeds must be a 1-D integer array with at least one entry "
                f"(got shape {s.shape}, dtype {s.dtype})"
            )
        if np.any(s < 0) or (s.dtype.kind == "u" and np.any(s > np.iinfo(np.int64).max)):
            raise ValueError("seeds must lie in [0, 2**63); draw them with rng.integers")
        s = np.ascontiguousarray(s, dtype=np.int64)
        lt = self._check_log_theta(log_theta, None if np.ndim(log_theta) == 2 else s.shape[0])
        if lt.shape[0] != s.shape[0]:
            raise ValueError(
                f"seeds must have one entry per row of log_theta ({lt.shape[0]}), "
                f"got {s.shape[0]}"
            )
        return self._run(lt, s)

    def simulate(self, log_theta: Any, rng: np.random.Generator | int, n: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Simulate ``n`` independent trajectories.

        Parameters
        ----------
        log_theta : array_like, shape (4,) or (n, 4)
            Log-rates ``log(theta1..theta4)``, shared by all simulations or one row
            each; ``-inf`` gives a rate of exactly zero.
        rng : numpy.random.Generator or int
            Source of the per-simulation seeds (an int is a seed).
        n : int, optional
            Number of simulations; defaults to 1 for a shared ``log_theta`` and to
            ``log_theta.shape[0]`` otherwise.

        Returns
        -------
        trajectories : ndarray, shape (n, T, 2), float64
            Records of ``(X predators, Y prey)`` at :attr:`times`.
        capped : ndarray of bool, shape (n,)
            Whether the event cap was hit (records after the last event are held).
        n_events : ndarray of int64, shape (n,)
            Number of simulated events.
        """
        lt = self._check_log_theta(log_theta, n)
        rng = check_rng(rng)
        seeds = rng.integers(0, np.iinfo(np.int64).max, size=lt.shape[0], dtype=np.int64)
        return self._run(lt, seeds)

    def _run(self, log_theta: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                         np.ndarray]:
        n = seeds.shape[0]
        theta = np.ascontiguousarray(np.exp(log_theta))
        traj = np.empty((n, self.n_records, 2))
        capped = np.zeros(n, dtype=np.bool_)
        n_events = np.zeros(n, dtype=np.int64)
        ssa_lotka_volterra(theta, seeds, self.x0, self.y0, self.n_records, self.record_dt,
                           self.max_events, traj, capped, n_events)
        return traj, capped, n_events


def summary_statistics(traj: Any) -> np.ndarray:
    """The 9 summary statistics of Papamakarios et al. (2019), SNL convention.

    For each trajectory of ``T`` records of ``(X, Y)``:

    0. mean of X; 1. mean of Y;
    2. ``log(var X + 1)``; 3. ``log(var Y + 1)`` (sample variance, ``ddof=1``; the
       ``+ 1`` follows the SNL reference code and keeps constant series finite);
    4, 5. autocorrelation of X at lags 1 and 2 records (0.2 and 0.4 time units);
    6, 7. the same for Y;
    8. cross-correlation of X and Y at lag 0.

    With ``x̃ = (x - mean) / std`` (``ddof=1``) the lag-``k`` autocorrelation is
    ``sum_j x̃_j x̃_{j+k} / (T - 1)`` and the cross-correlation
    ``sum_j x̃_j ỹ_j / (T - 1)``, as in the SNL code. A constant series (e.g. an
    extinct species) has undefined correlations; they are set to 0 here. No
    normalization by pilot-run statistics is applied.

    Parameters
    ----------
    traj : array_like, shape (n, T, 2) or (T, 2), T >= 3

    Returns
    -------
    ndarray, shape (n, 9)
    """
    arr = np.asarray(traj)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"traj must be a real numeric array (got dtype {arr.dtype})")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != 2 or arr.shape[1] < 3 or arr.shape[0] < 1:
        raise ValueError(
            f"traj must have shape (n, T, 2) or (T, 2) with T >= 3 (got {np.shape(traj)})"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("traj must be finite (got NaN or inf)")
    T = arr.shape[1]
    mean = arr.mean(axis=1)  # (n, 2)
    var = arr.var(axis=1, ddof=1)  # (n, 2)
    std = np.sqrt(var)
    safe = np.where(std > 0, std, 1.0)
    z = (arr - mean[:, None, :]) / safe[:, None, :]
    z = np.where((std > 0)[:, None, :], z, 0.0)
    ac1 = np.einsum("ntc,ntc->nc", z[:, :-1], z[:, 1:]) / (T - 1)
    ac2 = np.einsum("ntc,ntc->nc", z[:, :-2], z[:, 2:]) / (T - 1)
    cc = np.einsum("nt,nt->n", z[:, :, 0], z[:, :, 1]) / (T - 1)
    return np.column_stack([
        mean[:, 0], mean[:, 1], np.log(var[:, 0] + 1.0), np.log(var[:, 1] + 1.0),
        ac1[:, 0], ac2[:, 0], ac1[:, 1], ac2[:, 1], cc,
    ])


def oscillating(traj: np.ndarray, capped: np.ndarray) -> np.ndarray:
    """Runs that keep both species alive to the end and did not hit the event cap, ``(n,)``.

    ``traj`` and ``capped`` as returned by :meth:`StochasticLotkaVolterra.simulate`.
    """
    return (np.asarray(traj)[:, -1] > 0).all(axis=1) & ~np.asarray(capped, dtype=bool)


def summary_scale(model: StochasticLotkaVolterra, log_theta: Any, rng: np.random.Generator,
                  n: int = 4000) -> tuple[np.ndarray, int]:
    """Natural within-run spread of each summary at ``log_theta``: ``1.4826 * MAD``.

    Over the oscillating runs (:func:`oscillating`) of ``n`` simulations; the kernel /
    noise scale of the simulation-based inference of this model.

    Returns
    -------
    (scale, n_oscillating)
        ``scale`` of shape (9,), and how many of the ``n`` runs oscillated.
    """
    traj, capped, _ = model.simulate(log_theta, rng, int(n))
    ok = oscillating(traj, capped)
    S0 = summary_statistics(traj)[ok]
    scale = 1.4826 * np.median(np.abs(S0 - np.median(S0, axis=0)), axis=0)
    return scale, int(ok.sum())
