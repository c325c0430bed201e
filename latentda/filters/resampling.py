"""Resampling kernels and weight helpers for particle methods.

Every scheme turns normalized weights ``w`` (shape ``(N,)``) into ``n_out``
ancestor indices whose offspring counts ``c_i`` are unbiased, ``E[c_i] = n_out w_i``:

- ``"multinomial"``: ``n_out`` independent draws (the reference; largest variance);
- ``"stratified"``: one uniform in each of the ``n_out`` strata ``[k/n_out, (k+1)/n_out)``;
- ``"systematic"``: one uniform shifted by ``k/n_out`` (counts are ``floor(n_out w_i)``
  or ``ceil(n_out w_i)``);
- ``"residual"``: ``floor(n_out w_i)`` copies, the remainder drawn multinomially from
  the residual weights.

The kernels are Numba functions of the weights and of uniforms drawn by the thin
Python wrapper :func:`resample` from a ``numpy.random.Generator``, so a seed fixes
the result. The returned indices are sorted (non-decreasing): member ``j`` of the
resampled ensemble is a copy of member ``indices[j]``.

Weights are handled in the log domain by :func:`normalize_log_weights`
(log-sum-exp), so likelihoods far below the float64 range do not underflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from latentda._validate import check_int, check_rng

__all__ = ["SCHEMES", "resample", "normalize_log_weights", "ess"]

#: the resampling schemes understood by :func:`resample`
SCHEMES: tuple[str, ...] = ("systematic", "stratified", "residual", "multinomial")

#: allowed deviation of ``sum(weights)`` from 1
_SUM_TOL = 1e-6


# ----------------------------------------------------------------------------------------
# kernels (sorted positions in [0, 1) -> ancestor indices)


@njit(cache=True, nogil=True)
def _cumulative(w: np.ndarray) -> tuple[np.ndarray, int]:
    """Cumulative weights normalized to end exactly at 1, and the last non-zero index.

    Searches stop at the last non-zero weight, so a position that rounds up to 1
    never selects a trailing zero-weight particle or runs past the end.
    """
    n = w.shape[0]
    cw = np.empty(n)
    s = 0.0
    last = 0
    for i in range(n):
        s += w[i]
        cw[i] = s
        if w[i] > 0.0:
            last = i
    inv = 1.0 / s
    for i in range(last):
        cw[i] *= inv
    for i in range(last, n):  # no position in [0, 1) can land on a trailing zero weight
        cw[i] = 1.0
    return cw, last


@njit(cache=True, nogil=True)
def _select(cw: np.ndarray, last: int, pos: np.ndarray, out: np.ndarray) -> None:
    """``out[k]`` = smallest ``i`` with ``cw[i] > pos[k]`` for sorted ``pos`` in [0, 1)."""
    i = 0
    for k in range(pos.shape[0]):
        p = pos[k]
        while i < last and cw[i] <= p:
            i += 1
        out[k] = i


@njit(cache=True, nogil=True)
def _systematic_kernel(w: np.ndarray, u: float, n_out: int) -> np.ndarray:
    cw, last = _cumulative(w)
    out = np.empty(n_out, dtype=np.int64)
    inv = 1.0 / n_out
    i = 0
    for k in range(n_out):
        p = (k + u) * inv
        while i < last and cw[i] <= p:
            i += 1
        out[k] = i
    return out


@njit(cache=True, nogil=True)
def _stratified_kernel(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    cw, last = _cumulative(w)
    n_out = u.shape[0]
    out = np.empty(n_out, dtype=np.int64)
    inv = 1.0 / n_out
    i = 0
    for k in range(n_out):
        p = (k + u[k]) * inv
        while i < last and cw[i] <= p:
            i += 1
        out[k] = i
    return out


@njit(cache=True, nogil=True)
def _sorted_uniforms(u: np.ndarray) -> np.ndarray:
    """Order statistics of ``len(u) - 1`` uniforms from ``len(u)`` uniforms (O(n)).

    The normalized partial sums of ``n + 1`` standard exponentials are distributed as
    the sorted sample of ``n`` independent uniforms on [0, 1).
    """
    n = u.shape[0] - 1
    pos = np.empty(n)
    s = 0.0
    for k in range(n):
        s += -np.log1p(-u[k])  # u in [0, 1): an exponential draw
        pos[k] = s
    total = s - np.log1p(-u[n])
    inv = 1.0 / total
    for k in range(n):
        pos[k] *= inv
    return pos


@njit(cache=True, nogil=True)
def _multinomial_kernel(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    cw, last = _cumulative(w)
    pos = _sorted_uniforms(u)
    out = np.empty(pos.shape[0], dtype=np.int64)
    _select(cw, last, pos, out)
    return out


@njit(cache=True, nogil=True)
def _residual_counts(w: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic copies ``floor(n_out w_i)`` and the residual weights."""
    n = w.shape[0]
    s = 0.0
    for i in range(n):
        s += w[i]
    scale = n_out / s
    counts = np.empty(n, dtype=np.int64)
    resid = np.empty(n)
    for i in range(n):
        x = w[i] * scale
        f = np.floor(x)
        counts[i] = np.int64(f)
        resid[i] = x - f
    return counts, resid


