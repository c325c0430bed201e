"""The local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentda._validate import check_float, check_int
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


#: how weights are carried from the analysis points to the variables
WEIGHT_INTERPOLATIONS = ("linear", "nearest")


@dataclass
class _WeightMap:
    """Analysis points of the weight interpolation and how variables use them.

    ``points`` is a product lattice (``P`` rows) and ``plan`` localizes it (one
    group per point). Variable ``v`` is analysed with ``sum_c coef_c W[p_c]`` over
    its (variable, point, coefficient) *pairs* with nonzero coefficient. The
    pairs are tabulated by point (``pvar``, ``pcoef``, padded to ``(P, kmax)``
    with coefficient 0) for one batched product per point, and ``order`` /
    ``vstart`` regroup the products by variable for the sums.
    """

    key: tuple[Any, ...]
    points: np.ndarray  # (P, D) analysis points
    plan: _LocalPlan  # localization plan of the analysis points
    pvar: np.ndarray  # (P, kmax) variables using each point, padded with 0
    pcoef: np.ndarray  # (P, kmax) their coefficients, padded with 0
    order: np.ndarray  # (npairs,) flat (P * kmax) positions of the pairs, by variable
    vstart: np.ndarray  # (d,) offset of each variable's pairs in ``order``


def _axis_lattice(name: str, x: np.ndarray, x0: float, period: float, stride: int,
                  ) -> np.ndarray:
    """Every ``stride``-th distinct value of ``x``, on the lattice through ``x0``.

    A non-periodic axis also gets its first and last values (no extrapolation).
    """
    vals = np.unique(x)
    if math.isfinite(period) and vals[-1] - vals[0] >= period:
        raise ValueError(f"weight_stride needs the {name} coordinates to lie within one "
                         f"period ({period:g}; they span {vals[-1] - vals[0]:g})")
    r0 = int(np.searchsorted(vals, x0))
    c = vals[r0 % stride::stride]
    if not math.isfinite(period):
        if c[0] != vals[0]:
            c = np.concatenate(([vals[0]], c))
        if c[-1] != vals[-1]:
            c = np.concatenate((c, [vals[-1]]))
    return c


def _axis_brackets(x: np.ndarray, c: np.ndarray, period: float,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice neighbours ``lo, hi`` (indices into ``c``) of ``x`` and the weight of ``hi``."""
    n = c.size
    k = np.searchsorted(c, x, side="right") - 1  # c[k] <= x < c[k + 1]
    if math.isfinite(period):
        lo_i, hi_i = k % n, (k + 1) % n
        lo = np.where(k >= 0, c[lo_i], c[-1] - period)
        hi = np.where(k + 1 < n, c[hi_i], c[0] + period)
    else:
        if n == 1:
            z = np.zeros(x.size, dtype=np.intp)
            return z, z, np.zeros(x.size)
        k = np.clip(k, 0, n - 2)
        lo_i, hi_i = k, k + 1
        lo, hi = c[lo_i], c[hi_i]
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return lo_i.astype(np.intp), hi_i.astype(np.intp), t


