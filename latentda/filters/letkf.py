"""The local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentda._validate import check_float
from latentda.filters.base import (
    EnsembleFilter,
    Geometry,
    Observation,
    batched_transforms,
    whitened_innovations,
)
from latentda.filters.localization import GC_SUPPORT, gaspari_cohn, pairwise_sq_distance

__all__ = ["LETKF"]

#: tapers by name: (function of distance / radius, support in units of radius)
TAPERS = {"gaspari_cohn": (gaspari_cohn, GC_SUPPORT)}

_CHUNK_BYTES = 16 * 2**20  # memory bound of one batch of local analyses
_DIST_BLOCK = 2**21  # entries of one block of the distance matrix


@dataclass
class _LocalPlan:
    """Which observations (and taper weights) each group of variables uses.

    Variables at identical locations share their tapering weights and form one
    *group*; only groups with at least one local observation are *active*. Active
    groups are sorted by their number of local observations so that a batch pads
    to a small width.
    """

    key: tuple[Any, ...]
    d: int
    idx: np.ndarray  # (Ga, Kmax) local observation indices, padded with 0
    sqrtw: np.ndarray  # (Ga, Kmax) sqrt of taper weights, padded with 0
    counts: np.ndarray  # (Ga,) local observations per active group (ascending)
    vars_sorted: np.ndarray  # variables of the active groups, grouped in order
    vptr: np.ndarray  # (Ga + 1,) offsets of each active group's variables in vars_sorted
    var_group: np.ndarray  # (len(vars_sorted),) active-group position of each variable
    group_size: int | None  # variables per active group when all are equal
    untouched: np.ndarray  # variables without any local observation
    mean_local_obs: float = field(init=False)  # per variable (0 for untouched ones)
    max_group: int = field(init=False)  # most variables in one active group

    def __post_init__(self) -> None:
        sizes = np.diff(self.vptr)
        self.mean_local_obs = float(np.dot(self.counts, sizes)) / self.d
        self.max_group = int(sizes.max()) if sizes.size else 0


def _global_plan(d: int, m: int) -> _LocalPlan:
    return _LocalPlan(key=("global", d, m), d=d, idx=np.arange(m)[None, :],
                      sqrtw=np.ones((1, m)), counts=np.array([m]),
                      vars_sorted=np.arange(d), vptr=np.array([0, d]),
                      var_group=np.zeros(d, dtype=np.intp), group_size=d,
                      untouched=np.zeros(0, dtype=np.intp))


def _local_plan(key: tuple[Any, ...], geometry: Geometry, obs_loc: np.ndarray, radius: float,
                taper: str) -> _LocalPlan:
    fun, support = TAPERS[taper]
    cutoff = support * radius
    uloc, inv = np.unique(geometry.locations, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    G, m = uloc.shape[0], obs_loc.shape[0]
    rows_l, cols_l, w_l = [], [], []
    step = max(1, _DIST_BLOCK // max(m, 1))
    for g0 in range(0, G, step):
        sq = pairwise_sq_distance(uloc[g0:g0 + step], obs_loc, geometry.period)
        r, c = np.nonzero(sq < cutoff * cutoff)
        w = fun(np.sqrt(sq[r, c]) / radius)
        keep = w > 0
        rows_l.append(r[keep] + g0)
        cols_l.append(c[keep])
        w_l.append(w[keep])
    rows = np.concatenate(rows_l)
    cols = np.concatenate(cols_l)
    wts = np.concatenate(w_l)
    counts_all = np.bincount(rows, minlength=G)
    active = np.flatnonzero(counts_all)
    active = active[np.argsort(counts_all[active], kind="stable")]
    Ga = active.size
    counts = counts_all[active]
    kmax = int(counts.max()) if Ga else 0
    # padded (Ga, kmax) tables: entries sorted by (active position, column)
    pos_of_group = np.full(G, -1, dtype=np.intp)
    pos_of_group[active] = np.arange(Ga)
    prow = pos_of_group[rows]
    order = np.lexsort((cols, prow))
    prow, cols, wts = prow[order], cols[order], wts[order]
    start = np.concatenate(([0], np.cumsum(counts)[:-1])) if Ga else np.zeros(0, np.intp)
    slot = np.arange(prow.size) - start[prow]
    idx = np.zeros((Ga, kmax), dtype=np.intp)
    sqrtw = np.zeros((Ga, kmax))
    idx[prow, slot] = cols
    sqrtw[prow, slot] = np.sqrt(wts)
    # variables of each active group, in active order
    var_pos = pos_of_group[inv]
    touched = np.flatnonzero(var_pos >= 0)
    vorder = touched[np.argsort(var_pos[touched], kind="stable")]
    var_group = var_pos[vorder]
    sizes = np.bincount(var_group, minlength=Ga)
    vptr = np.concatenate(([0], np.cumsum(sizes)))
    group_size = int(sizes[0]) if Ga and (sizes == sizes[0]).all() else None
    return _LocalPlan(key=key, d=geometry.d, idx=idx, sqrtw=sqrtw, counts=counts,
                      vars_sorted=vorder, vptr=vptr, var_group=var_group,
                      group_size=group_size, untouched=np.flatnonzero(var_pos < 0))


@dataclass
class LETKF(EnsembleFilter):
    """Local ETKF (Hunt et al. 2007), vectorized over state variables.

    Every state variable gets its own ETKF analysis using the observations within
    the taper's support (``2 * radius`` for Gaspari–Cohn), with ``R^{-1}`` tapered
    by ``GC(distance / radius)`` (the whitened anomalies and innovations are
    multiplied by the square root of the weight). Distances use
    ``Geometry.locations`` and ``Observation.locations``, with the minimum image
    along periodic axes. A correlated ``R`` is whitened globally with its symmetric
    inverse square root before tapering (as DAPPER does).

    The observation ensemble is computed once; variables at identical locations
    share one local analysis; the local ``N x N`` eigenproblems are solved in
    batches (``numpy.linalg.eigh`` on stacks) of bounded memory. The localization
    plan is cached and reused while the locations and the radius are unchanged.
    With ``radius=None`` or ``inf`` every variable uses every observation with
    weight 1 and the result equals the :class:`ETKF` to round-off.

    Parameters
    ----------
    radius : float or None
        Gaspari–Cohn half-width ``c`` (> 0; support ``2c``), in location units.
    taper : str
        Taper name; ``"gaspari_cohn"``.
    inflation : float
        Post-analysis multiplicative inflation, >= 1 (applied to every variable).

    Examples
    --------
    >>> LETKF(4.0, inflation=1.02)
    LETKF(inflation=1.02, radius=4.0, taper='gaspari_cohn')
    """

    radius: float | None
    taper: str = "gaspari_cohn"
    _plan: _LocalPlan | None = field(default=None, init=False, repr=False, compare=False)
    #: "ens" / "obs" forces the local eigenproblem's space (testing); None: the smaller
    _form: str | None = field(default=None, init=False, repr=False, compare=False)

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.radius is not None:
            r = self.radius
            if isinstance(r, bool) or not isinstance(r, int | float | np.integer | np.floating) \
                    or math.isnan(r) or r <= 0:
                raise ValueError(f"radius must be > 0 (inf or None: no localization) "
                                 f"(got {self.radius!r})")
            self.radius = float(r) if math.isinf(r) else check_float("radius", r, positive=True)
        if self.taper not in TAPERS:
            raise ValueError(f"taper must be one of {sorted(TAPERS)} (got {self.taper!r})")

    @property
    def is_global(self) -> bool:
        """True when no localization is applied (radius None or inf)."""
        return self.radius is None or math.isinf(self.radius)

    def _check_call(self, E: np.ndarray, obs: Observation, geometry: Geometry | None) -> None:
        super()._check_call(E, obs, geometry)
        if self.is_global:
            return
        if geometry is None:
            raise ValueError(f"geometry is required by LETKF with a finite radius "
                             f"({self.radius}); pass Geometry(locations, period)")
        if obs.locations is None:
            raise ValueError(f"obs.locations is required by LETKF with a finite radius "
                             f"({self.radius}); build the Observation with locations")
        D_x, D_y = geometry.locations.shape[1], obs.locations.shape[1]
        if D_x != D_y:
            raise ValueError(f"obs.locations must have as many axes as geometry.locations "
                             f"({D_x}; got {D_y})")

    def plan(self, d: int, obs: Observation, geometry: Geometry | None) -> _LocalPlan:
        """Return the (cached) localization plan for ``d`` variables and ``obs``."""
        m = obs.m
        if self.is_global:
            key: tuple[Any, ...] = ("global", d, m)
            if self._plan is None or self._plan.key != key:
                self._plan = _global_plan(d, m)
            return self._plan
        assert geometry is not None and obs.locations is not None
        p = self._plan
        if (p is not None and p.key[0] == "local" and p.key[1] == self.radius
                and p.key[2] == self.taper and p.key[3] == geometry.period
                and np.array_equal(p.key[4], geometry.locations)
                and np.array_equal(p.key[5], obs.locations)):
            return p
        key = ("local", self.radius, self.taper, geometry.period,
               geometry.locations.copy(), obs.locations.copy())
        assert self.radius is not None
        self._plan = _local_plan(key, geometry, obs.locations, self.radius, self.taper)
        return self._plan

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        N, d = E.shape
        N1 = N - 1.0
        plan = self.plan(d, obs, geometry)
        infl = self.inflation
        xbar = E.mean(axis=0)
        A = E - xbar
        Yw, dyw = whitened_innovations(HE, obs)
        YwT = np.ascontiguousarray(Yw.T)  # (m, N)
        Ea = np.empty_like(E)
        if plan.untouched.size:
            u = plan.untouched
            Ea[:, u] = E[:, u] if infl == 1.0 else xbar[u] + infl * A[:, u]
        Ga = plan.counts.size
        f = plan.group_size
        smax = plan.max_group
        kmax = int(plan.counts[-1]) if Ga else 0
        per_var = 2 * N if f is not None else N * N + 2 * N
        per_group = 8 * (4 * N * N + 2 * N * kmax + smax * per_var)
        step = max(1, _CHUNK_BYTES // per_group)
        for g0 in range(0, Ga, step):
            g1 = min(Ga, g0 + step)
            K = int(plan.counts[g1 - 1])
            idx = plan.idx[g0:g1, :K]
            sw = plan.sqrtw[g0:g1, :K]
            Yl = YwT[idx]  # (G, K, N)
            Yl *= sw[:, :, None]
            dl = dyw[idx] * sw  # (G, K)
            W = batched_transforms(Yl.transpose(0, 2, 1), dl, N1, infl, self._form)
            v0, v1 = plan.vptr[g0], plan.vptr[g1]
            vars_ = plan.vars_sorted[v0:v1]
            if f is not None:
                Av = A[:, vars_.reshape(g1 - g0, f)].transpose(1, 0, 2)  # (G, N, f)
                out = np.matmul(W, Av).transpose(1, 0, 2).reshape(N, -1)
            else:
                Wv = W[plan.var_group[v0:v1] - g0]  # (nv, N, N)
                out = np.matmul(Wv, A[:, vars_].T[:, :, None])[:, :, 0].T
            Ea[:, vars_] = out + xbar[vars_]
        return Ea, {"inflation": infl, "mean_local_obs": plan.mean_local_obs}
