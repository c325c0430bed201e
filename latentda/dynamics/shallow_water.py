"""Nonlinear rotating shallow water on a doubly periodic domain (Arakawa C-grid).

Equations (vector-invariant form)::

    dh/dt = -div(h u)
    du/dt = + q (h v) - dB/dx + D(u)
    dv/dt = - q (h u) - dB/dy + D(v)
    q = (f + zeta) / h,  zeta = dv/dx - du/dy,  B = g h + (u^2 + v^2) / 2
    D(w) = nu lap(w) - nu4 lap(lap(w)) - drag w,  f = f0 + beta (y - Ly/2)

Discretization
--------------
* Arakawa C-grid on ``nx`` by ``ny`` cells of size ``dx = Lx/nx``, ``dy = Ly/ny``.
  Cell ``(j, i)`` holds the total depth ``h`` at its centre ``((i+1/2) dx, (j+1/2) dy)``,
  ``u`` on its west face ``(i dx, (j+1/2) dy)`` and ``v`` on its south face
  ``((i+1/2) dx, j dy)``; vorticity and potential vorticity live on the corners
  ``(i dx, j dy)``.
* Flux-form continuity ``dh/dt = -(delta_x U + delta_y V)`` with ``U = avg_x(h) u``,
  ``V = avg_y(h) v``: the total mass ``sum(h) dx dy`` is conserved to round-off.
* Sadourny's (1975) energy-conserving vorticity flux ``+avg_y(q avg_x(V))`` /
  ``-avg_x(q avg_y(U))`` with the corner potential vorticity
  ``q = (f + zeta) / avg_xy(h)``, and the Bernoulli function
  ``B = g h + (avg_x(u^2) + avg_y(v^2)) / 2``. Without dissipation the
  semi-discrete system conserves mass and the total energy
  ``sum(h (avg_x(u^2) + avg_y(v^2)) / 2 + g h^2 / 2) dx dy`` exactly (see
  :meth:`ShallowWater2D.total_energy`); potential enstrophy is not conserved.
* Classical fourth-order Runge-Kutta in time. Its stability limit for the
  C-grid gravity waves is ``sqrt(g H) dt sqrt(1/dx^2 + 1/dy^2) <= sqrt(2)``, which
  ``cfl <= 1`` guarantees; the default ``dt`` is ``cfl * min(dx, dy) / sqrt(g H)``,
  i.e. it is set by the *gravity-wave* speed (the fastest signal for the
  small-Rossby-number flows of the initial-condition families).

The state of one member is ``[h, u, v]`` flattened row-major from ``(ny, nx)``
arrays, ``n = 3 nx ny``; ``h`` is the total depth (m), not the surface elevation
``eta = h - H``. The Numba kernel integrates every member on its own (serial,
no ``parallel=True``, no fastmath), so results do not depend on the batch.
Non-finite values propagate (a blown-up member becomes NaN, nothing is clipped).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from latentda._validate import check_ensemble, check_float, check_int, check_rng
from latentda.dynamics.base import Dynamics

__all__ = ["ShallowWater2D"]

#: seconds of spin-up of the default climatology (5 days, about 7 inertial periods at f0=1e-4)
SPINUP_TIME = 5 * 86400.0
#: default hyperviscosity coefficient c in nu4 = c * d^4 / T, d = min(dx, dy), T = d / sqrt(g H)
NU4_COEFF = 2.0e-3
#: largest allowed (damping rate of the grid-scale mode) * dt; RK4 is stable on [-2.78, 0]
MAX_DAMPING_DT = 2.5


# --------------------------------------------------------------------------------------
# Numba kernels. All work arrays carry a one-cell periodic halo: padded index (j, i)
# holds the physical point (i - 1, j - 1); halos are refilled before each stencil.
# Loops are kept small (one or two outputs, few inputs) so that LLVM can vectorize
# them (its run-time alias checks give up on loops touching many arrays), and
# ``error_model="numpy"`` gives IEEE division (inf/NaN instead of an exception, and
# vectorizable); there is no fastmath, so results are bit-reproducible.
# --------------------------------------------------------------------------------------
_KW = {"cache": True, "nogil": True, "error_model": "numpy"}

#: indices of the work arrays in the (NWORK, ny + 2, nx + 2) scratch block
_U, _V, _B, _Q, _QU, _QV, _LU, _LV, _KH, _KU, _KV = range(11)
NWORK = 11


@njit(**_KW)
def _fill_halo(a):  # pragma: no cover - compiled
    ny = a.shape[0] - 2
    nx = a.shape[1] - 2
    for j in range(1, ny + 1):
        a[j, 0] = a[j, nx]
        a[j, nx + 1] = a[j, 1]
    for i in range(nx + 2):
        a[0, i] = a[ny, i]
        a[ny + 1, i] = a[1, i]


@njit(**_KW)
def _laplacian(a, out, rdx2, rdy2):  # pragma: no cover - compiled
    ny = a.shape[0] - 2
    nx = a.shape[1] - 2
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            out[j, i] = ((a[j, i + 1] - 2.0 * a[j, i] + a[j, i - 1]) * rdx2
                         + (a[j + 1, i] - 2.0 * a[j, i] + a[j - 1, i]) * rdy2)


@njit(**_KW)
def _dissipate(k, a, La, nu, nu4, drag, rdx2, rdy2):  # pragma: no cover - compiled
    """``k += nu lap(a) - nu4 lap(lap(a)) - drag a`` with ``La = lap(a)`` (halo filled)."""
    ny = a.shape[0] - 2
    nx = a.shape[1] - 2
    if nu4 != 0.0:
        for j in range(1, ny + 1):
            for i in range(1, nx + 1):
                k[j, i] -= nu4 * ((La[j, i + 1] - 2.0 * La[j, i] + La[j, i - 1]) * rdx2
                                  + (La[j + 1, i] - 2.0 * La[j, i] + La[j - 1, i]) * rdy2)
    if nu != 0.0:
        for j in range(1, ny + 1):
            for i in range(1, nx + 1):
                k[j, i] += nu * La[j, i]
    if drag != 0.0:
        for j in range(1, ny + 1):
            for i in range(1, nx + 1):
                k[j, i] -= drag * a[j, i]


@njit(**_KW)
def _rhs(h, u, v, w, fq, g, rdx, rdy, nu, nu4, drag):  # pragma: no cover - compiled
    """Tendencies of the padded state ``(h, u, v)`` into ``w[_KH], w[_KU], w[_KV]``."""
    ny = h.shape[0] - 2
    nx = h.shape[1] - 2
    U, V, B, Q, QU, QV = w[_U], w[_V], w[_B], w[_Q], w[_QU], w[_QV]
    kh, ku, kv = w[_KH], w[_KU], w[_KV]
    _fill_halo(h)
    _fill_halo(u)
    _fill_halo(v)
    # mass fluxes U = avg_x(h) u, V = avg_y(h) v and Bernoulli function B
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            U[j, i] = 0.5 * (h[j, i - 1] + h[j, i]) * u[j, i]
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            V[j, i] = 0.5 * (h[j - 1, i] + h[j, i]) * v[j, i]
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            B[j, i] = g * h[j, i] + 0.25 * (u[j, i] * u[j, i] + u[j, i + 1] * u[j, i + 1]
                                            + v[j, i] * v[j, i] + v[j + 1, i] * v[j + 1, i])
    _fill_halo(U)
    _fill_halo(V)
    _fill_halo(B)
    # corner potential vorticity q = (f + zeta) / avg_xy(h)
    for j in range(1, ny + 1):
        fj = fq[j - 1]
        for i in range(1, nx + 1):
            zeta = (v[j, i] - v[j, i - 1]) * rdx - (u[j, i] - u[j - 1, i]) * rdy
            hq = 0.25 * (h[j, i] + h[j, i - 1] + h[j - 1, i] + h[j - 1, i - 1])
            Q[j, i] = (fj + zeta) / hq
    # q times 2 avg_x(V) and 2 avg_y(U) on the corners (the 0.5 factors come below)
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            QV[j, i] = Q[j, i] * (V[j, i - 1] + V[j, i])
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            QU[j, i] = Q[j, i] * (U[j - 1, i] + U[j, i])
    _fill_halo(QV)
    _fill_halo(QU)
    # dh = -div(U, V); du = avg_y(q avg_x V) - dB/dx; dv = -avg_x(q avg_y U) - dB/dy
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            kh[j, i] = -((U[j, i + 1] - U[j, i]) * rdx + (V[j + 1, i] - V[j, i]) * rdy)
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            ku[j, i] = 0.25 * (QV[j, i] + QV[j + 1, i]) - (B[j, i] - B[j, i - 1]) * rdx
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            kv[j, i] = -0.25 * (QU[j, i] + QU[j, i + 1]) - (B[j, i] - B[j - 1, i]) * rdy
    if nu != 0.0 or nu4 != 0.0 or drag != 0.0:
        Lu, Lv = w[_LU], w[_LV]
        rdx2 = rdx * rdx
        rdy2 = rdy * rdy
        if nu != 0.0 or nu4 != 0.0:
            _laplacian(u, Lu, rdx2, rdy2)
            _laplacian(v, Lv, rdx2, rdy2)
            _fill_halo(Lu)
            _fill_halo(Lv)
        _dissipate(ku, u, Lu, nu, nu4, drag, rdx2, rdy2)
        _dissipate(kv, v, Lv, nu, nu4, drag, rdx2, rdy2)


@njit(**_KW)
def _rk_stage(y0, k, acc, out, c, first):  # pragma: no cover - compiled
    """``acc = k`` (first) or ``acc += 2 k``; then ``out = y0 + c k`` (interior only)."""
    ny = y0.shape[0] - 2
    nx = y0.shape[1] - 2
    if first:
        for j in range(1, ny + 1):
            for i in range(1, nx + 1):
                acc[j, i] = k[j, i]
    else:
        for j in range(1, ny + 1):
            for i in range(1, nx + 1):
                acc[j, i] += 2.0 * k[j, i]
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            out[j, i] = y0[j, i] + c * k[j, i]


@njit(**_KW)
def _rk_final(y0, k, acc, c):  # pragma: no cover - compiled
    """``y0 += c (acc + k)`` on the interior."""
    ny = y0.shape[0] - 2
    nx = y0.shape[1] - 2
    for j in range(1, ny + 1):
        for i in range(1, nx + 1):
            y0[j, i] += c * (acc[j, i] + k[j, i])


@njit(**_KW)
def _load(row, off, a, ny, nx):  # pragma: no cover - compiled
    for j in range(ny):
        for i in range(nx):
            a[j + 1, i + 1] = row[off + j * nx + i]


@njit(**_KW)
def _store(a, row, off, ny, nx):  # pragma: no cover - compiled
    for j in range(ny):
        for i in range(nx):
            row[off + j * nx + i] = a[j + 1, i + 1]


@njit(**_KW)
def _sw_advance(E, nsteps, nx, ny, fq, g, dx, dy, dt, nu, nu4, drag):  # pragma: no cover
    """RK4-integrate each member of ``E`` (N, 3 ny nx) for ``nsteps``; returns a new array.

    Members are integrated one after the other, each for all its steps, so the
    work arrays (allocated once per call) stay in cache.
    """
    N = E.shape[0]
    nxy = nx * ny
    out = np.empty_like(E)
    rdx = 1.0 / dx
    rdy = 1.0 / dy
    s = np.zeros((9, ny + 2, nx + 2))
    h0, u0, v0, hs, us, vs, ah, au, av = s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8]
    w = np.zeros((NWORK, ny + 2, nx + 2))
    kh, ku, kv = w[_KH], w[_KU], w[_KV]
    half = 0.5 * dt
    sixth = dt / 6.0
    for m in range(N):
        row = E[m]
        _load(row, 0, h0, ny, nx)
        _load(row, nxy, u0, ny, nx)
        _load(row, 2 * nxy, v0, ny, nx)
        for _ in range(nsteps):
            _rhs(h0, u0, v0, w, fq, g, rdx, rdy, nu, nu4, drag)
            _rk_stage(h0, kh, ah, hs, half, True)
            _rk_stage(u0, ku, au, us, half, True)
            _rk_stage(v0, kv, av, vs, half, True)
            _rhs(hs, us, vs, w, fq, g, rdx, rdy, nu, nu4, drag)
            _rk_stage(h0, kh, ah, hs, half, False)
            _rk_stage(u0, ku, au, us, half, False)
            _rk_stage(v0, kv, av, vs, half, False)
            _rhs(hs, us, vs, w, fq, g, rdx, rdy, nu, nu4, drag)
            _rk_stage(h0, kh, ah, hs, dt, False)
            _rk_stage(u0, ku, au, us, dt, False)
            _rk_stage(v0, kv, av, vs, dt, False)
            _rhs(hs, us, vs, w, fq, g, rdx, rdy, nu, nu4, drag)
            _rk_final(h0, kh, ah, sixth)
            _rk_final(u0, ku, au, sixth)
            _rk_final(v0, kv, av, sixth)
        orow = out[m]
        _store(h0, orow, 0, ny, nx)
        _store(u0, orow, nxy, ny, nx)
        _store(v0, orow, 2 * nxy, ny, nx)
    return out


@njit(**_KW)
def _sw_tendency(E, nx, ny, fq, g, dx, dy, nu, nu4, drag):  # pragma: no cover - compiled
    """Right-hand side of the semi-discrete equations for each member of ``E``."""
    N = E.shape[0]
    nxy = nx * ny
    out = np.empty_like(E)
    s = np.zeros((3, ny + 2, nx + 2))
    h, u, v = s[0], s[1], s[2]
    w = np.zeros((NWORK, ny + 2, nx + 2))
    for m in range(N):
        row = E[m]
        _load(row, 0, h, ny, nx)
        _load(row, nxy, u, ny, nx)
        _load(row, 2 * nxy, v, ny, nx)
        _rhs(h, u, v, w, fq, g, 1.0 / dx, 1.0 / dy, nu, nu4, drag)
        orow = out[m]
        _store(w[_KH], orow, 0, ny, nx)
        _store(w[_KU], orow, nxy, ny, nx)
        _store(w[_KV], orow, 2 * nxy, ny, nx)
    return out


# --------------------------------------------------------------------------------------
def _periodic_gauss(coord: np.ndarray, centre: np.ndarray, width: np.ndarray,
                    period: float) -> np.ndarray:
    """exp(-(coord - centre)^2 / (2 width^2)) summed over periodic images.

    ``centre`` and ``width`` have shape (N, K); returns shape (N, K, len(coord)).
    """
    d = coord[None, None, :] - centre[:, :, None]
    d = (d + 0.5 * period) % period - 0.5 * period
    s2 = 2.0 * width[:, :, None] ** 2
    out = np.zeros_like(d)
    for img in (-2, -1, 0, 1, 2):
        out += np.exp(-((d + img * period) ** 2) / s2)
    return out


class ShallowWater2D(Dynamics):
    """Nonlinear rotating shallow water on a doubly periodic C-grid (see the module docstring).

    Parameters
    ----------
    nx, ny : int
        Number of cells along x and y (>= 4 each).
    Lx, Ly : float
        Domain size (m), > 0.
    g : float
        Gravitational acceleration (m s-2), > 0.
    H : float
        Mean depth (m), > 0; sets the gravity-wave speed ``sqrt(g H)`` used for ``dt``.
    f0, beta : float
        Coriolis parameter ``f = f0 + beta (y - Ly/2)`` (s-1, m-1 s-1). With
        ``beta != 0``, ``f`` jumps across the periodic y boundary: keep ``beta Ly``
        small against ``f0`` (the jump acts as a potential-vorticity front).
    nu : float
        Laplacian viscosity (m2 s-1), >= 0.
    nu4 : float or None
        Biharmonic hyperviscosity (m4 s-1), >= 0. ``None`` picks
        ``nu4 = 2e-3 d^4 / T`` with ``d = min(dx, dy)`` and ``T = d / sqrt(g H)``
        (the gravity-wave crossing time of a cell): the grid-scale mode is damped
        with e-folding time ~ ``7.8 T``, which keeps the default climatology
        stable and scales with the resolution.
    drag : float
        Linear (Rayleigh) drag on the velocity (s-1), >= 0.
    cfl : float
        Gravity-wave Courant number in (0, 1] used when ``dt`` is None.
    dt : float or None
        Time step (s). ``None``: ``dt = cfl min(dx, dy) / sqrt(g H)``. An explicit
        ``dt`` must satisfy ``dt sqrt(g H) / min(dx, dy) <= 1``; ``cfl`` then reports
        that ratio.

    Raises
    ------
    ValueError
        If any parameter is out of range, naming it; also when the explicit
        dissipation would make RK4 unstable (``rate * dt > 2.5``).
    """

    name = "shallow_water"

    def __init__(self, *, nx: int = 64, ny: int = 64, Lx: float = 1.0e6, Ly: float = 1.0e6,
                 g: float = 9.81, H: float = 100.0, f0: float = 1.0e-4, beta: float = 0.0,
                 nu: float = 0.0, nu4: float | None = None, drag: float = 0.0,
                 cfl: float = 0.5, dt: float | None = None) -> None:
        self.nx = check_int("nx", nx, min_value=4)
        self.ny = check_int("ny", ny, min_value=4)
        self.Lx = check_float("Lx", Lx, positive=True)
        self.Ly = check_float("Ly", Ly, positive=True)
        self.g = check_float("g", g, positive=True)
        self.H = check_float("H", H, positive=True)
        self.f0 = check_float("f0", f0)
        self.beta = check_float("beta", beta)
        self.nu = check_float("nu", nu, nonnegative=True)
        self.drag = check_float("drag", drag, nonnegative=True)
        cfl = check_float("cfl", cfl, positive=True, max_value=1.0)
        self.dx = self.Lx / self.nx
        self.dy = self.Ly / self.ny
        dmin = min(self.dx, self.dy)
        self.wave_speed = math.sqrt(self.g * self.H)
        if dt is None:
            self._dt = cfl * dmin / self.wave_speed
            self.cfl = cfl
        else:
            dt = check_float("dt", dt, positive=True)
            dt_max = dmin / self.wave_speed
            if dt > dt_max:
                raise ValueError(
                    f"dt must be <= min(dx, dy) / sqrt(g H) = {dt_max:.6g} s for a stable "
                    f"gravity-wave Courant number (got {dt}); reduce dt or pass dt=None"
                )
            self._dt = dt
            self.cfl = dt / dt_max
        if nu4 is None:
            self.nu4 = NU4_COEFF * dmin**3 * self.wave_speed
        else:
            self.nu4 = check_float("nu4", nu4, nonnegative=True)
        lam = 4.0 / self.dx**2 + 4.0 / self.dy**2  # largest |eigenvalue| of the Laplacian
        for field, rate in (("nu4", self.nu4 * lam**2), ("nu", self.nu * lam),
                            ("drag", self.drag)):
            if rate * self._dt > MAX_DAMPING_DT:
                raise ValueError(
                    f"{field} is too large for explicit RK4 at dt = {self._dt:.6g} s: the "
                    f"grid-scale damping rate times dt is {rate * self._dt:.3g} "
                    f"(must be <= {MAX_DAMPING_DT}); reduce {field} or dt"
                )
        rate = self.nu4 * lam**2 + self.nu * lam + self.drag
        if rate * self._dt > MAX_DAMPING_DT:
            raise ValueError(
                f"nu, nu4 and drag together damp the grid-scale mode at rate*dt = "
                f"{rate * self._dt:.3g} (must be <= {MAX_DAMPING_DT}); reduce them or dt"
            )
        # Coriolis parameter on the corner rows y = j dy (where the vorticity lives)
        self._f_corner = self.f0 + self.beta * (np.arange(self.ny) * self.dy - 0.5 * self.Ly)
        self.spinup_steps = int(math.ceil(SPINUP_TIME / self._dt))

    # ---------------------------------------------------------------- protocol
    @property
    def state_dim(self) -> int:
        """Length ``3 nx ny`` of one flattened state ``[h, u, v]``."""
        return 3 * self.nx * self.ny

    @property
    def dt(self) -> float:
        """Model time step (s)."""
        return self._dt

    @property
    def domain_period(self) -> tuple[float, float]:
        """``(Lx, Ly)``: the domain is periodic in x and y."""
        return (self.Lx, self.Ly)

    def __repr__(self) -> str:
        return (f"ShallowWater2D(nx={self.nx}, ny={self.ny}, Lx={self.Lx:g}, Ly={self.Ly:g}, "
                f"g={self.g:g}, H={self.H:g}, f0={self.f0:g}, beta={self.beta:g}, "
                f"nu={self.nu:g}, nu4={self.nu4:.4g}, drag={self.drag:g}, "
                f"cfl={self.cfl:.4g}, dt={self._dt:.6g})")

    def _advance(self, E: np.ndarray, nsteps: int) -> np.ndarray:
        return _sw_advance(E, int(nsteps), self.nx, self.ny, self._f_corner, self.g, self.dx,
                           self.dy, self._dt, self.nu, self.nu4, self.drag)

    def tendency(self, E: np.ndarray) -> np.ndarray:
        """Right-hand side ``dE/dt`` of the semi-discrete equations.

        Parameters
        ----------
        E : ndarray, shape (N, n) or (n,)

        Returns
        -------
        ndarray, shape (N, n)
        """
        E = check_ensemble("E", E, self.state_dim)
        return _sw_tendency(E, self.nx, self.ny, self._f_corner, self.g, self.dx, self.dy,
                            self.nu, self.nu4, self.drag)

    # ---------------------------------------------------------------- geometry
    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y (m) of every state variable, each shape (n,)."""
        xc = (np.arange(self.nx) + 0.5) * self.dx
        yc = (np.arange(self.ny) + 0.5) * self.dy
        xf = np.arange(self.nx) * self.dx
        yf = np.arange(self.ny) * self.dy
        grids = [np.meshgrid(xc, yc), np.meshgrid(xf, yc), np.meshgrid(xc, yf)]  # h, u, v
        x = np.concatenate([gx.ravel() for gx, _ in grids])
        y = np.concatenate([gy.ravel() for _, gy in grids])
        return x, y

    def state_coords(self) -> dict[str, tuple[str, np.ndarray, dict]]:
        """Coordinates along ``state``: ``field`` (0=h, 1=u, 2=v), ``y`` and ``x`` (m).

        ``x`` and ``y`` are the staggered C-grid positions of each variable.
        """
        nxy = self.nx * self.ny
        field = np.repeat(np.arange(3, dtype=np.int8), nxy)
        x, y = self._positions()
        return {
            "field": ("state", field, {
                "long_name": "state variable",
                "flag_values": np.array([0, 1, 2], dtype=np.int8),
                "flag_meanings": "h u v",
                "comment": "h: total fluid depth (m) at cell centres; u: eastward velocity "
                           "(m s-1) on west cell faces; v: northward velocity (m s-1) on "
                           "south cell faces",
            }),
            "y": ("state", y, {"units": "m", "long_name": "y position of the state variable "
                                                          "(staggered C-grid)"}),
            "x": ("state", x, {"units": "m", "long_name": "x position of the state variable "
                                                          "(staggered C-grid)"}),
        }

    def state_locations(self) -> np.ndarray:
        """``(n, 2)`` array of the (x, y) positions (m) of the state variables."""
        x, y = self._positions()
        return np.stack([x, y], axis=1)

    # ---------------------------------------------------------------- packing
    def fields(self, E: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Split states into ``(h, u, v)``, each of shape ``(N, ny, nx)``.

        The arrays are views of ``E`` when ``E`` is already a C-contiguous float64
        ``(N, n)`` array.
        """
        E = check_ensemble("E", E, self.state_dim)
        F = E.reshape(E.shape[0], 3, self.ny, self.nx)
        return F[:, 0], F[:, 1], F[:, 2]

    def pack(self, h: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Stack fields of shape ``(N, ny, nx)`` (or ``(ny, nx)``) into states ``(N, n)``."""
        arrs = []
        for nm, a in (("h", h), ("u", u), ("v", v)):
            a = np.asarray(a, dtype=np.float64)
            if a.ndim == 2:
                a = a[None]
            if a.ndim != 3 or a.shape[1:] != (self.ny, self.nx):
                raise ValueError(f"{nm} must have shape (N, {self.ny}, {self.nx}) or "
                                 f"({self.ny}, {self.nx}) (got {a.shape})")
            arrs.append(a)
        if not arrs[0].shape[0] == arrs[1].shape[0] == arrs[2].shape[0]:
            raise ValueError("h, u and v must have the same number of members N "
                             f"(got {[a.shape[0] for a in arrs]})")
        return np.ascontiguousarray(
            np.stack(arrs, axis=1).reshape(arrs[0].shape[0], self.state_dim))

    # ---------------------------------------------------------------- diagnostics
    def total_mass(self, E: np.ndarray) -> np.ndarray:
        """Total volume ``sum(h) dx dy`` (m3) of each member, shape (N,)."""
        h, _, _ = self.fields(E)
        return h.sum(axis=(1, 2)) * (self.dx * self.dy)

    def total_energy(self, E: np.ndarray) -> np.ndarray:
        """Energy conserved by the inviscid semi-discrete scheme (m5 s-2), shape (N,).

        ``sum(h (avg_x(u^2) + avg_y(v^2)) / 2 + g h^2 / 2) dx dy``, where ``avg_x(u^2)``
        is the mean of ``u^2`` on the two x-faces of a cell (equivalently the kinetic
        energy ``avg_x(h) u^2 / 2`` summed on the u-points). Per unit density.
        """
        h, u, v = self.fields(E)
        u2 = u * u
        v2 = v * v
        ke = 0.25 * h * (u2 + np.roll(u2, -1, axis=2) + v2 + np.roll(v2, -1, axis=1))
        return (ke + 0.5 * self.g * h * h).sum(axis=(1, 2)) * (self.dx * self.dy)

    def available_energy(self, E: np.ndarray) -> np.ndarray:
        """Total energy minus that of the resting state of the same mass, shape (N,).

        This (kinetic plus available potential energy) is the dynamically active part
        of :meth:`total_energy`, which the resting ``g h^2 / 2`` term otherwise dominates.
        """
        area = self.Lx * self.Ly
        hbar = self.total_mass(E) / area
        return self.total_energy(E) - 0.5 * self.g * hbar**2 * area

    def potential_vorticity(self, E: np.ndarray) -> np.ndarray:
        """Potential vorticity ``(f + zeta) / h`` at the cell corners (m-1 s-1).

        Returns
        -------
        ndarray, shape (N, ny, nx)
            Entry ``[:, j, i]`` is at ``(i dx, j dy)``.
        """
        h, u, v = self.fields(E)
        zeta = ((v - np.roll(v, 1, axis=2)) / self.dx - (u - np.roll(u, 1, axis=1)) / self.dy)
        hx = h + np.roll(h, 1, axis=2)
        hq = 0.25 * (hx + np.roll(hx, 1, axis=1))
        return (self._f_corner[None, :, None] + zeta) / hq

    # ---------------------------------------------------------------- initial states
    def _widths(self, width: tuple[float, float] | None, shape: tuple[int, int],
                rng: np.random.Generator) -> np.ndarray:
        lmin = min(self.Lx, self.Ly)
        floor = 2.0 * max(self.dx, self.dy)
        if width is None:
            lo, hi = max(0.04 * lmin, floor), max(0.08 * lmin, floor)
        else:
            if not isinstance(width, (tuple, list)) or len(width) != 2:
                raise ValueError(f"width must be a (min, max) pair in metres (got {width!r})")
            lo = check_float("width[0]", width[0], positive=True)
            hi = check_float("width[1]", width[1], positive=True, max_value=0.25 * lmin)
            if lo > hi:
                raise ValueError(f"width must satisfy min <= max (got {width!r})")
        return rng.uniform(lo, hi, size=shape)

    def _gaussians(self, amp: np.ndarray, xc: np.ndarray, yc: np.ndarray,
                   width: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Sum of K periodic Gaussians per member on the grid ``y x x``: (N, len(y), len(x))."""
        gx = _periodic_gauss(x, xc, width, self.Lx)
        gy = _periodic_gauss(y, yc, width, self.Ly)
        return np.einsum("nk,nky,nkx->nyx", amp, gy, gx)

    def random_vortices(self, N: int, rng: np.random.Generator, n_vortices: int = 12,
                        amplitude: float | None = None,
                        width: tuple[float, float] | None = None) -> np.ndarray:
        """Random geostrophically balanced vortex fields.

        The surface elevation on the cell corners is a sum of ``n_vortices`` periodic
        Gaussians at uniform random positions, widths uniform in ``width`` (default
        ``(0.04, 0.08) min(Lx, Ly)``, at least two cells) and amplitudes
        ``+-U(0.5, 1) amplitude`` (m; default ``amplitude = 0.02 H``), with its mean
        removed so that the mean depth is exactly ``H``. Depth and velocities then come
        from :meth:`geostrophic_state`: the velocities are the discrete geostrophic
        ones, ``u = -(g/f) delta_y eta_c``, ``v = (g/f) delta_x eta_c``, so with
        ``beta = 0`` the flow is exactly non-divergent and the state is an exact steady
        state of the linearized discrete equations.

        Returns
        -------
        ndarray, shape (N, n)

        Raises
        ------
        ValueError
            If ``f`` vanishes somewhere (no geostrophic balance: use
            :meth:`gaussian_bumps`) or a parameter is out of range.
        """
        N = check_int("N", N, min_value=1)
        rng = check_rng(rng)
        K = check_int("n_vortices", n_vortices, min_value=1)
        amp = 0.02 * self.H if amplitude is None else amplitude
        amp = check_float("amplitude", amp, nonnegative=True, max_value=0.5 * self.H)
        f_u, f_v = self._coriolis_faces()
        widths = self._widths(width, (N, K), rng)
        xc = rng.uniform(0.0, self.Lx, size=(N, K))
        yc = rng.uniform(0.0, self.Ly, size=(N, K))
        a = amp * rng.uniform(0.5, 1.0, size=(N, K)) * rng.choice([-1.0, 1.0], size=(N, K))
        eta_c = self._gaussians(a, xc, yc, widths, np.arange(self.nx) * self.dx,
                                np.arange(self.ny) * self.dy)
        eta_c -= eta_c.mean(axis=(1, 2), keepdims=True)
        h, u, v = self._geostrophic(eta_c, f_u, f_v)
        if not np.all(h > 0):
            raise ValueError("amplitude is too large for H: the depth would become "
                             "non-positive; reduce amplitude or n_vortices")
        return self.pack(h, u, v)

    def geostrophic_state(self, eta_corner: np.ndarray,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth and velocities in discrete geostrophic balance with a corner elevation.

        With ``eta_c`` given on the cell corners ``(i dx, j dy)``, returns
        ``h = H + avg_xy(eta_c)`` at the centres, ``u = -(g/f) delta_y eta_c`` and
        ``v = (g/f) delta_x eta_c`` on the faces. With ``beta = 0`` this is an exact
        steady state of the *linearized* discrete equations (``g eta_c / f`` is a
        streamfunction, so the flow is non-divergent on the C-grid and the averaged
        Coriolis force balances the pressure gradient); nonlinear terms make it
        balanced to ``O(Rossby number)``.

        Parameters
        ----------
        eta_corner : ndarray, shape (N, ny, nx) or (ny, nx)
            Surface elevation (m) on the corners.

        Returns
        -------
        h, u, v : ndarrays, shape (N, ny, nx)

        Raises
        ------
        ValueError
            If the shape is wrong or ``f`` vanishes on the grid.
        """
        eta_c = np.asarray(eta_corner, dtype=np.float64)
        if eta_c.ndim == 2:
            eta_c = eta_c[None]
        if eta_c.ndim != 3 or eta_c.shape[1:] != (self.ny, self.nx):
            raise ValueError(f"eta_corner must have shape (N, {self.ny}, {self.nx}) "
                             f"(got {eta_c.shape})")
        f_u, f_v = self._coriolis_faces()
        return self._geostrophic(eta_c, f_u, f_v)

    def _coriolis_faces(self) -> tuple[np.ndarray, np.ndarray]:
        """f on the u rows and on the v rows; ValueError if it vanishes or changes sign."""
        f_u = self.f0 + self.beta * ((np.arange(self.ny) + 0.5) * self.dy - 0.5 * self.Ly)
        f_v = self._f_corner
        f_all = np.concatenate([f_u, f_v])
        if np.any(f_all == 0.0) or np.any(np.sign(f_all) != np.sign(f_all[0])):
            raise ValueError(
                f"f0 must keep f = f0 + beta (y - Ly/2) away from zero for geostrophic balance "
                f"(got f0={self.f0}, beta={self.beta}); use gaussian_bumps for f = 0"
            )
        return f_u, f_v

    def _geostrophic(self, eta_c: np.ndarray, f_u: np.ndarray, f_v: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = -(self.g / f_u)[None, :, None] * (np.roll(eta_c, -1, axis=1) - eta_c) / self.dy
        v = (self.g / f_v)[None, :, None] * (np.roll(eta_c, -1, axis=2) - eta_c) / self.dx
        ex = eta_c + np.roll(eta_c, -1, axis=2)
        h = self.H + 0.25 * (ex + np.roll(ex, -1, axis=1))
        return h, u, v

    def gaussian_bumps(self, N: int, rng: np.random.Generator, n_bumps: int = 1,
                       amplitude: tuple[float, float] | None = None,
                       width: tuple[float, float] | None = None) -> np.ndarray:
        """Gaussian surface bumps at rest (the "tsunami" initial conditions).

        ``h = H + sum_k a_k G_k`` with ``n_bumps`` periodic Gaussians at uniform random
        positions, widths uniform in ``width`` (default ``(0.04, 0.08) min(Lx, Ly)``,
        at least two cells) and heights ``a_k`` uniform in ``amplitude`` (m; default
        ``(0.005, 0.02) H``; negative values give depressions); ``u = v = 0``. The
        mean depth is not renormalized (the bump adds mass). The same as
        ``bumps_at(*gaussian_bump_parameters(N, rng, ...))``.

        Returns
        -------
        ndarray, shape (N, n)
        """
        return self.bumps_at(*self.gaussian_bump_parameters(N, rng, n_bumps, amplitude,
                                                            width))

    def gaussian_bump_parameters(self, N: int, rng: np.random.Generator, n_bumps: int = 1,
                                 amplitude: tuple[float, float] | None = None,
                                 width: tuple[float, float] | None = None,
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The random parameters of :meth:`gaussian_bumps` (same arguments, same draws).

        Returns
        -------
        (amplitude, xc, yc, width) : ndarrays, shape (N, n_bumps)
            What :meth:`bumps_at` takes.
        """
        N = check_int("N", N, min_value=1)
        rng = check_rng(rng)
        K = check_int("n_bumps", n_bumps, min_value=1)
        if amplitude is None:
            amplitude = (0.005 * self.H, 0.02 * self.H)
        if not isinstance(amplitude, (tuple, list)) or len(amplitude) != 2:
            raise ValueError(f"amplitude must be a (min, max) pair in metres (got {amplitude!r})")
        lo = check_float("amplitude[0]", amplitude[0], min_value=-0.5 * self.H / K)
        hi = check_float("amplitude[1]", amplitude[1], max_value=0.5 * self.H / K)
        if lo > hi:
            raise ValueError(f"amplitude must satisfy min <= max (got {amplitude!r})")
        widths = self._widths(width, (N, K), rng)
        xc = rng.uniform(0.0, self.Lx, size=(N, K))
        yc = rng.uniform(0.0, self.Ly, size=(N, K))
        a = rng.uniform(lo, hi, size=(N, K))
        return a, xc, yc, widths

    def bumps_at(self, amplitude: np.ndarray, xc: np.ndarray, yc: np.ndarray,
                 width: np.ndarray) -> np.ndarray:
        """Gaussian bumps at rest with given parameters (what :meth:`gaussian_bumps` draws).

        Parameters
        ----------
        amplitude, xc, yc, width : array_like, shape (N, K)
            Height (m), centre (m, on ``[0, Lx) x [0, Ly)``) and width (m, > 0) of the
            ``K`` periodic Gaussians of each of ``N`` states.

        Returns
        -------
        ndarray, shape (N, n)
            ``h = H + sum_k a_k G_k`` on the cell centres, ``u = v = 0``.
        """
        arrs = [np.asarray(v, dtype=np.float64) for v in (amplitude, xc, yc, width)]
        shape = arrs[0].shape
        for name, v in zip(("amplitude", "xc", "yc", "width"), arrs, strict=True):
            if v.ndim != 2 or v.shape != shape:
                raise ValueError(f"{name} must be an (N, K) array like amplitude "
                                 f"{shape} (got shape {v.shape})")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{name} must be finite")
        if np.any(arrs[3] <= 0):
            raise ValueError("width must be positive (metres)")
        a, xc, yc, w = arrs
        eta = self._gaussians(a, xc, yc, w, (np.arange(self.nx) + 0.5) * self.dx,
                              (np.arange(self.ny) + 0.5) * self.dy)
        zero = np.zeros_like(eta)
        return self.pack(self.H + eta, zero, zero)

    def random_state(self, N: int, rng: np.random.Generator) -> np.ndarray:
        """Random balanced vortex fields (:meth:`random_vortices` with its defaults).

        Where ``f`` vanishes somewhere on the grid (e.g. ``f0 = 0``), geostrophic
        balance is impossible and :meth:`gaussian_bumps` (defaults) is used instead.
        """
        try:
            self._coriolis_faces()
        except ValueError:
            return self.gaussian_bumps(N, rng)
        return self.random_vortices(N, rng)

    def sample_climatology(self, N: int, rng: np.random.Generator, family: str = "vortices",
                           spinup_steps: int | None = None) -> np.ndarray:
        """Spun-up states from one initial-condition family.

        Parameters
        ----------
        N : int
            Number of states.
        rng : numpy.random.Generator or int
        family : {"vortices", "bumps"}
            :meth:`random_vortices` or :meth:`gaussian_bumps` (defaults) as start.
        spinup_steps : int, optional
            Model steps of spin-up (default :attr:`spinup_steps`, 5 days).

        Returns
        -------
        ndarray, shape (N, n)
        """
        families = {"vortices": self.random_vortices, "bumps": self.gaussian_bumps}
        if family not in families:
            raise ValueError(f"family must be one of {sorted(families)} (got {family!r})")
        N = check_int("N", N, min_value=1)
        steps = self.spinup_steps if spinup_steps is None else spinup_steps
        steps = check_int("spinup_steps", steps, min_value=0)
        return self.step(families[family](N, rng), steps)
