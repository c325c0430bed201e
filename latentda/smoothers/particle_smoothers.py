"""Particle smoothers: fixed-lag path resampling and forward-filtering backward-simulation.

- :class:`FixedLagParticleSmoother` is a :class:`~latentda.filters.ParticleFilter` that
  keeps the particle *paths* of the last ``lag`` analyses: whenever the filter resamples,
  the buffered past particles are re-indexed by the same ancestor indices, so that row
  ``i`` of every buffered ensemble is the past of the current particle ``i``, weighted by
  the current weights (Kitagawa 1996; the genealogy-tracking smoother).
- :func:`ffbsi` draws whole trajectories from the joint smoothing distribution given the
  weighted particle sets of a forward filter, by backward simulation
  (Godsill, Doucet & West 2004).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from latentda._validate import check_int, check_rng
from latentda.filters.base import Geometry, Observation
from latentda.filters.particle import ParticleFilter
from latentda.filters.resampling import normalize_log_weights
from latentda.smoothers.enks import SmoothedEnsemble, parse_window_state

__all__ = ["FixedLagParticleSmoother", "ffbsi"]


@dataclass
class FixedLagParticleSmoother(ParticleFilter):
    """Fixed-lag particle smoother by path resampling.

    A :class:`~latentda.filters.ParticleFilter` (same parameters, same analysis) that
    also keeps the analysis ensembles of the previous ``lag`` analyses, re-indexed by the
    ancestors of every resampling so that they stay aligned with the current particles.
    The window and release conventions are those of :class:`~latentda.smoothers.EnKS`:
    after analysis ``k`` the window holds analyses ``k - lag + 1, ..., k`` (all weighted
    by the current weights), and :attr:`released` is the ensemble of analysis
    ``k - lag`` with the current weights, an estimate of ``p(x_{k-lag} | y_{0:k})``.

    Parameters
    ----------
    lag : int
        Number of later analyses that update each ensemble (>= 0).
    (others)
        As :class:`~latentda.filters.ParticleFilter`.

    Notes
    -----
    Regularization jitter changes only the current particles: a path keeps its past
    values. Long lags suffer from path degeneracy (few distinct ancestors survive many
    resamplings); use :func:`ffbsi` for whole trajectories.
    """

    lag: int = 5

    def __post_init__(self) -> None:
        self._window: deque[np.ndarray] = deque()
        self._window_index: deque[int] = deque()
        self._count = 0
        self.released: SmoothedEnsemble | None = None
        super().__post_init__()

    def _validate_params(self) -> None:
        super()._validate_params()
        self.lag = check_int("lag", self.lag, min_value=0)

    def _check_call(self, E: np.ndarray, obs: Observation, geometry: Geometry | None) -> None:
        super()._check_call(E, obs, geometry)
        if self._window and self._window[-1].shape != E.shape:
            raise ValueError(f"E has shape {E.shape} but the smoother window holds ensembles "
                             f"of shape {self._window[-1].shape}; call reset() when the "
                             "ensemble changes size")

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        Ea, info = super()._analyse(E, HE, obs, rng, geometry)
        anc = self.ancestors
        assert anc is not None
        identity = bool(np.array_equal(anc, np.arange(anc.size)))
        window = [X if identity else X[anc] for X in self._window]
        index = list(self._window_index)
        window.append(Ea.copy())
        index.append(self._count)
        released = None
        if len(window) > self.lag:
            w = self._weights_out
            released = SmoothedEnsemble(index.pop(0), window.pop(0),
                                        None if w is None else w.copy())
        self._window = deque(window)
        self._window_index = deque(index)
        self._count += 1
        self.released = released
        return Ea, {**info, "window": float(len(window))}

    @property
    def window(self) -> list[SmoothedEnsemble]:
        """The current window, oldest first (copies), each with the current weights."""
        w = self.weights
        return [SmoothedEnsemble(i, X.copy(), None if w is None else w.copy())
                for i, X in zip(self._window_index, self._window, strict=True)]

    def flush(self) -> list[SmoothedEnsemble]:
        """Return the window (oldest first) and empty it, e.g. at the end of a run."""
        out = self.window
        self._window.clear()
        self._window_index.clear()
        return out

    def reset(self) -> None:
        """Forget the carried weights and the window; restart the analysis count at 0."""
        super().reset()
        self._window.clear()
        self._window_index.clear()
        self._count = 0
        self.released = None

    def get_state(self) -> dict[str, Any]:
        """Carried log-weights, analysis count and window (nested lists)."""
        return {**super().get_state(), "count": self._count,
                "window_index": list(self._window_index),
                "window": [X.tolist() for X in self._window]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (``{}`` resets)."""
        if not state:
            self.reset()
            return
        super().set_state({"log_weights": state.get("log_weights")})
        count, idx, ens = parse_window_state(state, self.lag)
        self._count = count
        self._window = deque(ens)
        self._window_index = deque(idx)
        self.released = None


