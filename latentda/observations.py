"""Observation operators, Gaussian observation errors and observation schedules.

An operator maps a batch of states ``E`` (N, n) to observation space (N, m).
Linear operators expose their matrix; every operator knows the state indices
it reads (when it reads a subset), so it can report observation locations for
localization from the model's state locations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latentda._validate import check_ensemble, check_float, check_int, check_rng

# --------------------------------------------------------------------------- operators


class ObservationOperator(ABC):
    """Map ``(N, n)`` states to ``(N, m)`` observations.

    Attributes
    ----------
    state_dim : int
        Length ``n`` of the state vector it reads.
    obs_dim : int
        Number ``m`` of observations it produces.
    linear : bool
        Whether ``h(x) = H x`` for a constant matrix (see :meth:`matrix`).
    """

    state_dim: int
    obs_dim: int
    linear: bool = False
    name: str = "operator"

    @abstractmethod
    def _apply(self, E: np.ndarray) -> np.ndarray:
        """Apply to a validated (N, n) float64 batch."""

    def __call__(self, E: np.ndarray) -> np.ndarray:
        """Observe a batch of states.

        Parameters
        ----------
        E : ndarray, shape (N, n) or (n,)

        Returns
        -------
        ndarray, shape (N, m)
        """
        return self._apply(check_ensemble("E", E, self.state_dim))

    @property
    def indices(self) -> np.ndarray | None:
        """State indices read by observation ``j`` (shape (m,)), or None if not a subset."""
        return None

    def matrix(self) -> np.ndarray:
        """The ``(m, n)`` matrix of a linear operator.

        Raises
        ------
        ValueError
            For a nonlinear operator.
        """
        raise ValueError(f"{self.name} is nonlinear and has no matrix; use a linear operator")

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """Jacobian ``dh/dx`` at a single state ``x`` (n,), shape (m, n)."""
        return self.matrix()

    def locations(self, state_locations: np.ndarray | None) -> np.ndarray | None:
        """Observation locations (m, D) from the model's state locations (n, D)."""
        idx = self.indices
        if state_locations is None or idx is None:
            return None
        return np.asarray(state_locations)[idx]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.state_dim}, m={self.obs_dim})"


class Identity(ObservationOperator):
    """Observe every state variable: ``h(x) = x``."""

    linear = True
    name = "identity"

    def __init__(self, n: int) -> None:
        self.state_dim = check_int("n", n, min_value=1)
        self.obs_dim = self.state_dim

    def _apply(self, E: np.ndarray) -> np.ndarray:
        return E.copy()

    @property
    def indices(self) -> np.ndarray:
        return np.arange(self.state_dim)

    def matrix(self) -> np.ndarray:
        return np.eye(self.state_dim)


