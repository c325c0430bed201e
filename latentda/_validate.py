"""Validation helpers whose errors name the offending field and say what to do.

Every public constructor and function validates its input with these before
doing any work, so a bad value fails fast with a message of the form
``"<name> must be <rule> (got <value>); <fix>"``.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value: Any, *, min_value: int | None = None,
              max_value: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking its type and range.

    Raises
    ------
    ValueError
        If ``value`` is not an integer or lies outside ``[min_value, max_value]``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer (got {_fmt(value)})")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value} (got {value})")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value} (got {value})")
    return value


def check_float(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False,
                min_value: float | None = None, max_value: float | None = None) -> float:
    """Return ``value`` as a finite ``float`` after checking its range.

    Raises
    ------
    ValueError
        If ``value`` is not a finite real number or violates the requested bound.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number (got {_fmt(value)})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite (got {value})")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0 (got {value})")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0 (got {value})")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value} (got {value})")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value} (got {value})")
    return value


def check_ensemble(name: str, E: Any, n: int, *, allow_1d: bool = True) -> np.ndarray:
    """Return ``E`` as a C-contiguous float64 array of shape ``(N, n)``.

    A single state of shape ``(n,)`` is accepted when ``allow_1d`` and returned
    as shape ``(1, n)``.

    Raises
    ------
    ValueError
        If ``E`` is not numeric or its shape is not ``(N, n)``.
    """
    arr = np.asarray(E)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{name} must be a real numeric array (got dtype {arr.dtype}); "
            "convert it with np.asarray(..., dtype=float)"
        )
    if arr.ndim == 1 and allow_1d:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (N, {n}) with members first (got {arr.shape})"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def check_rng(rng: Any) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from a Generator or an integer seed.

    Raises
    ------
    ValueError
        If ``rng`` is neither a Generator nor a non-negative integer seed.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(
        f"rng must be a numpy.random.Generator or a non-negative integer seed (got {_fmt(rng)})"
    )
