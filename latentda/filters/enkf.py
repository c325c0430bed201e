"""The stochastic ensemble Kalman filter with perturbed observations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentda.filters.base import EnsembleFilter, Geometry, Observation, record_jitter

__all__ = ["EnKF"]


def perturbed_obs_update(E: np.ndarray, HE: np.ndarray, obs: Observation, Z: np.ndarray,
                         form: str | None = None) -> np.ndarray:
    """Stochastic EnKF update with given whitened observation perturbations.

    Each member ``i`` moves by ``K (y + D_i - HE_i)`` with the ensemble gain
    ``K = A^T Y (Y^T Y + (N-1) R)^{-1}`` and ``D_i = Z_i R^{1/2}``. In whitened
    variables (``Yw = Y R^{-1/2}``, ``Dw = Z``) the update is solved either in
    observation space (an ``m x m`` system, ``form="obs"``) or in ensemble space
    (``N x N``, ``form="ens"``); by default the smaller one.

    Parameters
    ----------
    E : ndarray, shape (N, d)
    HE : ndarray, shape (N, m)
    obs : Observation
    Z : ndarray, shape (N, m)
        Perturbations in whitened units (standard normal draws, possibly centred).
    form : {"obs", "ens", None}

    Returns
    -------
    ndarray, shape (N, d)
    """
    N, m = HE.shape
    N1 = N - 1.0
    xbar = E.mean(axis=0)
    A = E - xbar
    ybar = HE.mean(axis=0)
    Yw = obs.whiten(HE - ybar)
    innov = obs.whiten(obs.y - HE) + Z  # (N, m): whitened y + D_i - HE_i
    if form is None:
        form = "obs" if m <= N else "ens"
    if form == "obs":
        S = Yw.T @ Yw
        S.flat[:: m + 1] += N1
        lam, U = np.linalg.eigh(S)  # eigenvalues >= N1 mathematically
        record_jitter(N1 - float(lam[0]))
        np.maximum(lam, N1, out=lam)
        G = Yw.T @ A  # (m, d)
        coef = ((innov @ U) / lam) @ U.T  # (N, m): innov S^{-1}
        return E + coef @ G
    if form == "ens":
        C = Yw @ Yw.T
        C.flat[:: N + 1] += N1
        lam, V = np.linalg.eigh(C)
        record_jitter(N1 - float(lam[0]))
        np.maximum(lam, N1, out=lam)
        Wt = ((innov @ Yw.T) @ V / lam) @ V.T  # (N, N): innov Yw^T C^{-1}
        return E + Wt @ A
    raise ValueError(f"form must be 'obs', 'ens' or None (got {form!r})")


@dataclass
class EnKF(EnsembleFilter):
    """Stochastic EnKF with perturbed observations (Burgers et al. 1998; Evensen 2009).

    Each member assimilates ``y + D_i`` with ``D_i ~ N(0, R)`` drawn from ``rng``
    (``N * m`` standard normals per analysis). With ``center_perturbations`` the
    draws are centred over the members, so the analysis mean is exactly the Kalman
    mean update with the ensemble covariance (DAPPER's default); the centred
    perturbations still have expected sample covariance ``R``.

    Parameters
    ----------
    center_perturbations : bool
        Subtract the member mean of the perturbations.
    inflation : float
        Post-analysis multiplicative inflation, >= 1.
    """

    center_perturbations: bool = True
    stochastic = True

    def _validate_params(self) -> None:
        super()._validate_params()
        if not isinstance(self.center_perturbations, bool | np.bool_):
            raise ValueError(f"center_perturbations must be True or False "
                             f"(got {self.center_perturbations!r})")

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        assert rng is not None
        Z = rng.standard_normal(HE.shape)
        if self.center_perturbations:
            Z -= Z.mean(axis=0)
        Ea = perturbed_obs_update(E, HE, obs, Z)
        if self.inflation != 1.0:
            mu = Ea.mean(axis=0)
            Ea = mu + self.inflation * (Ea - mu)
        return Ea, {"inflation": self.inflation}