class Subset(ObservationOperator):
    """Observe the state variables at ``indices``: ``h(x) = x[indices]``.

    Parameters
    ----------
    n : int
        State dimension.
    indices : sequence of int
        Distinct state indices in ``[0, n)``, in observation order.
    """

    linear = True
    name = "subset"

    def __init__(self, n: int, indices: Sequence[int] | np.ndarray) -> None:
        self.state_dim = check_int("n", n, min_value=1)
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(
                f"indices must be a non-empty 1-D sequence of integers (got {idx.dtype}, "
                f"shape {idx.shape})"
            )
        if idx.min() < 0 or idx.max() >= self.state_dim:
            bad = idx[(idx < 0) | (idx >= self.state_dim)][0]
            raise ValueError(
                f"indices must lie in [0, {self.state_dim}) (got {int(bad)}); "
                "observe existing state variables"
            )
        if np.unique(idx).size != idx.size:
            raise ValueError("indices must be distinct (an index is repeated)")
        self._idx = idx.astype(np.int64)
        self.obs_dim = int(idx.size)

    @classmethod
    def every(cls, n: int, k: int, offset: int = 0) -> Subset:
        """Observe every ``k``-th variable starting at ``offset``."""
        n = check_int("n", n, min_value=1)
        k = check_int("k", k, min_value=1, max_value=n)
        offset = check_int("offset", offset, min_value=0, max_value=k - 1)
        return cls(n, np.arange(offset, n, k))

    @classmethod
    def random_sites(cls, n: int, m: int, rng: np.random.Generator | int) -> Subset:
        """Observe ``m`` distinct variables drawn at random (sorted)."""
        n = check_int("n", n, min_value=1)
        m = check_int("m", m, min_value=1, max_value=n)
        rng = check_rng(rng)
        return cls(n, np.sort(rng.choice(n, size=m, replace=False)))

    @classmethod
    def strided_grid(cls, nx: int, ny: int, stride: int | tuple[int, int], *,
                     n_fields: int = 1, field: int = 0, offset: tuple[int, int] = (0, 0),
                     ) -> Subset:
        """Observe one field of a stacked 2-D state on a strided grid.

        The state is ``n_fields`` fields of shape ``(ny, nx)``, each flattened
        row-major and stacked (as in :class:`~latentda.dynamics.ShallowWater2D`:
        ``[h, u, v]``). Points ``(j, i)`` with ``j = oy + sy*a``, ``i = ox + sx*b`` are
        observed, row-major.
        """
        nx = check_int("nx", nx, min_value=1)
        ny = check_int("ny", ny, min_value=1)
        n_fields = check_int("n_fields", n_fields, min_value=1)
        field = check_int("field", field, min_value=0, max_value=n_fields - 1)
        sy, sx = (stride, stride) if np.isscalar(stride) else tuple(stride)
        sx = check_int("stride", sx, min_value=1, max_value=nx)
        sy = check_int("stride", sy, min_value=1, max_value=ny)
        oy = check_int("offset[0]", offset[0], min_value=0, max_value=sy - 1)
        ox = check_int("offset[1]", offset[1], min_value=0, max_value=sx - 1)
        jj, ii = np.meshgrid(np.arange(oy, ny, sy), np.arange(ox, nx, sx), indexing="ij")
        idx = field * nx * ny + jj.ravel() * nx + ii.ravel()
        return cls(n_fields * nx * ny, idx)

    def _apply(self, E: np.ndarray) -> np.ndarray:
        return E[:, self._idx]

    @property
    def indices(self) -> np.ndarray:
        return self._idx.copy()

    def matrix(self) -> np.ndarray:
        H = np.zeros((self.obs_dim, self.state_dim))
        H[np.arange(self.obs_dim), self._idx] = 1.0
        return H


class Linear(ObservationOperator):
    """A general linear operator ``h(x) = H x`` with a dense ``(m, n)`` matrix."""

    linear = True
    name = "linear"

    def __init__(self, H: np.ndarray) -> None:
        H = np.asarray(H)
        if H.ndim != 2 or H.shape[0] < 1 or H.shape[1] < 1 or H.dtype.kind not in "biuf":
            raise ValueError(f"H must be a real 2-D (m, n) matrix (got shape {H.shape})")
        if not np.all(np.isfinite(H)):
            raise ValueError("H must be finite (it contains NaN or inf)")
        self._H = np.ascontiguousarray(H, dtype=np.float64)
        self.obs_dim, self.state_dim = self._H.shape

    def _apply(self, E: np.ndarray) -> np.ndarray:
        return E @ self._H.T

    def matrix(self) -> np.ndarray:
        return self._H.copy()


