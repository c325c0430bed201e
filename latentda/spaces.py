"""Spaces: the adapters that let one filter work in state space or latent space.

A filter sees an ensemble ``E`` of shape ``(N, d)`` and an observation function
``h(E) -> (N, m)``. A space says what ``d`` is, builds ``h`` and runs the
analysis of a physical forecast ensemble through the filter
(:meth:`StateSpace.assimilate`, :meth:`LatentSpace.assimilate`):

- :class:`StateSpace`: ``d = n``, ``h = H(x)``, encode/decode are the identity;
- :class:`LatentSpace`: the codes ``z`` of a generative prior ``x = G(z)``, in one
  of three treatments of what the prior cannot represent (the off-manifold
  residual ``eta = x - G(E(x))``):

  ``manifold``
      ``d = k``, ``h = H∘G``; analysis states lie on the generator's range and the
      residual is dropped at every analysis (the GAN-type posterior).
  ``noisy_manifold``
      the prior ``x = G(z) + eta``: ``d = k + n``, the analysed variables are
      ``[z, eta]`` with ``h([z, eta]) = H(G(z) + eta)``; decoding is exact, and a
      hybrid filter gets the static background ``blockdiag(s I_k, gamma Sigma_eta)``
      (the latent prior's covariance scaled by ``s``, the prior's measured
      residual covariance scaled by ``gamma``).
  ``hybrid``
      a latent analysis with a share ``f`` of the observation precision
      (error covariance ``R / f``), each member keeps its forecast residual, then a
      state-space filter (typically a localized LETKF) assimilates the same
      observations with ``R / (1 - f)`` to correct what the latent step cannot
      represent. The two precisions add up to ``R^{-1}``.

Forecasts always run the physical model on decoded states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentda._validate import check_float
from latentda.filters.base import AnalysisResult, Background, EnsembleFilter, Geometry, Observation

__all__ = ["Assimilation", "StateSpace", "LatentSpace", "LATENT_MODES", "TorchFunction"]

#: the off-manifold treatments of :class:`LatentSpace`
LATENT_MODES = ("manifold", "noisy_manifold", "hybrid")


class TorchFunction:
    """A differentiable torch function with the precision it computes in (``dtype``).

    Gradient-based analyses read ``dtype`` to pick forward-difference Jacobians
    for float32 priors.
    """

    def __init__(self, fn: Callable[[Any], Any], dtype: Any) -> None:
        self.fn = fn
        self.dtype = dtype

    def __call__(self, V: Any) -> Any:
        return self.fn(V)


@dataclass
class Assimilation:
    """One analysis of a physical forecast ensemble through a space.

    Attributes
    ----------
    E : ndarray, shape (N, n)
        Analysis ensemble of physical states.
    result : AnalysisResult
        What the filter returned (in the space's variables: info, weights).
    HE : ndarray, shape (N, m)
        The forecast ensemble in observation space, ``h(E_forecast)``.
    latent_forecast, latent_analysis : ndarray, shape (N, k), optional
        Codes of the forecast and analysis members (latent spaces).
    """

    E: np.ndarray
    result: AnalysisResult
    HE: np.ndarray
    latent_forecast: np.ndarray | None = None
    latent_analysis: np.ndarray | None = None


class StateSpace:
    """The physical state space: the identity adapter.

    Parameters
    ----------
    state_dim : int
        The model's state size ``n``.
    geometry : Geometry, optional
        Locations (and domain periods) of the state variables, for localization.
    background : Background, optional
        Static background covariance of the state (e.g. a scaled climatological
        covariance), used by hybrid filters.
    """

    name = "state"
    latent_dim = None

    def __init__(self, state_dim: int, geometry: Geometry | None = None,
                 background: Background | None = None) -> None:
        self.state_dim = int(state_dim)
        self.geometry = geometry
        if background is not None and (not isinstance(background, Background)
                                       or background.d != self.state_dim):
            raise ValueError(f"background must be a latentda.filters.Background with "
                             f"{self.state_dim} rows (one per state variable)")
        self.background = background

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

    def assimilate(self, filt: EnsembleFilter, Ef: np.ndarray, obs: Observation,
                   rng: np.random.Generator | None) -> Assimilation:
        """Analyse the physical forecast ``Ef`` with ``obs`` (physical ``h``) by ``filt``."""
        res = filt.analyse(Ef, obs, rng, geometry=self.geometry, background=self.background)
        return Assimilation(E=res.E, result=res, HE=res.HE)

    @classmethod
    def for_model(cls, model, background: Background | None = None) -> StateSpace:
        """The state space of a :class:`~latentda.dynamics.Dynamics`, with its geometry."""
        loc = model.state_locations()
        geometry = None if loc is None else Geometry(loc, period=model.domain_period)
        return cls(model.state_dim, geometry, background)


class LatentSpace:
    """The latent space of a generative prior (see the module docstring for the modes).

    The forecast ensemble is encoded with the prior's ``encode`` (an amortized
    encoder, a projection for decoder-only priors, the exact inverse for flows) and
    analyses are decoded with ``G``; every prior call is batched over members.

    Parameters
    ----------
    prior : latentda.priors.Prior
        Any prior (numpy ``encode``/``decode`` on ``(N, ·)`` arrays).
    mode : {"manifold", "noisy_manifold", "hybrid"}
        The treatment of the off-manifold residual.
    static_var : float, optional
        ``s``: the latent background covariance ``s I_k`` for hybrid filters
        (the latent prior ``N(0, I)`` scaled to analysis-error size). None: no
        background (non-hybrid filters).
    residual_scale : float
        ``gamma``: weight of the prior's residual covariance in the background
        (``noisy_manifold``).
    obs_fraction : float
        ``f`` in (0, 1): share of the observation precision given to the latent
        step (``hybrid``).
    state_filter : EnsembleFilter, optional
        The state-space filter of the ``hybrid`` correction step (required there).
    geometry : Geometry, optional
        Locations of the state variables, for a localizing ``state_filter``.

    Raises
    ------
    ValueError
        If ``prior`` lacks ``encode``/``decode``/``latent_dim``/``state_dim``, the
        mode is unknown, or a mode's required settings are missing.
    """

    name = "latent"
    geometry = None  # latent coordinates have no physical locations

    def __init__(self, prior: Any, mode: str = "manifold", *, static_var: float | None = None,
                 residual_scale: float = 1.0, obs_fraction: float = 0.5,
                 state_filter: EnsembleFilter | None = None,
                 geometry: Geometry | None = None) -> None:
        for attr in ("encode", "decode", "latent_dim", "state_dim"):
            if not hasattr(prior, attr):
                raise ValueError(f"prior must provide {attr} (got {type(prior).__name__}); "
                                 "load one with latentda.priors.load")
        if mode not in LATENT_MODES:
            raise ValueError(f"mode must be one of {', '.join(LATENT_MODES)} (got {mode!r})")
        self.prior = prior
        self.mode = mode
        self.state_dim = int(prior.state_dim)
        self.latent_dim = int(prior.latent_dim)
        self.static_var = None if static_var is None else check_float(
            "static_var", static_var, positive=True)
        self.residual_scale = check_float("residual_scale", residual_scale, nonnegative=True)
        self.obs_fraction = check_float("obs_fraction", obs_fraction, positive=True)
        if mode == "hybrid":
            if not self.obs_fraction < 1.0:
                raise ValueError(f"obs_fraction must be in (0, 1) for mode hybrid: the latent "
                                 f"step gets R/f and the state step R/(1-f) "
                                 f"(got {obs_fraction})")
            if not isinstance(state_filter, EnsembleFilter):
                raise ValueError("mode hybrid needs state_filter, the state-space filter of "
                                 "the correction step (e.g. LETKF(radius=...))")
        self.state_filter = state_filter
        self.state_geometry = geometry
        self.background = self._background()

    def _background(self) -> Background | None:
        if self.static_var is None:
            return None
        k = self.latent_dim
        Sz = np.sqrt(self.static_var) * np.eye(k)
        if self.mode != "noisy_manifold":
            return Background(Sz)
        n = self.state_dim
        cov = np.asarray(self.prior.residual_cov, dtype=np.float64)
        if cov.ndim != 2:
            raise ValueError(f"mode noisy_manifold needs the prior's full residual covariance, "
                             f"but this prior stores only its diagonal (state size {n}); use "
                             f"mode hybrid for large states")
        if self.residual_scale == 0.0 or not np.any(cov):
            Seta = np.zeros((n, 1))
        else:
            Seta = Background.from_covariance(cov, self.residual_scale).sqrt
        S = np.zeros((k + n, k + Seta.shape[1]))
        S[:k, :k] = Sz
        S[k:, k:] = Seta
        return Background(S)

    def __repr__(self) -> str:
        extra = "" if self.static_var is None else f", static_var={self.static_var:g}"
        if self.mode == "noisy_manifold":
            extra += f", residual_scale={self.residual_scale:g}"
        if self.mode == "hybrid":
            extra += f", obs_fraction={self.obs_fraction:g}, state_filter={self.state_filter!r}"
        return f"LatentSpace({self.prior!r}, mode={self.mode!r}{extra})"

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the analysed variables (``k``, or ``k + n`` for noisy_manifold)."""
        return self.latent_dim + (self.state_dim if self.mode == "noisy_manifold" else 0)

    def codes(self, X: np.ndarray) -> np.ndarray:
        """Physical states ``(N, n)`` to codes ``(N, k)`` (one batched prior call)."""
        return np.ascontiguousarray(self.prior.encode(X), dtype=np.float64)

    def generate(self, Z: np.ndarray) -> np.ndarray:
        """Codes ``(N, k)`` to generated states ``G(z)``, ``(N, n)`` (one batched call)."""
        return np.ascontiguousarray(self.prior.decode(Z), dtype=np.float64)

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Physical states ``(N, n)`` to analysed variables ``(N, d)``.

        ``noisy_manifold``: ``[E(x), x - G(E(x))]``, so :meth:`decode` inverts it exactly.
        """
        Z = self.codes(X)
        if self.mode != "noisy_manifold":
            return Z
        return np.hstack([Z, np.asarray(X, dtype=np.float64) - self.generate(Z)])

    def decode(self, Z: np.ndarray) -> np.ndarray:
        """Analysed variables ``(N, d)`` to physical states ``(N, n)``."""
        k = self.latent_dim
        if self.mode != "noisy_manifold":
            return self.generate(Z)
        return self.generate(Z[:, :k]) + Z[:, k:]

    def observe(self, h: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """The observation function of the analysed variables: ``h ∘ decode``."""
        return lambda Z: h(self.decode(Z))

    def decode_t(self, V: Any) -> Any:
        """:meth:`decode` on float64 CPU tensors, differentiable (one device round trip)."""
        import torch

        p = self.prior
        k = self.latent_dim
        Z = V[:, :k] if self.mode == "noisy_manifold" else V
        X = p.decode_t(Z.to(p.device, p.dtype)).to("cpu", torch.float64)
        return X + V[:, k:] if self.mode == "noisy_manifold" else X

    def observe_t(self, h_t: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
        """The differentiable observation function ``h_t ∘ decode_t`` (None if ``h_t`` is)."""
        if h_t is None:
            return None
        return TorchFunction(lambda V: h_t(self.decode_t(V)), self.prior.dtype)

    def assimilate(self, filt: EnsembleFilter, Ef: np.ndarray, obs: Observation,
                   rng: np.random.Generator | None) -> Assimilation:
        """Analyse the physical forecast ``Ef`` with ``obs`` (physical ``h``) by ``filt``.

        The filter works on the space's variables; the analysis is decoded to
        physical states (and, in ``hybrid`` mode, corrected by ``state_filter``).
        """
        Ef = np.asarray(Ef, dtype=np.float64)
        k = self.latent_dim
        V = self.encode(Ef)
        Zf = V[:, :k]
        R = obs.R if self.mode != "hybrid" else obs.R / self.obs_fraction
        lat = Observation(y=obs.y, R=R, h=self.observe(obs.h),
                          h_torch=self.observe_t(obs.h_torch) if filt.needs_gradient else None)
        res = filt.analyse(V, lat, rng, background=self.background)
        Za = res.E[:, :k]
        if self.mode != "hybrid":
            Ea = self.decode(res.E)
            HE = res.HE if self.mode == "noisy_manifold" else np.asarray(obs.h(Ef), np.float64)
            return Assimilation(E=Ea, result=res, HE=HE, latent_forecast=Zf,
                                latent_analysis=np.ascontiguousarray(Za))
        Xm = self.generate(Za) + (Ef - self.generate(Zf))  # members keep their residuals
        second = Observation(y=obs.y, R=obs.R / (1.0 - self.obs_fraction), h=obs.h,
                             locations=obs.locations)
        res2 = self.state_filter.analyse(Xm, second, rng, geometry=self.state_geometry)
        info = {**res2.info, **res.info}
        out = AnalysisResult(E=res.E, HE=res.HE, info=info, weights=res.weights)
        return Assimilation(E=res2.E, result=out, HE=np.asarray(obs.h(Ef), np.float64),
                            latent_forecast=Zf, latent_analysis=np.ascontiguousarray(Za))
