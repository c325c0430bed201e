"""The protocol every dynamical system implements.

A system integrates a batch of states ``E`` of shape ``(N, n)`` (members first).
Subclasses provide ``state_dim``, ``dt`` and ``_advance(E, nsteps)`` (a call into a
Numba kernel that takes ``nsteps`` steps of size ``dt`` and returns a new array);
this base class validates inputs and turns times into step counts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from latentda._validate import check_ensemble, check_float, check_int


class Dynamics(ABC):
    """Base class of the dynamical systems.

    Attributes
    ----------
    name : str
        Short system name used in case files and dataset attributes.
    state_dim : int
        Length ``n`` of one flattened state vector.
    dt : float
        Model time step.
    """

    name: str = "dynamics"

    @property
    @abstractmethod
    def state_dim(self) -> int:
        """Length of one flattened state vector."""

    @property
    @abstractmethod
    def dt(self) -> float:
        """Model time step."""

    @abstractmethod
    def _advance(self, E: np.ndarray, nsteps: int) -> np.ndarray:
        """Advance a validated C-contiguous float64 ``(N, n)`` batch by ``nsteps``."""

    @abstractmethod
    def state_coords(self) -> dict[str, tuple[str, np.ndarray, dict]]:
        """Coordinates along the ``state`` dimension: name -> (dim, values, attrs)."""

    @abstractmethod
    def random_state(self, N: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``N`` random initial states (not necessarily on the attractor)."""

    #: model steps of spin-up that bring a random state onto the attractor
    spinup_steps: int = 0

    def state_locations(self) -> np.ndarray | None:
        """Positions of the state variables, shape ``(n, D)``, for localization.

        ``None`` for systems without a spatial structure (no localization).
        """
        return None

    @property
    def domain_period(self) -> tuple[float, ...] | None:
        """Periods of the domain along each of the ``D`` location axes (None: not periodic)."""
        return None

    def components(self) -> list[tuple[str, np.ndarray]]:
        """Named groups of state indices that share units (e.g. ``h``, ``u``, ``v``).

        Taken from a categorical state coordinate (one with ``flag_meanings``),
        else one group ``state`` holding every variable. Skill scores are also
        reported per component, so that variables of different units are not
        only mixed in one RMSE.
        """
        for _name, (dim, values, attrs) in self.state_coords().items():
            if dim == "state" and "flag_meanings" in attrs:
                names = str(attrs["flag_meanings"]).split()
                codes = list(attrs.get("flag_values", range(len(names))))
                values = np.asarray(values)
                pairs = zip(names, codes, strict=False)
                return [(nm, np.flatnonzero(values == code)) for nm, code in pairs
                        if np.any(values == code)]
        return [("state", np.arange(self.state_dim))]

    def climatology(self, N: int, rng: np.random.Generator, spinup_steps: int | None = None,
                    ) -> np.ndarray:
        """Draw ``N`` independent states from the spun-up climatology.

        Each member starts from an independent random state and is integrated
        for ``spinup_steps`` (default: the system's ``spinup_steps``).

        Returns
        -------
        ndarray, shape (N, n)
        """
        N = check_int("N", N, min_value=1)
        steps = self.spinup_steps if spinup_steps is None else spinup_steps
        steps = check_int("spinup_steps", steps, min_value=0)
        return self.step(self.random_state(N, rng), steps)

    def step(self, E: np.ndarray, nsteps: int = 1) -> np.ndarray:
        """Advance a batch of states by ``nsteps`` model steps.

        Parameters
        ----------
        E : ndarray, shape (N, n) or (n,)
            Ensemble of states, members first.
        nsteps : int
            Number of model steps of size ``dt``.

        Returns
        -------
        ndarray, shape (N, n)
            New array; ``E`` is not modified.
        """
        nsteps = check_int("nsteps", nsteps, min_value=0)
        E = check_ensemble("E", E, self.state_dim)
        if nsteps == 0:
            return E.copy()
        return self._advance(E, nsteps)

    def nsteps_between(self, t0: float, t1: float) -> int:
        """Number of model steps from ``t0`` to ``t1`` (must be a whole multiple of dt).

        Raises
        ------
        ValueError
            If ``t1 < t0`` or ``t1 - t0`` is not a multiple of ``dt``.
        """
        t0 = check_float("t0", t0)
        t1 = check_float("t1", t1)
        if t1 < t0:
            raise ValueError(f"t1 must be >= t0 (got t0={t0}, t1={t1})")
        ratio = (t1 - t0) / self.dt
        k = int(round(ratio))
        if abs(ratio - k) > 1e-6 * max(1.0, abs(ratio)):
            raise ValueError(
                f"t1 - t0 = {t1 - t0} is not a whole number of model steps dt = {self.dt}; "
                "choose times on the model grid"
            )
        return k

    def integrate(self, E: np.ndarray, t0: float, t1: float) -> np.ndarray:
        """Integrate a batch of states from time ``t0`` to ``t1``.

        Returns
        -------
        ndarray, shape (N, n)
        """
        return self.step(E, self.nsteps_between(t0, t1))

    def trajectory(self, x0: np.ndarray, nsteps: int, every: int = 1) -> np.ndarray:
        """Integrate states and record every ``every`` steps.

        Returns
        -------
        ndarray, shape (nsteps // every + 1, N, n)
            The initial states followed by the recorded states.
        """
        nsteps = check_int("nsteps", nsteps, min_value=0)
        every = check_int("every", every, min_value=1)
        E = check_ensemble("x0", x0, self.state_dim)
        out = [E.copy()]
        for _ in range(nsteps // every):
            E = self._advance(E, every)
            out.append(E)
        return np.stack(out)
