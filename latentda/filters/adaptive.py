"""ETKF with adaptive prior inflation estimated from innovation statistics.

Each analysis estimates the multiplicative covariance inflation ``rho`` that
makes the innovations consistent, ``E[d^T R^-1 d] = rho tr(R^-1 H P H^T) + m``
(Desroziers et al. 2005; Li, Kalnay & Miyoshi 2009), and combines it with the
previous cycle's value as a Gaussian prior (Miyoshi 2011):

``rho_o = (d^T R^-1 d - m) / tr(R^-1 H P H^T)``,
``v_o = (2 / m) ((rho_b tr(R^-1 H P H^T) + m) / tr(R^-1 H P H^T))^2``,
``rho_a = (rho_b v_o + rho_o v_b) / (v_b + v_o)``,

with ``v_b`` the fixed variance of the inflation prior (0.04^2 in Miyoshi 2011).
The forecast anomalies are multiplied by ``sqrt(rho_a)`` before a standard
ETKF analysis. The filter therefore carries state from cycle to cycle
(:attr:`AdaptiveETKF.rho`); it is exposed, recorded as ``inflation`` in the
analysis info, and can be set to resume a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latentda._validate import check_float
from latentda.filters.base import (
    EnsembleFilter,
    Geometry,
    Observation,
    sqrt_transform,
    whitened_innovations,
)

__all__ = ["AdaptiveETKF", "innovation_inflation_estimate"]


def innovation_inflation_estimate(Yw: np.ndarray, dyw: np.ndarray) -> tuple[float, float]:
    """The innovation-based estimate of covariance inflation and the trace it uses.

    Parameters
    ----------
    Yw : ndarray, shape (N, m)
        Whitened observation anomalies ``(HE - mean) R^{-1/2}``.
    dyw : ndarray, shape (m,)
        Whitened innovation ``(y - mean(HE)) R^{-1/2}``.

    Returns
    -------
    (rho_o, trace)
        ``rho_o = (|dyw|^2 - m) / trace`` with ``trace = tr(R^-1 H P H^T)``.
    """
    N, m = Yw.shape
    trace = float(np.sum(Yw * Yw)) / (N - 1)
    return (float(dyw @ dyw) - m) / trace, trace


@dataclass
class AdaptiveETKF(EnsembleFilter):
    """ETKF whose prior inflation adapts to the innovations (no tuning needed).

    Parameters
    ----------
    rho0 : float
        Initial covariance inflation (>= 1).
    prior_var : float
        Variance ``v_b`` of the Gaussian prior on the inflation at each cycle
        (Miyoshi 2011: 0.04^2); larger adapts faster and noisier.
    min_rho, max_rho : float
        Bounds of the covariance inflation (``min_rho`` below 1 allows deflation).
    inflation : float
        Extra fixed post-analysis inflation of the anomalies (default 1: none).
    """

    rho0: float = 1.0
    prior_var: float = 0.04**2
    min_rho: float = 1.0
    max_rho: float = 4.0
    rho: float = field(default=float("nan"), init=False, repr=False, compare=False)

    def _validate_params(self) -> None:
        super()._validate_params()
        self.rho0 = check_float("rho0", self.rho0, min_value=1.0)
        self.prior_var = check_float("prior_var", self.prior_var, positive=True)
        self.min_rho = check_float("min_rho", self.min_rho, positive=True)
        self.max_rho = check_float("max_rho", self.max_rho, min_value=self.min_rho)
        if not np.isfinite(self.rho):
            self.rho = min(max(self.rho0, self.min_rho), self.max_rho)

    def get_state(self) -> dict[str, float]:
        """The current covariance inflation ``rho`` (carried from cycle to cycle)."""
        return {"rho": float(self.rho)}

    def set_state(self, state: dict[str, float]) -> None:
        """Restore ``rho`` (e.g. when resuming a run)."""
        self.rho = check_float("state['rho']", state["rho"], positive=True)

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        Yw, dyw = whitened_innovations(HE, obs)
        m = Yw.shape[1]
        rho_b = self.rho
        rho_o, trace = innovation_inflation_estimate(Yw, dyw)
        if trace > 0 and np.isfinite(rho_o):
            v_o = (2.0 / m) * ((rho_b * trace + m) / trace) ** 2
            rho_a = (rho_b * v_o + rho_o * self.prior_var) / (self.prior_var + v_o)
            self.rho = float(min(max(rho_a, self.min_rho), self.max_rho))
        Ea = sqrt_transform(E, Yw, dyw, self.inflation, prior_inflation=float(np.sqrt(self.rho)))
        return Ea, {"inflation": float(np.sqrt(self.rho)) * self.inflation,
                    "rho_observed": float(rho_o)}
