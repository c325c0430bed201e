"""Lorenz-96: dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F on a ring, RK4.

The kernel stores a block of members in a variable-major layout ``(n, B)`` so
that the innermost loop runs over members and vectorizes (SIMD lanes hold
different members, each computed with exactly the same operations, so a
member's trajectory does not depend on the batch size or the block it sits in).
Each block of ``B`` members takes all ``nsteps`` steps while it stays in cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from latentda._validate import check_float, check_int
from latentda.dynamics.base import Dynamics

#: members integrated together; the working set (6 * n * B doubles) stays in L1/L2
_BLOCK = 256


@njit(cache=True, nogil=True)
def _tend(x, F, out):
    n, B = x.shape
    for i in range(n):
        ip1 = i + 1 if i + 1 < n else i + 1 - n
        im1 = i - 1 if i >= 1 else i - 1 + n
        im2 = i - 2 if i >= 2 else i - 2 + n
        for m in range(B):
            out[i, m] = (x[ip1, m] - x[im2, m]) * x[im1, m] - x[i, m] + F


@njit(cache=True, nogil=True)
def _axpy(out, x, c, k):
    """out = x + c * k, elementwise over (n, B)."""
    n, B = x.shape
    for i in range(n):
        for m in range(B):
            out[i, m] = x[i, m] + c * k[i, m]


@njit(cache=True, nogil=True)
def _rk4_block(x, F, dt, nsteps, k1, k2, k3, k4, tmp):
    n, B = x.shape
    half = 0.5 * dt
    sixth = dt / 6.0
    for _ in range(nsteps):
        _tend(x, F, k1)
        _axpy(tmp, x, half, k1)
        _tend(tmp, F, k2)
        _axpy(tmp, x, half, k2)
        _tend(tmp, F, k3)
        _axpy(tmp, x, dt, k3)
        _tend(tmp, F, k4)
        for i in range(n):
            for m in range(B):
                x[i, m] = x[i, m] + sixth * (k1[i, m] + 2.0 * k2[i, m] + 2.0 * k3[i, m] + k4[i, m])


@njit(cache=True, nogil=True)
def l96_rk4(E, F, dt, nsteps, block):
    """Integrate a batch ``E`` (N, n) of Lorenz-96 states by ``nsteps`` RK4 steps.

    Returns a new (N, n) array; ``E`` is not modified.
    """
    N, n = E.shape
    out = np.empty_like(E)
    x = np.empty((n, block))
    k1 = np.empty((n, block))
    k2 = np.empty((n, block))
    k3 = np.empty((n, block))
    k4 = np.empty((n, block))
    tmp = np.empty((n, block))
    for start in range(0, N, block):
        stop = min(start + block, N)
        B = stop - start
        # pad a short last block with zeros: lanes are independent, padded ones are discarded
        for i in range(n):
            for m in range(B, block):
                x[i, m] = 0.0
        for m in range(B):
            for i in range(n):
                x[i, m] = E[start + m, i]
        _rk4_block(x, F, dt, nsteps, k1, k2, k3, k4, tmp)
        for m in range(B):
            for i in range(n):
                out[start + m, i] = x[i, m]
    return out


def l96_tendency(E: np.ndarray, F: float) -> np.ndarray:
    """Lorenz-96 tendency dx/dt for a batch ``E`` (N, n), in plain numpy."""
    return (np.roll(E, -1, axis=-1) - np.roll(E, 2, axis=-1)) * np.roll(E, 1, axis=-1) - E + F


class Lorenz96(Dynamics):
    """The Lorenz-96 model integrated with RK4.

    Parameters
    ----------
    n : int
        Number of variables on the ring (>= 4).
    F : float
        Forcing (8.0 gives the standard chaotic regime).
    dt : float
        Time step of the RK4 scheme (0.05 is the standard "6 hours").
    """

    name = "lorenz96"
    spinup_steps = 1000

    def __init__(self, n: int = 40, F: float = 8.0, dt: float = 0.05) -> None:
        self.n = check_int("n", n, min_value=4)
        self.F = check_float("F", F)
        self._dt = check_float("dt", dt, positive=True, max_value=1.0)

    def __repr__(self) -> str:
        return f"Lorenz96(n={self.n}, F={self.F}, dt={self._dt})"

    @property
    def state_dim(self) -> int:
        return self.n

    @property
    def dt(self) -> float:
        return self._dt

    def _advance(self, E: np.ndarray, nsteps: int) -> np.ndarray:
        return l96_rk4(E, self.F, self._dt, nsteps, _BLOCK)

    def tendency(self, E: np.ndarray) -> np.ndarray:
        """Right-hand side dx/dt for a batch of states, shape (N, n)."""
        return l96_tendency(np.asarray(E, dtype=np.float64), self.F)

    def random_state(self, N: int, rng: np.random.Generator) -> np.ndarray:
        """States near the fixed point ``x = F`` with unit Gaussian perturbations."""
        N = check_int("N", N, min_value=1)
        return self.F + rng.standard_normal((N, self.n))

    def state_locations(self) -> np.ndarray:
        """Variable ``i`` sits at position ``i`` on a ring of length ``n``."""
        return np.arange(self.n, dtype=np.float64)[:, None]

    @property
    def domain_period(self) -> tuple[float, ...]:
        return (float(self.n),)

    def state_coords(self) -> dict[str, tuple[str, np.ndarray, dict]]:
        return {
            "x": ("state", np.arange(self.n, dtype=np.int32),
                  {"long_name": "Lorenz-96 variable index on the ring", "units": "1"}),
        }