@njit(cache=True, nogil=True)
def _inverse_cdf(logp: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise categorical draws: for each row of ``logp`` (M, N) the index at ``u`` (M,).

    Row ``j`` returns the smallest ``i`` whose cumulative probability exceeds ``u[j]``
    (never a zero-probability index, even when round-off puts ``u`` at the total).
    """
    M, N = logp.shape
    out = np.empty(M, dtype=np.int64)
    p = np.empty(N)
    for j in range(M):
        top = -np.inf
        for i in range(N):
            if logp[j, i] > top:
                top = logp[j, i]
        total = 0.0
        for i in range(N):
            p[i] = np.exp(logp[j, i] - top)
            total += p[i]
        target = u[j] * total
        c = 0.0
        k = -1
        for i in range(N):
            if p[i] > 0.0:
                k = i
                c += p[i]
                if c > target:
                    break
        out[j] = k
    return out


def ffbsi(particles: Sequence[np.ndarray], log_weights: Sequence[np.ndarray],
          log_transition: Callable[[np.ndarray, np.ndarray], np.ndarray], n_paths: int,
          rng: np.random.Generator | int, *, vectorized: bool = False) -> np.ndarray:
    """Forward-filtering backward-simulation (FFBSi) of whole trajectories.

    Given weighted particle approximations ``{(X_t^i, w_t^i)}`` of the filtering
    distributions ``p(x_t | y_{0:t})``, ``t = 0..T-1``, each path draws ``x_{T-1}`` from
    the last one and then, backwards, ``x_t = X_t^i`` with probability
    ``∝ w_t^i p(x_{t+1} | X_t^i)``. The paths are draws from the particle approximation
    of the joint smoothing distribution ``p(x_{0:T-1} | y_{0:T-1})``
    (Godsill, Doucet & West 2004). Cost ``O(n_paths * N * T)`` transition evaluations.

    Parameters
    ----------
    particles : sequence of T arrays, shape (N_t, d)
        Filtering particles at each time (e.g. the analysis ensembles of a particle
        filter, with their weights; equal weights after resampling).
    log_weights : sequence of T arrays, shape (N_t,)
        Their log-weights (unnormalized is fine; ``-inf`` marks zero weight).
    log_transition : callable
        ``log_transition(x_next, X_prev)``: the transition log-density
        ``log p(x_next | X_prev[i])`` up to a constant, with ``x_next`` of shape ``(d,)``
        and ``X_prev`` of shape ``(N, d)``, returning shape ``(N,)``. With
        ``vectorized=True`` it receives ``x_next`` of shape ``(M, d)`` (all paths) and
        returns shape ``(M, N)``.
    n_paths : int
        Number of trajectories to draw (>= 1).
    rng : numpy.random.Generator or int
    vectorized : bool
        Whether ``log_transition`` handles all paths at once (same draws either way).

    Returns
    -------
    ndarray, shape (n_paths, T, d)

    Raises
    ------
    ValueError
        On inconsistent shapes, non-finite particles, weights that are all zero, or a
        backward step that gives zero probability to every particle (degenerate
        transition density, e.g. no model noise).
    """
    n_paths = check_int("n_paths", n_paths, min_value=1)
    rng = check_rng(rng)
    if not callable(log_transition):
        raise ValueError("log_transition must be callable, log_transition(x_next, X_prev)")
    if len(particles) != len(log_weights) or len(particles) == 0:
        raise ValueError(f"particles and log_weights must be non-empty sequences of the same "
                         f"length T (got {len(particles)} and {len(log_weights)})")
    Xs: list[np.ndarray] = []
    Ws: list[np.ndarray] = []
    d = None
    for t, (X, lw) in enumerate(zip(particles, log_weights, strict=True)):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1 or (d is not None and X.shape[1] != d):
            want = "(N_t, d)" if d is None else f"(N_t, {d})"
            raise ValueError(f"particles[{t}] must have shape {want} (got {X.shape})")
        if not np.isfinite(X).all():
            raise ValueError(f"particles[{t}] must be finite")
        d = X.shape[1]
        lw = np.asarray(lw, dtype=np.float64)
        if lw.shape != (X.shape[0],):
            raise ValueError(f"log_weights[{t}] must have shape ({X.shape[0]},) to match "
                             f"particles[{t}] (got {lw.shape})")
        _, lz = normalize_log_weights(lw)
        Xs.append(X)
        Ws.append(lw - lz)
    T = len(Xs)
    assert d is not None
    paths = np.empty((n_paths, T, d))
    u = rng.random(n_paths)
    idx = _inverse_cdf(np.ascontiguousarray(np.broadcast_to(Ws[-1], (n_paths, Ws[-1].size))), u)
    paths[:, -1] = Xs[-1][idx]
    for t in range(T - 2, -1, -1):
        X, lw = Xs[t], Ws[t]
        nxt = paths[:, t + 1]
        if vectorized:
            lt = np.asarray(log_transition(nxt, X), dtype=np.float64)
            if lt.shape != (n_paths, X.shape[0]):
                raise ValueError(f"log_transition(x_next of shape {nxt.shape}, X_prev of shape "
                                 f"{X.shape}) must return shape {(n_paths, X.shape[0])} with "
                                 f"vectorized=True (got {lt.shape})")
        else:
            lt = np.empty((n_paths, X.shape[0]))
            for j in range(n_paths):
                row = np.asarray(log_transition(nxt[j], X), dtype=np.float64)
                if row.shape != (X.shape[0],):
                    raise ValueError(f"log_transition(x_next of shape ({d},), X_prev of shape "
                                     f"{X.shape}) must return shape ({X.shape[0]},) "
                                     f"(got {row.shape})")
                lt[j] = row
        logp = np.ascontiguousarray(lw + lt)
        if np.isnan(logp).any() or (logp == np.inf).any():
            raise ValueError(f"log_transition returned NaN or +inf at time {t}")
        dead = ~(logp > -np.inf).any(axis=1)
        if dead.any():
            raise ValueError(f"the backward kernel gives zero probability to every particle at "
                             f"time {t} for {int(dead.sum())} path(s): the transition density "
                             "is degenerate (no model noise?); FFBSi needs p(x_t+1 | x_t) > 0")
        u = rng.random(n_paths)
        paths[:, t] = X[_inverse_cdf(logp, u)]
    return paths
