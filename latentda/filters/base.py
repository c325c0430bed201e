"""The filter protocol: observations, geometry, analysis results and the base class.

A filter never knows whether it works in state or latent space: it sees an
ensemble ``E`` of shape ``(N, d)`` (members first) and an :class:`Observation`
whose ``h`` maps ``(N, d) -> (N, m)``. Localizing filters also need a
:class:`Geometry` (where the ``d`` variables live), which only exists in state space.
"""

from __future__ import annotations

import contextvars
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentda._validate import check_float, check_rng
from latentda.filters.localization import as_period
from latentda.linalg import is_diagonal, sym_inv_sqrt

__all__ = ["Observation", "Geometry", "Background", "AnalysisResult", "EnsembleFilter",
           "record_jitter"]

#: largest eigenvalue floor applied during the current analysis (see record_jitter)
_JITTER: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "latentda_analysis_jitter", default=None)


def record_jitter(amount: float) -> None:
    """Note that an eigenvalue was raised by ``amount`` to keep a matrix positive definite.

    Inside :meth:`EnsembleFilter.analyse` the largest such amount is reported as
    ``info["jitter"]`` (0 when no eigenvalue needed raising), which the cycling
    engine writes to the dataset. Outside an analysis it does nothing.
    """
    acc = _JITTER.get()
    if acc is not None and amount > acc[0]:
        acc[0] = float(amount)


