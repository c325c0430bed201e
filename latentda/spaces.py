"""Spaces: the adapters that let one filter work in state space or latent space.

A filter sees an ensemble ``E`` of shape ``(N, d)`` and an observation function
``h(E) -> (N, m)``. A space says what ``d`` is and builds ``h``:

- :class:`StateSpace`: ``d = n``, ``h = H(x)``, encode/decode are the identity;
- :class:`LatentSpace`: ``d = k``, ``h = H(G(z))``, encode by the prior's encoder
  (or projection / exact inverse, whatever the prior's ``encode`` is), decode ``G``.

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


class LatentSpace:
    """The latent space of a generative prior: ``d = k``, ``h = H ∘ G``.

    The filter analyses codes ``z``; the forecast ensemble is encoded with the
    prior's ``encode`` (an amortized encoder, a projection for decoder-only priors,
    the exact inverse for flows) and the analysis decoded with ``G``. This is the
    *manifold* treatment: analysis states lie on the generator's range, so the
    part of a forecast that the prior cannot represent is dropped at every analysis.

    Parameters
    ----------
    prior : latentda.priors.Prior
        Any prior (numpy ``encode``/``decode`` on ``(N, ·)`` arrays).

    Raises
    ------
    ValueError
        If ``prior`` lacks ``encode``/``decode``/``latent_dim``/``state_dim``.
    """

    name = "latent"
    geometry = None  # latent coordinates have no physical locations

    def __init__(self, prior) -> None:
        for attr in ("encode", "decode", "latent_dim", "state_dim"):
            if not hasattr(prior, attr):
                raise ValueError(f"prior must provide {attr} (got {type(prior).__name__}); "
                                 "load one with latentda.priors.load")
        self.prior = prior
        self.state_dim = int(prior.state_dim)

    def __repr__(self) -> str:
        return f"LatentSpace({self.prior!r})"

    @property
    def dim(self) -> int:
        """Dimension ``k`` of the latent codes."""
        return int(self.prior.latent_dim)

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Physical states ``(N, n)`` to codes ``(N, k)`` (one batched prior call)."""
        return np.ascontiguousarray(self.prior.encode(X), dtype=np.float64)

    def decode(self, Z: np.ndarray) -> np.ndarray:
        """Codes ``(N, k)`` to physical states ``(N, n)`` (one batched prior call)."""
        return np.ascontiguousarray(self.prior.decode(Z), dtype=np.float64)

    def observe(self, h: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """The observation function of the codes: ``h ∘ G``."""
        return lambda Z: h(self.decode(Z))
