"""Spaces: the adapters that let one filter work in state space or latent space.

A filter sees an ensemble ``E`` of shape ``(N, d)`` and an observation function
``h(E) -> (N, m)``. A space says what ``d`` is and builds ``h``:

- :class:`StateSpace`: ``d = n``, ``h = H(x)``, encode/decode are the identity;
- ``LatentSpace(prior)`` (with the priors): ``d = k``, ``h = H(G(z))``.

Forecasts always run the physical model on decoded states.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from latentda.filters.base import Geometry


class StateSpace:
    """The physical state space: the identity adapter.

    Parameters
    ----------
    state_dim : int
        The model's state size ``n``.
    geometry : Geometry, optional
        Locations (and domain periods) of the state variables, for localization.
    """

    name = "state"

    def __init__(self, state_dim: int, geometry: Geometry | None = None) -> None:
        self.state_dim = int(state_dim)
        self.geometry = geometry

    def __repr__(self) -> str:
        return f"StateSpace(n={self.state_dim})"

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the analysed variables."""
        return self.state_dim

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Physical states ``(N, n)`` to analysed variables ``(N, d)``."""
        return X

    def decode(self, Z: np.ndarray) -> np.ndarray:
        """Analysed variables ``(N, d)`` to physical states ``(N, n)``."""
        return Z

    def observe(self, h: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """The observation function of the analysed variables: ``h ∘ decode``."""
        return lambda Z: h(self.decode(Z))

    @classmethod
    def for_model(cls, model) -> StateSpace:
        """The state space of a :class:`~latentda.dynamics.Dynamics`, with its geometry."""
        loc = model.state_locations()
        geometry = None if loc is None else Geometry(loc, period=model.domain_period)
        return cls(model.state_dim, geometry)