class _Pointwise(ObservationOperator):
    """A nonlinear function applied to a subset of the state."""

    def __init__(self, n: int, indices: Sequence[int] | np.ndarray | None = None) -> None:
        self._subset = Subset(n, np.arange(n) if indices is None else indices)
        self.state_dim = self._subset.state_dim
        self.obs_dim = self._subset.obs_dim

    @property
    def indices(self) -> np.ndarray:
        return self._subset.indices

    @abstractmethod
    def _f(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _df(self, x: np.ndarray) -> np.ndarray: ...

    def _apply(self, E: np.ndarray) -> np.ndarray:
        return self._f(self._subset._apply(E))

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        x = check_ensemble("x", x, self.state_dim)[0]
        J = self._subset.matrix()
        return J * self._df(x[self._subset._idx])[:, None]


class Arctan(_Pointwise):
    """``h(x) = arctan(x[indices])``: the bounded nonlinear operator of EnSF benchmarks."""

    name = "arctan"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.arctan(x)

    def _df(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + x * x)


class Square(_Pointwise):
    """``h(x) = x[indices]**2``: sign-ambiguous, so the posterior can be bimodal."""

    name = "square"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return x * x

    def _df(self, x: np.ndarray) -> np.ndarray:
        return 2.0 * x


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class GaussianNoise:
    """Zero-mean Gaussian observation error with covariance ``R``.

    Build with :meth:`scalar`, :meth:`diagonal` or :meth:`full`.

    Attributes
    ----------
    cov : ndarray, shape (m, m)
        The covariance ``R`` (symmetric positive definite).
    is_diagonal : bool
        Whether ``R`` is diagonal (enables cheap paths in filters).
    """

    cov: np.ndarray
    is_diagonal: bool

    @classmethod
    def scalar(cls, variance: float, m: int) -> GaussianNoise:
        """``R = variance * I_m``."""
        variance = check_float("variance", variance, positive=True)
        m = check_int("m", m, min_value=1)
        return cls(np.eye(m) * variance, True)

    @classmethod
    def diagonal(cls, variances: Sequence[float] | np.ndarray) -> GaussianNoise:
        """``R = diag(variances)``."""
        v = np.asarray(variances, dtype=np.float64)
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"variances must be a non-empty 1-D array (got shape {v.shape})")
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise ValueError("variances must be finite and > 0 (R must be positive definite)")
        return cls(np.diag(v), True)

    @classmethod
    def full(cls, R: np.ndarray) -> GaussianNoise:
        """A full covariance matrix (checked symmetric positive definite)."""
        R = np.asarray(R, dtype=np.float64)
        if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
            raise ValueError(f"R must be a square (m, m) matrix (got shape {R.shape})")
        if not np.all(np.isfinite(R)):
            raise ValueError("R must be finite (it contains NaN or inf)")
        if not np.allclose(R, R.T, rtol=1e-10, atol=1e-12 * np.abs(R).max()):
            raise ValueError("R must be symmetric; use (R + R.T) / 2")
        w = np.linalg.eigvalsh(R)
        if w[0] <= 0:
            raise ValueError(
                f"R must be positive definite (smallest eigenvalue {w[0]:.3g}); "
                "add a small multiple of the identity"
            )
        diag = bool(np.count_nonzero(R - np.diag(np.diag(R))) == 0)
        return cls(R.copy(), diag)

    @property
    def dim(self) -> int:
        """Number of observations ``m``."""
        return self.cov.shape[0]

    @property
    def variances(self) -> np.ndarray:
        """Diagonal of ``R``, shape (m,)."""
        return np.diag(self.cov).copy()

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Draw errors: shape ``(m,)`` for ``size=None`` else ``(size, m)``."""
        k = 1 if size is None else check_int("size", size, min_value=1)
        z = rng.standard_normal((k, self.dim))
        if self.is_diagonal:
            e = z * np.sqrt(np.diag(self.cov))
        else:
            e = z @ np.linalg.cholesky(self.cov).T
        return e[0] if size is None else e

    def subset(self, mask: np.ndarray) -> GaussianNoise:
        """The marginal error of the observations where ``mask`` is True."""
        mask = np.asarray(mask, dtype=bool)
        return GaussianNoise(self.cov[np.ix_(mask, mask)], self.is_diagonal)


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class ObsSchedule:
    """Observations every ``every`` model steps, starting after ``first`` steps.

    Attributes
    ----------
    every : int
        Model steps between two analysis times (>= 1).
    first : int
        Model step of the first observation (default: ``every``).
    """

    every: int = 1
    first: int | None = None

    def __post_init__(self) -> None:
        check_int("every", self.every, min_value=1)
        if self.first is not None:
            check_int("first", self.first, min_value=0)

    def steps(self, n_cycles: int) -> np.ndarray:
        """Model step indices of the first ``n_cycles`` analysis times."""
        n_cycles = check_int("n_cycles", n_cycles, min_value=0)
        first = self.every if self.first is None else self.first
        return first + self.every * np.arange(n_cycles, dtype=np.int64)


# --------------------------------------------------------------------------- missing data


def valid_mask(y: np.ndarray) -> np.ndarray:
    """True where an observation value is finite (NaN/inf mark missing values)."""
    return np.isfinite(np.asarray(y, dtype=np.float64))


def mask_missing(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Return a copy of ``y`` with a random ``fraction`` of the entries set to NaN."""
    fraction = check_float("fraction", fraction, min_value=0.0, max_value=1.0)
    y = np.array(y, dtype=np.float64)
    y[rng.random(y.shape) < fraction] = np.nan
    return y
