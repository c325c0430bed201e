"""Skill and consistency diagnostics of an ensemble, per analysis time.

All functions take ensembles members-first, ``E`` of shape ``(N, n)``, and are
cheap enough to run every cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.linalg import solve_triangular

from latentda._validate import check_float


def rmse(mean: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square error of an estimate over the state variables."""
    d = np.asarray(mean, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean(d * d)))


def spread(E: np.ndarray) -> float:
    """Ensemble spread: the square root of the mean (over variables) ensemble variance.

    Uses the unbiased variance (``ddof=1``), so that for a reliable ensemble the
    expected spread matches the expected RMSE of the mean up to a factor
    ``sqrt((N + 1) / N)``.
    """
    E = np.asarray(E, dtype=np.float64)
    if E.shape[0] < 2:
        return float("nan")
    return float(np.sqrt(np.mean(np.var(E, axis=0, ddof=1))))


def crps(E: np.ndarray, truth: np.ndarray) -> float:
    """Continuous ranked probability score of the ensemble, averaged over variables.

    ``CRPS = E|X - y| - 0.5 E|X - X'|`` for the empirical ensemble distribution,
    computed in ``O(N log N)`` per variable from the sorted members.
    """
    E = np.asarray(E, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    N = E.shape[0]
    term1 = np.mean(np.abs(E - y), axis=0)
    xs = np.sort(E, axis=0)
    w = (2.0 * np.arange(1, N + 1) - N - 1.0)[:, None]
    term2 = np.sum(w * xs, axis=0) / (N * N)  # = 0.5 * E|X - X'|
    return float(np.mean(term1 - term2))


def rank_histogram(E: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Counts of the truth's rank among the members, over the variables.

    Returns
    -------
    ndarray of int64, shape (N + 1,)
        ``counts[r]`` = number of variables where exactly ``r`` members lie below
        the truth. Ties are broken at random-free midpoints (members equal to the
        truth count as half below), rounded down.
    """
    E = np.asarray(E, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    N = E.shape[0]
    below = np.sum(E < y, axis=0) + np.sum(E == y, axis=0) // 2
    return np.bincount(below, minlength=N + 1).astype(np.int64)


def _spd_solve(A: np.ndarray, b: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Solve ``A x = b`` for a symmetric positive-definite ``A``.

    Cholesky first (cheap); if round-off makes ``A`` numerically indefinite, an
    eigen-decomposition with floored eigenvalues (``floor``, default relative
    1e-14) so that degenerate ensembles never raise.
    """
    A = 0.5 * (A + A.T)
    try:
        L = np.linalg.cholesky(A)
        y = solve_triangular(L, b, lower=True, check_finite=False)
        return solve_triangular(L.T, y, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(A)
        lo = floor if floor is not None else max(w[-1], 0.0) * 1e-14 + 1e-300
        return V @ ((V.T @ b) / np.maximum(w, lo))


def innovation_statistics(HE: np.ndarray, y: np.ndarray, R: np.ndarray) -> tuple[float, float]:
    """Innovation RMS and the normalised innovation ``d^T (H P H^T + R)^{-1} d / m``.

    ``d = y - mean(HE)`` with ``H P H^T`` estimated from the forecast ensemble
    in observation space ``HE`` (N, m). For a consistent filter the normalised
    statistic has expectation about 1. With more observations than members and a
    diagonal ``R`` the inverse uses the Woodbury identity in ensemble space (cost
    ``O(m N^2)``), else the ``m x m`` matrix directly; both paths solve
    through a symmetric eigen-decomposition with floored eigenvalues, so nearly
    singular matrices (huge or collapsed ensembles) never raise.

    Returns
    -------
    (innovation_rms, normalised_innovation)
    """
    HE = np.asarray(HE, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    N, m = HE.shape
    d = y - HE.mean(axis=0)
    rms = float(np.sqrt(np.mean(d * d)))
    Y = (HE - HE.mean(axis=0)) / np.sqrt(max(N - 1, 1))
    R = np.asarray(R, dtype=np.float64)
    if m > N and np.count_nonzero(R - np.diag(np.diag(R))) == 0:
        rinv = 1.0 / np.diag(R)
        Yr = Y * rinv  # (N, m) = Y R^{-1}
        small = np.eye(N) + Yr @ Y.T  # symmetric, eigenvalues >= 1 in exact arithmetic
        u = Yr @ d
        chi2 = float(d @ (rinv * d) - u @ _spd_solve(small, u, floor=1.0))
    else:
        chi2 = float(d @ _spd_solve(Y.T @ Y + R, d))
    return rms, chi2 / m


@njit(cache=True, nogil=True)
def _summary_kernel(E, truth, has_truth, mean, std, ranks):  # pragma: no cover - compiled
    N, n = E.shape
    col = np.empty(N)
    var_sum = 0.0
    se_sum = 0.0
    crps_sum = 0.0
    for m in range(N + 1):
        ranks[m] = 0
    for j in range(n):
        s = 0.0
        for i in range(N):
            col[i] = E[i, j]
            s += col[i]
        mu = s / N
        ss = 0.0
        for i in range(N):
            d = col[i] - mu
            ss += d * d
        v = ss / (N - 1) if N > 1 else np.nan
        mean[j] = mu
        std[j] = np.sqrt(v)
        var_sum += v
        if has_truth:
            y = truth[j]
            e = mu - y
            se_sum += e * e
            col.sort()
            a = 0.0
            b = 0.0
            below = 0
            ties = 0
            for i in range(N):
                x = col[i]
                a += abs(x - y)
                b += (2.0 * (i + 1) - N - 1.0) * x
                if x < y:
                    below += 1
                elif x == y:
                    ties += 1
            crps_sum += a / N - b / (N * N)
            ranks[below + ties // 2] += 1
    spread = np.sqrt(var_sum / n)
    if not has_truth:
        return spread, np.nan, np.nan
    return spread, np.sqrt(se_sum / n), crps_sum / n


@dataclass
class EnsembleSummary:
    """One-pass statistics of an ensemble (and its skill when the truth is known).

    Attributes
    ----------
    mean, std : ndarray, shape (n,)
        Ensemble mean and standard deviation (``ddof=1``) per variable.
    spread, rmse, crps : float
        As :func:`spread`, :func:`rmse` (of the mean) and :func:`crps`; NaN without truth.
    ranks : ndarray of int64, shape (N + 1,)
        As :func:`rank_histogram` (zeros without truth).
    """

    mean: np.ndarray
    std: np.ndarray
    spread: float
    rmse: float
    crps: float
    ranks: np.ndarray


def ensemble_summary(E: np.ndarray, truth: np.ndarray | None = None) -> EnsembleSummary:
    """Mean, std, spread, RMSE, CRPS and rank counts in one compiled pass.

    Equal to the separate functions of this module (to round-off); used every
    cycle, where their many small numpy calls would dominate the cost.
    """
    E = np.ascontiguousarray(E, dtype=np.float64)
    N, n = E.shape
    mean, std = np.empty(n), np.empty(n)
    ranks = np.zeros(N + 1, dtype=np.int64)
    has = truth is not None
    y = np.ascontiguousarray(truth, dtype=np.float64) if has else np.zeros(n)
    spread_, rmse_, crps_ = _summary_kernel(E, y, has, mean, std, ranks)
    return EnsembleSummary(mean, std, float(spread_), float(rmse_), float(crps_), ranks)


def roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be larger for ``positives``.

    The Mann-Whitney statistic: the probability that a random positive scores above
    a random negative, ties counting one half. 1: perfect separation, 0.5: chance.

    Raises
    ------
    ValueError
        If either sample is empty or not finite.
    """
    from scipy.stats import rankdata

    neg = np.asarray(negatives, dtype=np.float64).ravel()
    pos = np.asarray(positives, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError("negatives and positives must both be non-empty")
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise ValueError("negatives and positives must be finite (drop NaN cycles first)")
    r = rankdata(np.concatenate([neg, pos]))
    n1 = pos.size
    return float((r[neg.size:].sum() - n1 * (n1 + 1) / 2.0) / (neg.size * n1))


def windowed_chi2_scores(stat: np.ndarray, dof: np.ndarray | float, window: int) -> np.ndarray:
    """Chi-square tail probabilities of the sums of ``stat`` over trailing windows.

    ``stat[t]`` is a statistic that is ``chi2(dof[t])`` in distribution (e.g. ``m *
    ood_residual``), independent over ``t``; the score at ``t`` tests the sum over
    ``t - window + 1 .. t`` (fewer at the start) against ``chi2`` of the summed dof.
    NaN entries (no observation) count as absent.
    """
    from scipy.stats import chi2

    s = np.asarray(stat, dtype=np.float64)
    d = np.broadcast_to(np.asarray(dof, dtype=np.float64), s.shape).copy()
    if window < 1:
        raise ValueError(f"window must be >= 1 (got {window})")
    ok = np.isfinite(s)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, s, 0.0))])
    cd = np.concatenate([[0.0], np.cumsum(np.where(ok, d, 0.0))])
    idx = np.arange(s.size)
    lo = np.maximum(idx + 1 - window, 0)
    S, D = cs[idx + 1] - cs[lo], cd[idx + 1] - cd[lo]
    out = np.full(s.size, np.nan)
    good = D > 0
    out[good] = chi2.sf(S[good], D[good])
    return out


def cusum(z: np.ndarray, drift: float = 0.5) -> np.ndarray:
    """One-sided Page CUSUM ``S_t = max(0, S_{t-1} + z_t - drift)``, ``S_{-1} = 0``.

    ``z`` is a standardized statistic, about ``N(0, 1)`` in distribution (e.g. the
    innovation mean along a chosen direction divided by its standard deviation); a
    persistent shift of its mean by ``delta > drift`` makes ``S`` grow by about
    ``delta - drift`` per step, so an alarm ``S_t > h`` comes about
    ``h / (delta - drift)`` steps after the shift. NaN entries (no observation) leave
    ``S`` unchanged.

    Parameters
    ----------
    z : ndarray, shape (T,)
    drift : float
        Reference value ``k >= 0`` (half the shift to detect, in standard deviations).

    Returns
    -------
    ndarray, shape (T,)
    """
    drift = check_float("drift", drift, min_value=0.0)
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1:
        raise ValueError(f"z must be one-dimensional (got shape {z.shape})")
    S = np.empty(z.size)
    s = 0.0
    for t, v in enumerate(z):
        if np.isfinite(v):
            s = max(0.0, s + v - drift)
        S[t] = s
    return S


def cusum_tail(drift: float, h_max: float, nodes: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Stationary tail ``P(S > s)`` of the CUSUM of ``N(0, 1)`` statistics, on a grid.

    In distribution ``S_t = max(0, S_{t-1} + z_t - drift)`` with ``z_t ~ N(0, 1)`` is
    a Lindley recursion; for ``drift > 0`` it has a stationary law, that of the
    maximum of a random walk with increments ``N(-drift, 1)``. It is computed here
    for the walk rounded to the nearest of ``nodes + 1`` grid points on ``[0, h_max]``
    (mass beyond ``h_max`` is kept at it): the stationary vector of that Markov
    chain, by one linear solve. A grid point ``s_i`` stands for ``[s_i - delta / 2,
    s_i + delta / 2)``, ``delta = h_max / nodes``, so the tail is returned at the
    upper ends ``s_i + delta / 2``; rounding adds a variance ``delta^2 / 12`` per
    step.

    Parameters
    ----------
    drift : float
        The CUSUM's reference value ``k > 0``.
    h_max : float
        Upper end of the grid (choose it where the tail is negligible).
    nodes : int
        Grid intervals.

    Returns
    -------
    s, tail : ndarray, shape (nodes + 1,)
        Points ``s`` (the grid's cell ends) and ``P(S > s)`` at them.
    """
    from scipy.stats import norm

    drift = check_float("drift", drift, positive=True)
    h_max = check_float("h_max", h_max, positive=True)
    if int(nodes) < 10:
        raise ValueError(f"nodes must be >= 10 (got {nodes})")
    M = int(nodes)
    d = h_max / M
    i = np.arange(M + 1)
    diff = (i[None, :] - i[:, None]) * d + drift  # (target - source) + drift
    P = norm.cdf(diff + 0.5 * d) - norm.cdf(diff - 0.5 * d)
    P[:, 0] = norm.cdf(0.5 * d - i * d + drift)  # everything at or below 0 stays at 0
    P[:, -1] = norm.sf((M - 0.5) * d - i * d + drift)  # beyond the grid: kept at h_max
    A = P.T - np.eye(M + 1)
    A[-1, :] = 1.0  # the stationary vector sums to one
    b = np.zeros(M + 1)
    b[-1] = 1.0
    pi = np.clip(np.linalg.solve(A, b), 0.0, None)
    tail = np.append(np.cumsum(pi[::-1])[::-1][1:], 0.0)  # P(S > s_i) = sum_{j > i} pi_j
    return (i + 0.5) * d, tail / pi.sum()


def cusum_threshold(drift: float, level: float, two_sided: bool = False) -> float:
    """Threshold ``h`` of a CUSUM of ``N(0, 1)`` statistics at a per-cycle false-alarm level.

    ``h`` is where the stationary in-distribution law of :func:`cusum` has
    ``P(S > h) = level`` (:func:`cusum_tail`, interpolated log-linearly between grid
    points), so ``level`` is the long-run fraction of in-distribution cycles with
    ``S > h``. ``two_sided``: the upper and the lower CUSUM (of ``z`` and ``-z``)
    each get ``level / 2``; as they are rarely both positive, their union is flagged
    on a fraction just below ``level``.

    Parameters
    ----------
    drift : float
        Reference value ``k > 0``.
    level : float
        Per-cycle false-alarm probability, in (0, 1).
    two_sided : bool
        Whether the threshold serves a pair of CUSUMs (shifts of either sign).

    Returns
    -------
    float
    """
    drift = check_float("drift", drift, positive=True)
    level = check_float("level", level, positive=True, max_value=1.0)
    if level >= 1.0:
        raise ValueError(f"level must be < 1 (got {level})")
    a = level / 2.0 if two_sided else level
    # the tail decays about like exp(-2 drift s): the grid reaches well beyond the level
    h_max = (np.log(1.0 / a) + 8.0) / (2.0 * drift) + 4.0
    s, tail = cusum_tail(drift, h_max)
    if tail[0] <= a:  # P(S > 0) itself is about below the level: any positive S alarms
        return 0.0
    j = int(np.argmax(tail <= a))  # first grid point at or below the level
    lo, hi = np.log(tail[j - 1]), np.log(max(tail[j], 1e-300))
    frac = (lo - np.log(a)) / (lo - hi) if lo > hi else 0.0
    return float(s[j - 1] + frac * (s[j] - s[j - 1]))


def innovation_mean_z(HE: np.ndarray, y: np.ndarray, R: np.ndarray) -> float:
    """The innovation mean over the observations, in units of its predicted standard deviation.

    ``z = w^T d / sqrt(w^T (H P H^T + R) w)`` with ``d = y - mean(HE)``,
    ``w_i = 1 / (m sigma_i)`` (``sigma_i^2 = R_ii``: the mean of the innovations, each
    in units of its own observation-error standard deviation, so observations of
    different quantities and units can be pooled; the plain mean when all errors are
    alike) and ``H P H^T`` the covariance of the forecast ensemble in observation space
    ``HE`` (``ddof = 1``), as in :func:`innovation_statistics`. For an unbiased,
    consistent forecast ``z`` is about ``N(0, 1)``; a model error that moves every
    observed value the same way (a tendency bias) shifts its mean.

    Parameters
    ----------
    HE : ndarray, shape (N, m)
        Forecast ensemble in observation space.
    y : ndarray, shape (m,)
    R : ndarray, shape (m, m)
        Observation-error covariance.

    Returns
    -------
    float
    """
    HE = np.asarray(HE, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    N, m = HE.shape
    if y.shape != (m,) or R.shape != (m, m):
        raise ValueError(f"y must have shape ({m},) and R ({m}, {m}) for HE of shape "
                         f"{HE.shape} (got {y.shape}, {R.shape})")
    w = 1.0 / (m * np.sqrt(np.diag(R)))
    proj = HE @ w  # w^T (H x_i) per member
    var = float(w @ R @ w) + (float(np.var(proj, ddof=1)) if N > 1 else 0.0)
    return float((w @ y - proj.mean()) / np.sqrt(var))