def _weight_map(key: tuple[Any, ...], geometry: Geometry, obs_loc: np.ndarray, radius: float,
                taper: str, stride: int, interp: str) -> _WeightMap:
    loc = geometry.locations
    d, D = loc.shape
    period = geometry.period if geometry.period is not None else (math.inf,) * D
    axes = [_axis_lattice(f"axis-{a}", loc[:, a], loc[0, a], period[a], stride)
            for a in range(D)]
    shape = tuple(c.size for c in axes)
    P = math.prod(shape)
    n_unique = np.unique(loc, axis=0).shape[0]
    if P > n_unique:
        raise ValueError(f"weight_stride={stride} gives {P} analysis points, more than the "
                         f"{n_unique} distinct variable locations: the locations are not on a "
                         f"grid; use a larger weight_stride, or None")
    grids = np.meshgrid(*axes, indexing="ij")
    points = np.column_stack([g.ravel() for g in grids])
    # per-axis neighbours, then the 2^D (linear) or 1 (nearest) corners of each variable
    per_axis = []
    for a in range(D):
        lo, hi, t = _axis_brackets(loc[:, a], axes[a], period[a])
        if interp == "nearest":
            per_axis.append([(np.where(t <= 0.5, lo, hi), np.ones(d))])
        else:
            per_axis.append([(lo, 1.0 - t), (hi, t)])
    corners, coefs = [], []
    for combo in np.ndindex(*(len(pa) for pa in per_axis)):
        idx = tuple(per_axis[a][j][0] for a, j in enumerate(combo))
        corners.append(np.ravel_multi_index(idx, shape))
        coefs.append(np.prod([per_axis[a][j][1] for a, j in enumerate(combo)], axis=0))
    corner = np.column_stack(corners).ravel()  # (d * C,) variable-major
    coef = np.column_stack(coefs).ravel()
    var = np.repeat(np.arange(d), len(corners))
    keep = coef != 0.0
    corner, coef, var = corner[keep], coef[keep], var[keep]
    # tabulate the pairs by point; positions within a point follow variable order
    by_point = np.lexsort((var, corner))
    counts = np.bincount(corner, minlength=P)
    kmax = int(counts.max())
    start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pc = corner[by_point]
    flat = pc * kmax + (np.arange(pc.size) - start[pc])
    pvar = np.zeros(P * kmax, dtype=np.intp)
    pcoef = np.zeros(P * kmax)
    pvar[flat] = var[by_point]
    pcoef[flat] = coef[by_point]
    order = np.empty_like(flat)
    order[by_point] = flat  # back to variable-major order
    vstart = np.searchsorted(var, np.arange(d))
    plan = _local_plan(("points",), Geometry(points, geometry.period), obs_loc, radius, taper)
    return _WeightMap(key=key, points=points, plan=plan, pvar=pvar.reshape(P, kmax),
                      pcoef=pcoef.reshape(P, kmax), order=order, vstart=vstart)


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

    **Weight interpolation** (Yang, Kalnay, Hunt & Bowler 2009). With
    ``weight_stride = s > 1`` the local transforms ``W`` (mean and perturbation
    weights together) are computed only at *analysis points*, a product lattice
    made of every ``s``-th distinct coordinate value of the variable locations
    along each axis, starting from the coordinates of variable 0 (a non-periodic
    axis also keeps its two end values). Each variable then uses the multilinear
    interpolation of the transforms of the ``2^D`` lattice points around it
    (``weight_interp="linear"``, periodic wrap along periodic axes) or those of
    the nearest one (``"nearest"``, ties to the lower lattice point). A variable
    located *on* an analysis point gets the exact LETKF analysis (to round-off).
    The cost of the eigenproblems falls by the ratio of variable locations to
    analysis points; the ``(P, N, N)`` transforms of the ``P`` analysis points
    are held in memory. Distinct values count interleaved staggered positions separately: on
    the shallow-water C-grid (``h``, ``u``, ``v`` half a cell apart)
    ``weight_stride=2`` puts the analysis points on every ``h`` point and ``4``
    on every second ``h`` point in each direction. The weights vary on the scale
    of the localization radius, so a lattice spacing of a fraction of the radius
    changes the analysis little (measure it).

    Parameters
    ----------
    radius : float or None
        Gaspari–Cohn half-width ``c`` (> 0; support ``2c``), in location units.
    taper : str
        Taper name; ``"gaspari_cohn"``.
    inflation : float
        Post-analysis multiplicative inflation, >= 1 (applied to every variable).
    weight_stride : int or None
        ``None`` or 1: the exact LETKF (weights at every variable location);
        ``s >= 2``: weight interpolation from every ``s``-th lattice point (see above).
        Ignored without localization.
    weight_interp : {"linear", "nearest"}
        How transforms are carried from the analysis points to the variables.

    Examples
    --------
    >>> LETKF(4.0, inflation=1.02)
    LETKF(inflation=1.02, radius=4.0, taper='gaspari_cohn')
    >>> LETKF(150e3, weight_stride=4)
    LETKF(inflation=1.0, radius=150000.0, taper='gaspari_cohn', weight_stride=4)
    """

    radius: float | None
    taper: str = "gaspari_cohn"
    weight_stride: int | None = None
    weight_interp: str = "linear"
    _plan: _LocalPlan | None = field(default=None, init=False, repr=False, compare=False)
    _wmap: _WeightMap | None = field(default=None, init=False, repr=False, compare=False)
    #: "ens" / "obs" forces the local eigenproblem's space (testing); None: the smaller
    _form: str | None = field(default=None, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        text = (f"LETKF(inflation={self.inflation!r}, radius={self.radius!r}, "
                f"taper={self.taper!r}")
        if self.weight_stride is not None:
            text += f", weight_stride={self.weight_stride!r}"
        if self.weight_interp != "linear":
            text += f", weight_interp={self.weight_interp!r}"
        return text + ")"

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
        if self.weight_stride is not None:
            self.weight_stride = check_int("weight_stride", self.weight_stride, min_value=1)
        if self.weight_interp not in WEIGHT_INTERPOLATIONS:
            raise ValueError(f"weight_interp must be one of {list(WEIGHT_INTERPOLATIONS)} "
                             f"(got {self.weight_interp!r})")

    @property
    def is_global(self) -> bool:
        """True when no localization is applied (radius None or inf)."""
        return self.radius is None or math.isinf(self.radius)

    @property
    def interpolates(self) -> bool:
        """True when transforms are computed at analysis points and interpolated."""
        return not self.is_global and self.weight_stride is not None and self.weight_stride > 1

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
        if self.interpolates:
            self.weight_map(obs, geometry)  # lattice errors before h is evaluated

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

    def weight_map(self, obs: Observation, geometry: Geometry) -> _WeightMap:
        """Return the (cached) analysis points and interpolation of ``weight_stride``."""
        assert obs.locations is not None and self.radius is not None
        wm = self._wmap
        if (wm is not None and wm.key[0] == "points" and wm.key[1] == self.radius
                and wm.key[2] == self.taper and wm.key[3] == geometry.period
                and wm.key[4] == self.weight_stride and wm.key[5] == self.weight_interp
                and np.array_equal(wm.key[6], geometry.locations)
                and np.array_equal(wm.key[7], obs.locations)):
            return wm
        assert self.weight_stride is not None
        key = ("points", self.radius, self.taper, geometry.period, self.weight_stride,
               self.weight_interp, geometry.locations.copy(), obs.locations.copy())
        self._wmap = _weight_map(key, geometry, obs.locations, self.radius, self.taper,
                                 self.weight_stride, self.weight_interp)
        return self._wmap

    def _group_transforms(self, plan: _LocalPlan, YwT: np.ndarray, dyw: np.ndarray,
                          N: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(g0, g1, W)`` for batches of the plan's active groups (bounded memory)."""
        Ga = plan.counts.size
        kmax = int(plan.counts[-1]) if Ga else 0
        f = plan.group_size
        per_var = 2 * N if f is not None else N * N + 2 * N
        per_group = 8 * (4 * N * N + 2 * N * kmax + plan.max_group * per_var)
        step = max(1, _CHUNK_BYTES // per_group)
        for g0 in range(0, Ga, step):
            g1 = min(Ga, g0 + step)
            K = int(plan.counts[g1 - 1])
            idx = plan.idx[g0:g1, :K]
            sw = plan.sqrtw[g0:g1, :K]
            Yl = YwT[idx]  # (G, K, N)
            Yl *= sw[:, :, None]
            dl = dyw[idx] * sw  # (G, K)
            yield g0, g1, batched_transforms(Yl.transpose(0, 2, 1), dl, N - 1.0,
                                             self.inflation, self._form)

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        N, d = E.shape
        infl = self.inflation
        xbar = E.mean(axis=0)
        A = E - xbar
        Yw, dyw = whitened_innovations(HE, obs)
        YwT = np.ascontiguousarray(Yw.T)  # (m, N)
        if self.interpolates:
            assert geometry is not None
            return self._analyse_interpolated(A, xbar, YwT, dyw, obs, geometry)
        plan = self.plan(d, obs, geometry)
        Ea = np.empty_like(E)
        if plan.untouched.size:
            u = plan.untouched
            Ea[:, u] = E[:, u] if infl == 1.0 else xbar[u] + infl * A[:, u]
        f = plan.group_size
        for g0, g1, W in self._group_transforms(plan, YwT, dyw, N):
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

    def _analyse_interpolated(self, A: np.ndarray, xbar: np.ndarray, YwT: np.ndarray,
                              dyw: np.ndarray, obs: Observation, geometry: Geometry,
                              ) -> tuple[np.ndarray, dict[str, float]]:
        N, d = A.shape
        wm = self.weight_map(obs, geometry)
        plan = wm.plan
        P = wm.points.shape[0]
        Wp = np.zeros((P, N, N))  # transforms at the analysis points; no obs: infl * I
        Wp.reshape(P, N * N)[:, :: N + 1] = self.inflation
        for g0, g1, W in self._group_transforms(plan, YwT, dyw, N):
            Wp[plan.vars_sorted[plan.vptr[g0]:plan.vptr[g1]]] = W  # one point per group
        kmax = wm.pvar.shape[1]
        Z = np.empty((N, P, kmax))  # coef * W[p] @ A[:, v] for every pair, by point
        step = max(1, _CHUNK_BYTES // (8 * 2 * N * kmax))
        for p0 in range(0, P, step):
            p1 = min(P, p0 + step)
            Ap = A[:, wm.pvar[p0:p1]].transpose(1, 0, 2)  # (p, N, kmax)
            Zp = np.matmul(Wp[p0:p1], Ap)
            Zp *= wm.pcoef[p0:p1, None, :]
            Z[:, p0:p1] = Zp.transpose(1, 0, 2)
        Ea = np.add.reduceat(Z.reshape(N, P * kmax)[:, wm.order], wm.vstart, axis=1)
        Ea += xbar
        return Ea, {"inflation": self.inflation, "mean_local_obs": plan.mean_local_obs,
                    "analysis_points": float(P)}
