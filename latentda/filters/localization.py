"""Localization: the Gaspari–Cohn taper and (periodic) distances."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["gaspari_cohn", "periodic_distance", "pairwise_sq_distance", "as_period", "GC_SUPPORT"]

#: the Gaspari–Cohn function vanishes for r >= GC_SUPPORT (r = distance / half-width)
GC_SUPPORT: float = 2.0


def gaspari_cohn(r: np.ndarray | float) -> np.ndarray:
    """Gaspari & Cohn (1999, eq. 4.10) fifth-order piecewise rational taper.

    Parameters
    ----------
    r : array_like
        Distance divided by the half-width ``c`` (negative values use ``|r|``).

    Returns
    -------
    ndarray
        Same shape as ``r``: 1 at ``r = 0``, 5/24 at ``|r| = 1``, 0 for ``|r| >= 2``;
        twice continuously differentiable and a positive-definite correlation
        function in up to three dimensions.
    """
    r = np.abs(np.asarray(r, dtype=np.float64))
    out = np.zeros_like(r)
    inner = r <= 1.0
    outer = (r > 1.0) & (r < 2.0)
    x = r[inner]
    out[inner] = (((-0.25 * x + 0.5) * x + 0.625) * x - 5.0 / 3.0) * x * x + 1.0
    x = r[outer]
    out[outer] = (((((1.0 / 12.0) * x - 0.5) * x + 0.625) * x + 5.0 / 3.0) * x - 5.0) * x \
        + 4.0 - 2.0 / (3.0 * x)
    return out


def as_period(period: float | Sequence[float] | None, D: int, name: str = "period",
              ) -> tuple[float, ...] | None:
    """Validate a domain period: ``None``, a positive number (D == 1) or ``D`` of them.

    ``inf`` marks an axis that is not periodic.

    Raises
    ------
    ValueError
        If the period has the wrong length or a non-positive entry.
    """
    if period is None:
        return None
    p = np.atleast_1d(np.asarray(period, dtype=np.float64))
    if p.ndim != 1 or p.size != D:
        raise ValueError(f"{name} must be None or have one entry per location axis "
                         f"(D = {D}; got {tuple(p.tolist())})")
    if np.isnan(p).any() or (p <= 0).any():
        raise ValueError(f"{name} entries must be > 0 (inf: not periodic) "
                         f"(got {tuple(p.tolist())})")
    return tuple(float(v) for v in p)


def _as_points(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, D) or (n,) (got {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def periodic_distance(a: np.ndarray, b: np.ndarray,
                      period: float | Sequence[float] | None = None) -> np.ndarray:
    """Pairwise Euclidean distances, using the minimum image along periodic axes.

    Parameters
    ----------
    a : ndarray, shape (na, D) or (na,)
        First set of points (a 1-D array is ``na`` points on a line).
    b : ndarray, shape (nb, D) or (nb,)
        Second set of points.
    period : float or sequence of float or None
        Domain length along each axis (``inf``: that axis is not periodic);
        ``None``: no periodicity.

    Returns
    -------
    ndarray, shape (na, nb)

    Examples
    --------
    On a ring of 40 points, the distance between 1 and 39 is 2:

    >>> float(periodic_distance([1.0], [39.0], 40)[0, 0])
    2.0
    """
    a = _as_points("a", a)
    b = _as_points("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same number of axes D (got {a.shape[1]} "
                         f"and {b.shape[1]})")
    per = as_period(period, a.shape[1])
    return np.sqrt(pairwise_sq_distance(a, b, per))


def pairwise_sq_distance(a: np.ndarray, b: np.ndarray, period: tuple[float, ...] | None,
                         ) -> np.ndarray:
    """Squared minimum-image distances between validated points ``(na, D)`` and ``(nb, D)``."""
    sq = np.zeros((a.shape[0], b.shape[0]))
    for k in range(a.shape[1]):
        delta = a[:, k, None] - b[None, :, k]
        if period is not None and np.isfinite(period[k]):
            p = period[k]
            delta -= p * np.rint(delta * (1.0 / p))  # minimum image: |delta| <= p / 2
        delta *= delta
        sq += delta
    return sq