@njit(cache=True, nogil=True)
def _residual_fill(counts: np.ndarray, resid: np.ndarray, u: np.ndarray,
                   n_out: int) -> np.ndarray:
    """Add the multinomial draws on ``resid`` to ``counts`` and expand to sorted indices."""
    n_extra = u.shape[0] - 1
    if n_extra > 0:
        cw, last = _cumulative(resid)
        pos = _sorted_uniforms(u)
        extra = np.empty(n_extra, dtype=np.int64)
        _select(cw, last, pos, extra)
        for k in range(n_extra):
            counts[extra[k]] += 1
    out = np.empty(n_out, dtype=np.int64)
    j = 0
    for i in range(counts.shape[0]):
        for _ in range(counts[i]):
            out[j] = i
            j += 1
    return out


# ----------------------------------------------------------------------------------------
# public wrappers


def _check_weights(weights: Any, name: str = "weights") -> np.ndarray:
    arr = np.asarray(weights)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array (got dtype {arr.dtype})")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must have shape (N,) with N >= 1 (got {arr.shape})")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (got NaN or inf); compute weights in the log "
                         "domain and normalize them with normalize_log_weights")
    if (arr < 0).any():
        raise ValueError(f"{name} must be >= 0 (smallest {float(arr.min()):.6g})")
    total = float(arr.sum())
    if total <= 0.0:
        raise ValueError(f"{name} are all zero: every particle is impossible; "
                         "use likelihood tempering or a larger observation error")
    return arr


def resample(weights: np.ndarray, rng: np.random.Generator | int,
             scheme: str = "systematic", n_out: int | None = None) -> np.ndarray:
    """Draw ancestor indices with expected offspring counts ``n_out * weights``.

    Parameters
    ----------
    weights : ndarray, shape (N,)
        Normalized weights: finite, >= 0, summing to 1 (within 1e-6).
    rng : numpy.random.Generator or int
        Source of the uniforms (1 for systematic, ``n_out`` for stratified,
        ``n_out + 1`` for multinomial, ``R + 1`` for residual with ``R`` residual draws).
    scheme : {"systematic", "stratified", "residual", "multinomial"}
    n_out : int, optional
        Number of indices to draw (default ``N``).

    Returns
    -------
    ndarray of int64, shape (n_out,)
        Sorted ancestor indices in ``[0, N)``; zero-weight particles are never chosen.

    Raises
    ------
    ValueError
        If the weights are not a finite, non-negative, normalized 1-D array (all-zero
        weights included), ``scheme`` is unknown or ``n_out < 1``.

    Examples
    --------
    >>> resample(np.array([0.0, 0.5, 0.5]), np.random.default_rng(0), n_out=4)
    array([1, 1, 2, 2])
    """
    w = _check_weights(weights)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})")
    n_out = w.size if n_out is None else check_int("n_out", n_out, min_value=1)
    total = float(w.sum())
    if abs(total - 1.0) > _SUM_TOL:
        raise ValueError(f"weights must be normalized to sum to 1 (got sum {total:.12g}); "
                         "divide by their sum or use normalize_log_weights")
    rng = check_rng(rng)
    if scheme == "systematic":
        return _systematic_kernel(w, float(rng.random()), n_out)
    if scheme == "stratified":
        return _stratified_kernel(w, rng.random(n_out))
    if scheme == "multinomial":
        return _multinomial_kernel(w, rng.random(n_out + 1))
    counts, resid = _residual_counts(w, n_out)
    n_extra = n_out - int(counts.sum())
    u = rng.random(n_extra + 1) if n_extra > 0 else np.zeros(1)
    return _residual_fill(counts, resid, u, n_out)


def normalize_log_weights(logw: np.ndarray) -> tuple[np.ndarray, float]:
    """Normalized weights from log-weights, by log-sum-exp (no underflow).

    Parameters
    ----------
    logw : ndarray, shape (N,)
        Unnormalized log-weights; ``-inf`` marks an impossible particle.

    Returns
    -------
    w : ndarray, shape (N,)
        ``exp(logw - log_normalizer)``, summing to 1.
    log_normalizer : float
        ``log(sum(exp(logw)))``, computed without overflow or underflow.

    Raises
    ------
    ValueError
        If ``logw`` contains NaN or ``+inf``, or every entry is ``-inf`` (every
        particle impossible: the error suggests likelihood tempering).
    """
    arr = np.asarray(logw)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"logw must be a real numeric array (got dtype {arr.dtype})")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"logw must have shape (N,) with N >= 1 (got {arr.shape})")
    arr = np.asarray(arr, dtype=np.float64)
    if np.isnan(arr).any() or (arr == np.inf).any():
        raise ValueError("logw must not contain NaN or +inf (a log-likelihood was not "
                         "computed correctly)")
    top = float(arr.max())
    if top == -np.inf:
        raise ValueError("every particle has zero weight (all log-weights are -inf): the "
                         "observation is impossible under every particle; use likelihood "
                         "tempering (ParticleFilter(temper=True)), a larger observation-error "
                         "covariance R, or check the observations")
    w = np.exp(arr - top)
    s = float(w.sum())
    w /= s
    return w, top + float(np.log(s))


def ess(w: np.ndarray) -> float:
    """Effective sample size ``(sum w)^2 / sum w^2`` (a count between 1 and N).

    Invariant to the scale of ``w``, so unnormalized weights are accepted.

    Raises
    ------
    ValueError
        If ``w`` is not a finite, non-negative 1-D array with a positive sum.
    """
    arr = _check_weights(w, "w")
    arr = arr / arr.max()
    s = float(arr.sum())
    return s * s / float(arr @ arr)
