"""Deterministic Lotka–Volterra predator–prey ODE, integrated with RK4.

Convention: ``x`` is the **prey** population, ``y`` the **predator** population::

    dx/dt =  alpha x - beta x y      (prey grow, are eaten)
    dy/dt = -gamma y + delta x y     (predators die, grow by eating)

All four rates are positive. The defaults ``alpha=1.0, beta=0.1, gamma=1.5,
delta=0.075`` are the classic hare/lynx-like textbook values: the coexistence
equilibrium is ``(x*, y*) = (gamma/delta, alpha/beta) = (20, 10)`` and small
oscillations around it have period ``2 pi / sqrt(alpha gamma) ≈ 5.1`` time units.
The flow conserves ``V = delta x - gamma ln x + beta y - alpha ln y`` (closed
orbits), which the tests use to check the integrator.

With ``augmented=True`` the four rates become part of the state, in log space
(so they stay positive by construction): the state is
``[x, y, log alpha, log beta, log gamma, log delta]`` and each member evolves with
its own rates. The log-parameters follow a persistence model: they are constant
in time (the kernel copies them unchanged), so a filter can estimate them jointly
with the populations.

The Numba kernel takes all ``nsteps`` RK4 steps for one member at a time with
scalar arithmetic, so a member's trajectory does not depend on the batch it sits in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from latentda._validate import check_ensemble, check_float, check_int
from latentda.dynamics.base import Dynamics

_SPECIES = ("prey", "predator")
_PARAMS = ("log_alpha", "log_beta", "log_gamma", "log_delta")


@njit(cache=True, nogil=True)
def lv_rk4(E, P, nsteps, dt):
    """Integrate Lotka–Volterra populations with RK4, one member at a time.

    Parameters
    ----------
    E : ndarray, shape (N, n), n >= 2
        States; columns 0 and 1 are the prey ``x`` and predator ``y``. Any further
        columns (augmented log-parameters) are copied unchanged.
    P : ndarray, shape (N, 4)
        Per-member rates ``(alpha, beta, gamma, delta)``.
    nsteps : int
        Number of RK4 steps of size ``dt``.
    dt : float
        Time step.

    Returns
    -------
    ndarray, shape (N, n)
        New array; ``E`` is not modified.
    """
    N = E.shape[0]
    out = E.copy()
    half = 0.5 * dt
    sixth = dt / 6.0
    for i in range(N):
        a = P[i, 0]
        b = P[i, 1]
        g = P[i, 2]
        d = P[i, 3]
        x = E[i, 0]
        y = E[i, 1]
        for _ in range(nsteps):
            k1x = x * (a - b * y)
            k1y = y * (d * x - g)
            x2 = x + half * k1x
            y2 = y + half * k1y
            k2x = x2 * (a - b * y2)
            k2y = y2 * (d * x2 - g)
            x3 = x + half * k2x
            y3 = y + half * k2y
            k3x = x3 * (a - b * y3)
            k3y = y3 * (d * x3 - g)
            x4 = x + dt * k3x
            y4 = y + dt * k3y
            k4x = x4 * (a - b * y4)
            k4y = y4 * (d * x4 - g)
            x = x + sixth * (k1x + 2.0 * k2x + 2.0 * k3x + k4x)
            y = y + sixth * (k1y + 2.0 * k2y + 2.0 * k3y + k4y)
        out[i, 0] = x
        out[i, 1] = y
    return out


class LotkaVolterra(Dynamics):
    """The Lotka–Volterra predator–prey ODE (``x`` prey, ``y`` predator), RK4.

    Parameters
    ----------
    alpha, beta, gamma, delta : float
        Positive rates: prey growth, predation, predator death, predator growth
        per prey eaten. Defaults give the classic equilibrium ``(20, 10)``.
    dt : float
        RK4 time step, in ``(0, 1]``.
    augmented : bool
        If True the state is ``[x, y, log alpha, log beta, log gamma, log delta]``
        (``n = 6``) and each member integrates with its own rates ``exp(state[2:])``;
        the log-parameters are constant in time. Otherwise the state is ``[x, y]``
        (``n = 2``) and every member uses the constructor's rates.
    state_spread : float
        Standard deviation of ``log`` populations around the equilibrium in
        :meth:`random_state` (>= 0).
    param_spread : float
        Standard deviation of the log-parameters around the true ones in
        :meth:`random_state` when augmented (>= 0).
    param_bias : float or sequence of 4 floats
        Offset of the mean of those log-parameter draws from the true log-parameters
        (one value for all four rates, or one per rate in the order alpha, beta,
        gamma, delta), so a filter can start from a wrong prior guess. Default 0.
    """

    name = "lotka_volterra"
    spinup_steps = 0

    def __init__(self, alpha: float = 1.0, beta: float = 0.1, gamma: float = 1.5,
                 delta: float = 0.075, dt: float = 0.01, augmented: bool = False,
                 state_spread: float = 0.3, param_spread: float = 0.1,
                 param_bias: float | Sequence[float] = 0.0) -> None:
        self.alpha = check_float("alpha", alpha, positive=True)
        self.beta = check_float("beta", beta, positive=True)
        self.gamma = check_float("gamma", gamma, positive=True)
        self.delta = check_float("delta", delta, positive=True)
        self._dt = check_float("dt", dt, positive=True, max_value=1.0)
        if not isinstance(augmented, bool | np.bool_):
            raise ValueError(f"augmented must be True or False (got {augmented!r})")
        self.augmented = bool(augmented)
        self.state_spread = check_float("state_spread", state_spread, nonnegative=True)
        self.param_spread = check_float("param_spread", param_spread, nonnegative=True)
        try:
            bias = np.asarray(param_bias, dtype=np.float64)
        except (TypeError, ValueError):
            bias = np.array(np.nan)
        if bias.shape not in ((), (4,)) or not np.all(np.isfinite(bias)):
            raise ValueError("param_bias must be a finite number or 4 finite numbers (offsets of "
                             f"log alpha, log beta, log gamma, log delta) (got {param_bias!r})")
        self.param_bias = np.broadcast_to(bias, (4,)).copy()

    def __repr__(self) -> str:
        return (f"LotkaVolterra(alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"delta={self.delta}, dt={self._dt}, augmented={self.augmented})")

    @property
    def state_dim(self) -> int:
        return 6 if self.augmented else 2

    @property
    def dt(self) -> float:
        return self._dt

    @property
    def params(self) -> np.ndarray:
        """The rates ``(alpha, beta, gamma, delta)``, shape (4,)."""
        return np.array([self.alpha, self.beta, self.gamma, self.delta])

    @property
    def true_log_params(self) -> np.ndarray:
        """``log(alpha, beta, gamma, delta)`` of the constructor's rates, shape (4,)."""
        return np.log(self.params)

    @property
    def equilibrium(self) -> np.ndarray:
        """Coexistence equilibrium ``(x*, y*) = (gamma/delta, alpha/beta)``, shape (2,)."""
        return np.array([self.gamma / self.delta, self.alpha / self.beta])

    def _member_params(self, E: np.ndarray) -> np.ndarray:
        """Rates of each member, shape (N, 4), C-contiguous float64."""
        if self.augmented:
            logp = E[:, 2:6]
            if not np.all(np.isfinite(logp)):
                raise ValueError(
                    "E[:, 2:6] (log-parameters log alpha, log beta, log gamma, log delta) "
                    "must be finite; reset the offending members' parameters"
                )
            return np.ascontiguousarray(np.exp(logp))
        return np.ascontiguousarray(np.broadcast_to(self.params, (E.shape[0], 4)))

    @staticmethod
    def _check_populations(E: np.ndarray) -> None:
        pops = E[:, :2]
        if np.any(pops < 0):
            raise ValueError(
                "E[:, 0:2] (populations: prey x, predator y) must be >= 0 "
                f"(got min {pops.min():g}); clip or resample negative members before stepping"
            )

    def _advance(self, E: np.ndarray, nsteps: int) -> np.ndarray:
        self._check_populations(E)
        return lv_rk4(E, self._member_params(E), nsteps, self._dt)

    def step(self, E: np.ndarray, nsteps: int = 1) -> np.ndarray:
        """Advance a batch of states by ``nsteps`` RK4 steps.

        Parameters
        ----------
        E : ndarray, shape (N, n) or (n,)
            States, members first; populations (columns 0, 1) must be >= 0.
        nsteps : int
            Number of steps of size ``dt``.

        Returns
        -------
        ndarray, shape (N, n)

        Raises
        ------
        ValueError
            If ``E`` has the wrong shape or a negative population.
        """
        nsteps = check_int("nsteps", nsteps, min_value=0)
        E = check_ensemble("E", E, self.state_dim)
        self._check_populations(E)
        return super().step(E, nsteps)

    def tendency(self, E: np.ndarray) -> np.ndarray:
        """Right-hand side ``d state / dt`` for a batch, shape (N, n) (zero for log-params)."""
        E = check_ensemble("E", E, self.state_dim)
        P = self._member_params(E)
        x, y = E[:, 0], E[:, 1]
        out = np.zeros_like(E)
        out[:, 0] = x * (P[:, 0] - P[:, 1] * y)
        out[:, 1] = y * (P[:, 3] * x - P[:, 2])
        return out

    def invariant(self, E: np.ndarray) -> np.ndarray:
        """Conserved quantity ``V = delta x - gamma ln x + beta y - alpha ln y``.

        Uses each member's own rates when augmented.

        Parameters
        ----------
        E : ndarray, shape (N, n) or (n,)

        Returns
        -------
        ndarray, shape (N,)
        """
        E = check_ensemble("E", E, self.state_dim)
        self._check_populations(E)
        P = self._member_params(E)
        x, y = E[:, 0], E[:, 1]
        with np.errstate(divide="ignore"):
            return P[:, 3] * x - P[:, 2] * np.log(x) + P[:, 1] * y - P[:, 0] * np.log(y)

    def random_state(self, N: int, rng: np.random.Generator) -> np.ndarray:
        """Lognormal populations around the equilibrium; log-params around the truth.

        Populations are ``equilibrium * exp(state_spread * z)``; when augmented the
        log-parameters are ``true_log_params + param_bias + param_spread * z``
        (``z`` standard normal, independent).

        Returns
        -------
        ndarray, shape (N, n)
        """
        N = check_int("N", N, min_value=1)
        pops = self.equilibrium * np.exp(self.state_spread * rng.standard_normal((N, 2)))
        if not self.augmented:
            return pops
        logp = (self.true_log_params + self.param_bias
                + self.param_spread * rng.standard_normal((N, 4)))
        return np.ascontiguousarray(np.concatenate([pops, logp], axis=1))

    def state_coords(self) -> dict[str, tuple[str, np.ndarray, dict]]:
        """Coordinate ``variable`` (int8 flags) along ``state``: species, then log-params."""
        names = _SPECIES + (_PARAMS if self.augmented else ())
        codes = np.arange(len(names), dtype=np.int8)
        return {
            "variable": ("state", codes, {
                "long_name": "Lotka-Volterra state variable (x prey, y predator"
                             + (", then log-rates)" if self.augmented else ")"),
                "flag_values": codes.copy(),
                "flag_meanings": " ".join(names),
            }),
        }
