"""Plain vectorized-numpy reference of the ShallowWater2D scheme (for benchmarks and tests).

Same discretization as :mod:`latentda.dynamics.shallow_water` (C-grid, flux-form
continuity, Sadourny energy-conserving vorticity flux, Bernoulli gradient,
Laplacian/biharmonic viscosity, linear drag, RK4), written with ``np.roll`` over
the whole batch ``(N, ny, nx)`` at once. It reads only the public parameters of
the model object and recomputes the Coriolis parameter itself, so it is an
independent check of the Numba kernel.

Run ``python benchmarks/sw_numpy_reference.py`` to time both at 128x128, N=16.
"""

from __future__ import annotations

import numpy as np


def _xm(a: np.ndarray) -> np.ndarray:  # a[..., j, i-1]
    return np.roll(a, 1, axis=-1)


def _xp(a: np.ndarray) -> np.ndarray:  # a[..., j, i+1]
    return np.roll(a, -1, axis=-1)


def _ym(a: np.ndarray) -> np.ndarray:  # a[..., j-1, i]
    return np.roll(a, 1, axis=-2)


def _yp(a: np.ndarray) -> np.ndarray:  # a[..., j+1, i]
    return np.roll(a, -1, axis=-2)


def _lap(a: np.ndarray, rdx2: float, rdy2: float) -> np.ndarray:
    return (_xp(a) - 2.0 * a + _xm(a)) * rdx2 + (_yp(a) - 2.0 * a + _ym(a)) * rdy2


def numpy_tendency(sw, h: np.ndarray, u: np.ndarray, v: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tendencies ``(dh, du, dv)`` of fields of shape ``(N, ny, nx)``."""
    rdx, rdy = 1.0 / sw.dx, 1.0 / sw.dy
    f = sw.f0 + sw.beta * (np.arange(sw.ny) * sw.dy - 0.5 * sw.Ly)
    U = 0.5 * (_xm(h) + h) * u
    V = 0.5 * (_ym(h) + h) * v
    u2 = u * u
    v2 = v * v
    B = sw.g * h + 0.25 * (u2 + _xp(u2) + v2 + _yp(v2))
    zeta = (v - _xm(v)) * rdx - (u - _ym(u)) * rdy
    hx = h + _xm(h)
    hq = 0.25 * (hx + _ym(hx))
    q = (f[None, :, None] + zeta) / hq
    QV = q * (_xm(V) + V)
    QU = q * (_ym(U) + U)
    dh = -((_xp(U) - U) * rdx + (_yp(V) - V) * rdy)
    du = 0.25 * (QV + _yp(QV)) - (B - _xm(B)) * rdx
    dv = -0.25 * (QU + _xp(QU)) - (B - _ym(B)) * rdy
    if sw.nu != 0.0 or sw.nu4 != 0.0:
        rdx2, rdy2 = rdx * rdx, rdy * rdy
        Lu = _lap(u, rdx2, rdy2)
        Lv = _lap(v, rdx2, rdy2)
        du -= sw.nu4 * _lap(Lu, rdx2, rdy2)
        dv -= sw.nu4 * _lap(Lv, rdx2, rdy2)
        du += sw.nu * Lu
        dv += sw.nu * Lv
    if sw.drag != 0.0:
        du -= sw.drag * u
        dv -= sw.drag * v
    return dh, du, dv


def numpy_reference_step(sw, E: np.ndarray, nsteps: int) -> np.ndarray:
    """Advance ``E`` (N, 3 ny nx) by ``nsteps`` RK4 steps of ``sw.dt`` with numpy only.

    Parameters
    ----------
    sw : latentda.dynamics.ShallowWater2D
        The model whose parameters (grid, physics, ``dt``) are used.
    E : ndarray, shape (N, n)
    nsteps : int

    Returns
    -------
    ndarray, shape (N, n)
    """
    E = np.asarray(E, dtype=np.float64)
    N = E.shape[0]
    F = E.reshape(N, 3, sw.ny, sw.nx).copy()
    y = [F[:, 0], F[:, 1], F[:, 2]]
    dt = sw.dt
    for _ in range(nsteps):
        k1 = numpy_tendency(sw, *y)
        k2 = numpy_tendency(sw, *(a + 0.5 * dt * k for a, k in zip(y, k1, strict=True)))
        k3 = numpy_tendency(sw, *(a + 0.5 * dt * k for a, k in zip(y, k2, strict=True)))
        k4 = numpy_tendency(sw, *(a + dt * k for a, k in zip(y, k3, strict=True)))
        y = [a + dt / 6.0 * (((p + 2.0 * q) + 2.0 * r) + s)
             for a, p, q, r, s in zip(y, k1, k2, k3, k4, strict=True)]
    return np.stack(y, axis=1).reshape(N, -1)


def _bench(nx: int = 128, N: int = 16, nsteps: int = 10, repeat: int = 3) -> dict:
    import time

    from latentda.dynamics.shallow_water import ShallowWater2D

    sw = ShallowWater2D(nx=nx, ny=nx)
    E = sw.random_state(N, np.random.default_rng(0))
    sw.step(E, 1)
    numpy_reference_step(sw, E, 1)
    out = {}
    for label, fn in (("numba", lambda: sw.step(E, nsteps)),
                      ("numpy", lambda: numpy_reference_step(sw, E, nsteps))):
        best = np.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[label] = nx * nx * N * nsteps / best
    out["speedup"] = out["numba"] / out["numpy"]
    return out


if __name__ == "__main__":  # pragma: no cover
    res = _bench()
    print(f"grid-cell-steps/s at 128x128, N=16: numba {res['numba']:.3e}, "
          f"numpy {res['numpy']:.3e}, speed-up {res['speedup']:.1f}x")