def _as_locations(name: str, loc: Any, rows: int | None) -> np.ndarray:
    arr = np.asarray(loc)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array (got dtype {arr.dtype})")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] == 0 or (rows is not None and arr.shape[0] != rows):
        want = f"({rows}, D)" if rows is not None else "(n, D)"
        raise ValueError(f"{name} must have shape {want}, one row per variable "
                         f"(got {np.shape(loc)})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True, eq=False)
class Observation:
    """Observations at one analysis time.

    Parameters
    ----------
    y : ndarray, shape (m,)
        Observed values (finite; masking of missing values is done by the caller).
    R : ndarray, shape (m, m)
        Symmetric positive-definite observation-error covariance. A diagonal ``R``
        takes cheap paths everywhere.
    h : callable
        Observation function ``h(E) -> (N, m)`` for an ensemble ``E`` of shape ``(N, d)``.
        It must not modify ``E``.
    locations : ndarray, shape (m, D), optional
        Observation positions, needed by localizing filters.
    h_torch : callable, optional
        A differentiable version of ``h`` for gradient-based analyses
        (``needs_gradient``): float64 CPU tensors ``(B, d) -> (B, m)``, composed
        by the space (decoder and operator); an attribute ``dtype`` may name the
        precision it computes in (``torch.float32`` selects finite-difference
        Jacobians).

    Raises
    ------
    ValueError
        If a field has the wrong shape, is not finite, or ``R`` is not symmetric
        positive definite.
    """

    y: np.ndarray
    R: np.ndarray
    h: Callable[[np.ndarray], np.ndarray]
    locations: np.ndarray | None = None
    h_torch: Callable[[Any], Any] | None = None
    _rinv_sqrt_diag: np.ndarray | None = field(init=False, repr=False, default=None)
    _rinv_sqrt: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        y = np.asarray(self.y)
        if y.dtype.kind not in "biuf":
            raise ValueError(f"y must be a real numeric array (got dtype {y.dtype})")
        y = np.ascontiguousarray(y, dtype=np.float64)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"y must have shape (m,) with m >= 1 (got {y.shape})")
        if not np.isfinite(y).all():
            raise ValueError("y must be finite; drop or mask missing observations before "
                             "building the Observation")
        m = y.size
        R = np.asarray(self.R)
        if R.dtype.kind not in "biuf":
            raise ValueError(f"R must be a real numeric array (got dtype {R.dtype})")
        R = np.ascontiguousarray(R, dtype=np.float64)
        if R.shape != (m, m):
            raise ValueError(f"R must have shape (m, m) = ({m}, {m}) to match y "
                             f"(got {R.shape})")
        if not np.isfinite(R).all():
            raise ValueError("R must be finite")
        if is_diagonal(R):
            r = np.diag(R)
            if not (r > 0).all():
                raise ValueError(f"R must be positive definite: its diagonal has entries <= 0 "
                                 f"(smallest {float(r.min()):.6g})")
            object.__setattr__(self, "_rinv_sqrt_diag", 1.0 / np.sqrt(r))
        else:
            object.__setattr__(self, "_rinv_sqrt", sym_inv_sqrt(R, name="R", validate=True))
        if not callable(self.h):
            raise ValueError(f"h must be callable, h(E) -> (N, m) (got {type(self.h).__name__})")
        if self.h_torch is not None and not callable(self.h_torch):
            raise ValueError(f"h_torch must be callable or None "
                             f"(got {type(self.h_torch).__name__})")
        loc = self.locations
        if loc is not None:
            loc = _as_locations("locations", loc, m)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "locations", loc)

    @property
    def m(self) -> int:
        """Number of observations."""
        return self.y.size

    @property
    def R_is_diagonal(self) -> bool:
        """Whether ``R`` is diagonal (uncorrelated errors)."""
        return self._rinv_sqrt_diag is not None

    @property
    def rinv_sqrt(self) -> np.ndarray:
        """``R^{-1/2}``: a vector ``(m,)`` for diagonal ``R``, else the symmetric ``(m, m)``."""
        return self._rinv_sqrt_diag if self._rinv_sqrt_diag is not None else self._rinv_sqrt

    def whiten(self, Z: np.ndarray) -> np.ndarray:
        """Return ``Z @ R^{-1/2}`` for ``Z`` of shape ``(..., m)`` (symmetric square root)."""
        if self._rinv_sqrt_diag is not None:
            return Z * self._rinv_sqrt_diag
        return Z @ self._rinv_sqrt


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where the ``d`` analysed variables live (state space only).

    Parameters
    ----------
    locations : ndarray, shape (d, D) or (d,)
        Positions of the variables (a 1-D array means ``D = 1``).
    period : tuple of float, optional
        Periodic domain length along each axis (``inf``: that axis is not
        periodic); ``None``: not periodic. A single number is accepted when D = 1.

    Examples
    --------
    Lorenz-96 with 40 variables on a ring:

    >>> g = Geometry(np.arange(40.0), period=(40.0,))
    """

    locations: np.ndarray
    period: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        loc = _as_locations("geometry.locations", self.locations, None)
        object.__setattr__(self, "locations", loc)
        object.__setattr__(self, "period",
                           as_period(self.period, loc.shape[1], name="geometry.period"))

    @property
    def d(self) -> int:
        """Number of variables."""
        return self.locations.shape[0]


@dataclass(frozen=True, eq=False)
class Background:
    """A static background covariance ``B = S S^T`` of the analysed variables.

    Hybrid filters blend it with the ensemble covariance. The *space* supplies
    it: a scaled climatological covariance in state space, the generative
    prior's latent covariance (and the off-manifold residual covariance) in
    latent space. Filters push its columns through ``h`` as secants around the
    ensemble mean, so ``h`` needs no derivative.

    Parameters
    ----------
    sqrt : ndarray, shape (d, r)
        Square-root columns ``S`` (any ``r >= 1``).
    """

    sqrt: np.ndarray

    def __post_init__(self) -> None:
        S = np.asarray(self.sqrt)
        if S.dtype.kind not in "biuf" or S.ndim != 2 or min(S.shape) < 1:
            raise ValueError(f"background.sqrt must be a real (d, r) array of square-root "
                             f"columns (got shape {S.shape}, dtype {S.dtype})")
        S = np.ascontiguousarray(S, dtype=np.float64)
        if not np.isfinite(S).all():
            raise ValueError("background.sqrt must be finite")
        object.__setattr__(self, "sqrt", S)

    @property
    def d(self) -> int:
        """Number of variables."""
        return self.sqrt.shape[0]

    @classmethod
    def from_covariance(cls, B: np.ndarray, scale: float = 1.0, rtol: float = 1e-10,
                        ) -> Background:
        """The symmetric square root of ``scale * B`` (eigenvalues below ``rtol`` dropped).

        ``B`` may be a full ``(d, d)`` matrix or its diagonal ``(d,)``.
        """
        B = np.asarray(B, dtype=np.float64)
        scale = check_float("scale", scale, positive=True)
        if B.ndim == 1:
            if (B < 0).any():
                raise ValueError("background covariance diagonal must be >= 0")
            return cls(np.diag(np.sqrt(scale * B)))
        if B.ndim != 2 or B.shape[0] != B.shape[1] or not np.isfinite(B).all():
            raise ValueError(f"background covariance must be a finite square matrix "
                             f"(got shape {B.shape})")
        lam, V = np.linalg.eigh(0.5 * (B + B.T))
        keep = lam > rtol * max(float(lam[-1]), 0.0)
        if not keep.any():
            raise ValueError("background covariance is zero")
        return cls(V[:, keep] * np.sqrt(scale * lam[keep]))


@dataclass
class AnalysisResult:
    """What an analysis returns.

    Attributes
    ----------
    E : ndarray, shape (N, d)
        Analysis ensemble (a new array).
    HE : ndarray, shape (N, m)
        Forecast ensemble in observation space, ``h(E_forecast)`` (reused by diagnostics).
    info : dict of str to float
        Scalars such as ``{"inflation": 1.02}``.
    weights : ndarray, shape (N,), optional
        Normalized weights of the members of ``E`` (particle filters that did not
        resample); ``None`` means equal weights.
    """

    E: np.ndarray
    HE: np.ndarray
    info: dict[str, float]
    weights: np.ndarray | None = None


def _check_forecast(E: Any) -> np.ndarray:
    arr = np.asarray(E)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"E must be a real numeric array (got dtype {arr.dtype})")
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"E must have shape (N, d), members first (got {arr.shape})")
    if arr.shape[0] < 2:
        raise ValueError(f"E must have N >= 2 members (got N = {arr.shape[0]})")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("E must be finite (the forecast ensemble contains NaN or inf; "
                         "the run has probably diverged)")
    return arr


@dataclass
class EnsembleFilter(ABC):
    """Base class of the ensemble filters.

    Filters are dataclasses whose fields are their hyperparameters, so their
    repr labels a run (``ETKF(inflation=1.02)``).

    Parameters
    ----------
    inflation : float
        Multiplicative inflation (>= 1) applied to the *analysis* anomalies
        (DAPPER's post-analysis convention). Keyword-only.
    """

    inflation: float = field(default=1.0, kw_only=True)

    #: whether ``analyse`` draws random numbers (needs an ``rng``)
    stochastic = False
    #: whether ``analyse`` needs a static :class:`Background` covariance
    needs_background = False
    #: whether ``analyse`` differentiates ``h`` (needs ``obs.h_torch``)
    needs_gradient = False

    def __post_init__(self) -> None:
        self._validate_params()

    def _validate_params(self) -> None:
        """Check the hyperparameters (override and call ``super()`` to add more)."""
        self.inflation = check_float("inflation", self.inflation, min_value=1.0)

    def analyse(self, E: np.ndarray, obs: Observation, rng: np.random.Generator | None,
                geometry: Geometry | None = None, background: Background | None = None,
                ) -> AnalysisResult:
        """Assimilate ``obs`` into the forecast ensemble ``E``.

        Parameters
        ----------
        E : ndarray, shape (N, d)
            Forecast ensemble, members first, N >= 2, finite. Not modified.
        obs : Observation
            Observed values, error covariance, observation function (and locations).
        rng : numpy.random.Generator or int or None
            Random source for stochastic filters (ignored by deterministic ones,
            which accept ``None``).
        geometry : Geometry, optional
            Locations of the ``d`` variables (for localization).
        background : Background, optional
            Static background covariance of the ``d`` variables, for hybrid filters
            (``needs_background``); other filters ignore it.

        Returns
        -------
        AnalysisResult

        Raises
        ------
        ValueError
            On inconsistent shapes, non-finite values, or a missing ``rng`` /
            geometry where one is needed; raised before any work.
        """
        E = _check_forecast(E)
        if not isinstance(obs, Observation):
            raise ValueError(f"obs must be a latentda.filters.Observation "
                             f"(got {type(obs).__name__})")
        if rng is not None:
            rng = check_rng(rng)
        elif self.stochastic:
            raise ValueError(f"rng must be a numpy.random.Generator for the stochastic "
                             f"{type(self).__name__} (got None)")
        if geometry is not None:
            if not isinstance(geometry, Geometry):
                raise ValueError(f"geometry must be a latentda.filters.Geometry or None "
                                 f"(got {type(geometry).__name__})")
            if geometry.d != E.shape[1]:
                raise ValueError(f"geometry.locations must have one row per variable: "
                                 f"{E.shape[1]} rows for E of shape {E.shape} "
                                 f"(got {geometry.d})")
        if self.needs_background:
            if not isinstance(background, Background):
                raise ValueError(f"{type(self).__name__} needs a static background covariance "
                                 f"(background=latentda.filters.Background(...)); a space "
                                 f"supplies one (got {type(background).__name__})")
            if background.d != E.shape[1]:
                raise ValueError(f"background.sqrt must have one row per variable: "
                                 f"{E.shape[1]} rows for E of shape {E.shape} "
                                 f"(got {background.d})")
        if self.needs_gradient and obs.h_torch is None:
            raise ValueError(f"{type(self).__name__} differentiates the observation function "
                             f"but obs.h_torch is None: the observation operator has no "
                             f"torch version (use Identity, Subset, Linear, Arctan or Square), "
                             f"or use a gradient-free filter (ETKF, EnKF, LETKF, HybridETKF)")
        self._check_call(E, obs, geometry)
        HE = self._observe(obs, E)
        token = _JITTER.set([0.0])
        extra = {"background": background} if self.needs_background else {}
        try:
            E_a, info = self._analyse(E, HE, obs, rng, geometry, **extra)
            jitter = _JITTER.get()[0]
        finally:
            _JITTER.reset(token)
        info = {**info, "jitter": jitter}
        return AnalysisResult(E=E_a, HE=HE, info=info)

    def get_state(self) -> dict[str, float]:
        """State the filter carries between cycles (e.g. an adaptive inflation).

        Stateless filters return ``{}``. Stored with run checkpoints so that a
        resumed run continues exactly; restore it with :meth:`set_state`.
        """
        return {}

    def set_state(self, state: dict[str, float]) -> None:
        """Restore what :meth:`get_state` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} carries no state (got {sorted(state)})")

    def _check_call(self, E: np.ndarray, obs: Observation, geometry: Geometry | None) -> None:
        """Hook for filter-specific checks, run before ``h`` is evaluated."""
        self._validate_params()

    @staticmethod
    def _observe(obs: Observation, E: np.ndarray) -> np.ndarray:
        HE = np.asarray(obs.h(E))
        N, m = E.shape[0], obs.m
        if HE.shape != (N, m):
            raise ValueError(f"h must map E of shape {E.shape} to shape (N, m) = ({N}, {m}) "
                             f"(got {HE.shape})")
        if HE.dtype != np.float64 or not HE.flags.c_contiguous:
            HE = np.ascontiguousarray(HE, dtype=np.float64)
        if not np.isfinite(HE).all():
            raise ValueError("h(E) must be finite (the observation function returned NaN or inf)")
        return HE

    @abstractmethod
    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        """Return the analysis ensemble and the info dict for validated inputs.

        Filters with ``needs_background`` also receive ``background=`` (a
        :class:`Background`, already checked against ``E``).
        """


