"""The finite-size ensemble Kalman filter, EnKF-N (dual form)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from latentda.filters.base import (
    EnsembleFilter,
    Geometry,
    Observation,
    ensemble_eigh,
    sqrt_transform,
    whitened_innovations,
)

__all__ = ["EnKF_N", "hyperprior_coeffs", "dual_cost", "solve_dual"]


def hyperprior_coeffs(s2: np.ndarray, N: int) -> tuple[float, float]:
    """Coefficients ``(eN, cL)`` of the EnKF-N dual cost (Jeffreys hyperprior, g = 0).

    ``eN = (N+1)/N`` (effect of the unknown mean) and ``cL = N/(N-1)`` (log term),
    with the mode correction of Bocquet, Raanes & Hannart (2015, eq. 36) as in
    DAPPER: both are adjusted by ``mc = sqrt(prior_mode ** I_KH)`` where
    ``prior_mode = eN / cL`` and ``I_KH = mean((N-1) / (s2 + N-1))`` is the prior's
    weight, so the inflation tends to 1 as the observations become uninformative.

    Parameters
    ----------
    s2 : ndarray, shape (N,)
        Eigenvalues of ``Yw Yw^T`` (squared singular values of the whitened
        observation anomalies, padded with zeros to length N).
    N : int
        Ensemble size.
    """
    N1 = N - 1.0
    eN = (N + 1.0) / N
    cL = N / N1
    prior_mode = eN / cL
    i_kh = float(np.mean(N1 / (s2 + N1)))
    mc = math.sqrt(prior_mode**i_kh)
    return eN / mc, cL * mc


def dual_cost(l1: float | np.ndarray, s2: np.ndarray, c2: np.ndarray, N: int, eN: float,
              cL: float) -> np.ndarray:
    """Dual EnKF-N cost as a function of the prior inflation ``l1`` (up to a constant).

    ``J(l) = sum_i du_i^2 / (l^2 s_i^2 + N-1) + eN / l^2 + cL log l^2`` where
    ``du = U^T dyw`` from the SVD ``Yw = V S U^T``. With ``c_i = s_i du_i`` (the
    components of ``V^T Yw dyw``) the data term equals
    ``const - (l^2 / (N-1)) sum_i c_i^2 / (l^2 s_i^2 + N-1)``, which needs no division
    by ``s_i`` and is what is returned (plus the hyperprior terms).
    """
    N1 = N - 1.0
    l2 = np.asarray(l1, dtype=np.float64) ** 2
    data = -(l2 / N1) * np.sum(c2 / (np.multiply.outer(l2, s2) + N1), axis=-1)
    return data + eN / l2 + cL * np.log(l2)


def solve_dual(s2: np.ndarray, c2: np.ndarray, N: int, eN: float, cL: float,
               xtol: float = 1e-10, maxiter: int = 100) -> tuple[float, int]:
    """Minimise the dual cost over ``l1 > 0``; return ``(l1, iterations)``.

    Newton's method on ``J'(l) = 0`` from ``l = 1`` (as DAPPER), safeguarded: a
    step is accepted only when ``J'' > 0`` and it keeps ``l`` positive; otherwise,
    or without convergence, a bounded scalar minimisation over ``log l`` is used.
    ``J -> +inf`` at both ends of ``(0, inf)``, so a minimiser exists.
    """
    N1 = N - 1.0
    s2c2 = s2 * c2
    l = 1.0
    for it in range(1, maxiter + 1):
        inv = 1.0 / (l * l * s2 + N1)
        q = c2 * inv * inv
        sq = float(q.sum())
        l2, l3 = l * l, l * l * l
        g = -2.0 * l * sq - 2.0 * eN / l3 + 2.0 * cL / l  # J'(l)
        h = (-2.0 * sq + 8.0 * l2 * float(np.dot(s2c2 * inv, inv * inv))
             + 6.0 * eN / (l2 * l2) - 2.0 * cL / l2)  # J''(l)
        if not (h > 0 and math.isfinite(g) and math.isfinite(h)):
            break
        step = g / h
        if l - step <= 0:
            break
        l -= step
        if abs(step) <= xtol * l:
            return l, it
    # fallback: robust bounded minimisation in log(l)
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda t: float(dual_cost(math.exp(t), s2, c2, N, eN, cL)),
                          bounds=(-20.0, 20.0), method="bounded",
                          options={"xatol": 1e-10, "maxiter": 500})
    return math.exp(float(res.x)), maxiter + int(res.nfev)


@dataclass
class EnKF_N(EnsembleFilter):  # noqa: N801 - the method's published name
    """Finite-size EnKF (Bocquet 2011; Bocquet, Raanes & Hannart 2015), dual form.

    The prior covariance is treated as unknown, with a Jeffreys hyperprior; the
    resulting analysis is an ETKF with the *prior* anomalies inflated by a factor
    ``l1`` that minimises a scalar dual cost (see :func:`dual_cost`), so there is
    no inflation to tune (DAPPER's ``EnKF_N`` with ``xN=1``, ``g=0``, ``dual=True``).
    ``info["inflation"]`` is the estimated ``l1``; ``info["post_inflation"]`` the
    (normally 1) post-analysis factor ``inflation``.

    Parameters
    ----------
    inflation : float
        Additional post-analysis multiplicative inflation, >= 1 (normally 1).
    """

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        N = E.shape[0]
        N1 = N - 1.0
        Yw, dyw = whitened_innovations(HE, obs)
        lam, V = ensemble_eigh(Yw, N1)  # lam = s^2 + N1
        s2 = np.maximum(lam - N1, 0.0)
        c = (Yw @ dyw) @ V  # c_i = s_i du_i
        c2 = c * c
        eN, cL = hyperprior_coeffs(s2, N)
        l1, iters = solve_dual(s2, c2, N, eN, cL)
        lam_l = l1 * l1 * s2 + N1
        Ea = sqrt_transform(E, Yw, dyw, self.inflation, prior_inflation=l1, eig=(lam_l, V))
        return Ea, {"inflation": l1, "post_inflation": self.inflation,
                    "dual_iterations": float(iters)}