# ----------------------------------------------------------------------------------------
# shared ensemble-space algebra

def whitened_innovations(HE: np.ndarray, obs: Observation,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Whitened observation anomalies and mean innovation.

    Returns
    -------
    Yw : ndarray, shape (N, m)
        ``(HE - mean(HE)) @ R^{-1/2}``.
    dyw : ndarray, shape (m,)
        ``(y - mean(HE)) @ R^{-1/2}``.
    """
    ybar = HE.mean(axis=0)
    Yw = obs.whiten(HE - ybar)
    dyw = obs.whiten(obs.y - ybar)
    return Yw, dyw


def ensemble_eigh(Yw: np.ndarray, N1: float, scale2: float = 1.0,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of ``C = scale2 * Yw @ Yw.T + N1 * I`` (N x N).

    ``C`` is symmetric by construction and its eigenvalues are mathematically
    ``>= N1``; round-off below ``N1`` is floored there.
    """
    N = Yw.shape[0]
    C = Yw @ Yw.T
    if scale2 != 1.0:
        C *= scale2
    C.flat[:: N + 1] += N1
    lam, V = np.linalg.eigh(C)
    record_jitter(N1 - float(lam[0]))
    np.maximum(lam, N1, out=lam)
    return lam, V


def sqrt_transform(E: np.ndarray, Yw: np.ndarray, dyw: np.ndarray, inflation: float,
                   prior_inflation: float = 1.0,
                   eig: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Symmetric square-root (ETKF) analysis in ensemble space.

    With ``A`` the state anomalies, ``l = prior_inflation`` and
    ``C = l^2 Yw Yw^T + (N-1) I = V diag(lam) V^T``, the analysis is
    ``mean + l * w @ A + inflation * l * T @ A`` with
    ``w = C^{-1} (l Yw dyw)`` and ``T = sqrt(N-1) C^{-1/2}`` (symmetric, ``T 1 = 1``).
    """
    N = E.shape[0]
    N1 = N - 1.0
    xbar = E.mean(axis=0)
    A = E - xbar
    l1 = prior_inflation
    lam, V = ensemble_eigh(Yw, N1, l1 * l1) if eig is None else eig
    b = Yw @ dyw
    if l1 != 1.0:
        b *= l1
    w = V @ ((b @ V) / lam)
    T = (V * (np.sqrt(N1 / lam) * (inflation * l1))) @ V.T
    Ea = T @ A
    Ea += xbar + (l1 * w) @ A
    return Ea


def batched_transforms(Yl: np.ndarray, dl: np.ndarray, N1: float, inflation: float,
                       form: str | None = None) -> np.ndarray:
    """Square-root transform matrices of a stack of (local) ETKF analyses.

    For each ``g``, with ``Y = Yl[g]`` (shape ``(N, K)``, whitened and tapered
    observation anomalies) and ``dy = dl[g]`` (shape ``(K,)``), returns
    ``W[g] = inflation * T + 1 w^T`` where ``T = sqrt(N-1) C^{-1/2}``,
    ``w = C^{-1} Y dy`` and ``C = Y Y^T + (N-1) I``, so that the analysis of
    anomalies ``A`` (shape ``(N, n)``) is ``mean + W[g] @ A``.

    ``form="ens"`` decomposes the ``N x N`` matrix ``C``; ``form="obs"`` the
    ``K x K`` Gram matrix ``Y^T Y = U diag(s2) U^T`` and uses
    ``T = I + Y U diag(phi) U^T Y^T`` with
    ``phi = -1 / (sqrt(s2 + N-1) (sqrt(N-1) + sqrt(s2 + N-1)))`` (no cancellation)
    and ``w = Y U diag(1 / (s2 + N-1)) U^T dy``. Default: the smaller problem.

    Parameters
    ----------
    Yl : ndarray, shape (G, N, K)
    dl : ndarray, shape (G, K)
    N1 : float
        ``N - 1``.
    inflation : float
        Post-analysis inflation of the anomalies.
    form : {"ens", "obs", None}

    Returns
    -------
    ndarray, shape (G, N, N)
    """
    G, N, K = Yl.shape
    if form is None:
        form = "obs" if K < N else "ens"
    YlT = Yl.transpose(0, 2, 1)
    if form == "ens":
        C = np.matmul(Yl, YlT)  # (G, N, N)
        C.reshape(G, N * N)[:, :: N + 1] += N1
        b = np.matmul(Yl, dl[:, :, None])  # (G, N, 1)
        lam, V = np.linalg.eigh(C)
        record_jitter(N1 - float(lam[:, 0].min()))
        np.maximum(lam, N1, out=lam)
        VT = V.transpose(0, 2, 1)
        w = np.matmul(V, np.matmul(VT, b) / lam[:, :, None])  # (G, N, 1)
        W = np.matmul(V * (inflation * np.sqrt(N1 / lam))[:, None, :], VT)
    elif form == "obs":
        S = np.matmul(YlT, Yl)  # (G, K, K)
        s2, U = np.linalg.eigh(S)
        record_jitter(-float(s2[:, 0].min()))
        np.maximum(s2, 0.0, out=s2)
        UT = U.transpose(0, 2, 1)
        q = np.sqrt(s2 + N1)
        YU = np.matmul(Yl, U)  # (G, N, K)
        coef = np.matmul(UT, dl[:, :, None]) / (q * q)[:, :, None]  # (G, K, 1)
        w = np.matmul(YU, coef)  # (G, N, 1)
        phi = -inflation / (q * (math.sqrt(N1) + q))
        W = np.matmul(YU * phi[:, None, :], YU.transpose(0, 2, 1))
        W.reshape(G, N * N)[:, :: N + 1] += inflation
    else:
        raise ValueError(f"form must be 'ens', 'obs' or None (got {form!r})")
    W += w.transpose(0, 2, 1)
    return W
