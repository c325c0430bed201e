"""The hybrid ETKF: ensemble covariance blended with a static background covariance.

The mean is updated with the hybrid covariance ``P = (1 - beta) P_ens + beta B``
(an ensemble-variational or "hybrid ETKF-3DVar" analysis, Wang et al. 2007);
the anomalies are transformed by the ensemble-only ETKF square root. ``B = S S^T``
comes from the space (:class:`~latentda.filters.base.Background`): a scaled
climatological covariance in state space, the generative prior's latent
covariance (and its off-manifold residual covariance) in latent space.

The columns of ``S`` are pushed through ``h`` as secants around the ensemble mean,
``HS_j = h(xbar + S_j) - h(xbar)``, all in one batched call of ``h`` (for a latent
space: one decoder call), so no derivative of ``h`` is needed; for linear ``h``
the secants are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentda._validate import check_float
from latentda.filters.base import (
    Background,
    EnsembleFilter,
    Geometry,
    Observation,
    record_jitter,
    sqrt_transform,
    whitened_innovations,
)

__all__ = ["HybridETKF"]


@dataclass
class HybridETKF(EnsembleFilter):
    """ETKF whose mean update blends the ensemble covariance with a static ``B``.

    With whitened ensemble anomalies ``Yw`` (``N x m``), whitened secants of the
    background columns ``HSw`` (``r x m``) and the augmented matrices
    ``Xh = [a A; b S^T]``, ``Yh = [a Yw; b HSw]`` (``a = sqrt((1-beta)/(N-1))``,
    ``b = sqrt(beta)``), the mean increment is the Kalman update with
    ``P = Xh^T Xh``: ``Xh^T (Yh Yh^T + I)^{-1} Yh dyw`` (or the equivalent
    ``m x m`` form when ``m < N + r``). The anomalies get the ETKF transform of
    the ensemble alone, times ``inflation``. ``beta = 0`` is the ETKF; ``beta = 1``
    is 3D-Var with covariance ``B`` for the mean.

    Parameters
    ----------
    beta : float
        Weight of the static covariance, in [0, 1].
    inflation : float
        Post-analysis multiplicative inflation of the anomalies, >= 1.

    Examples
    --------
    >>> HybridETKF(beta=0.4, inflation=1.05)
    HybridETKF(inflation=1.05, beta=0.4)
    """

    beta: float = 0.5
    needs_background = True

    def _validate_params(self) -> None:
        super()._validate_params()
        self.beta = check_float("beta", self.beta, min_value=0.0, max_value=1.0)

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 background: Background | None = None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        S = background.sqrt  # (d, r)
        N = E.shape[0]
        xbar = E.mean(axis=0)
        Yw, dyw = whitened_innovations(HE, obs)
        # the ensemble-only ETKF with no mean increment: dyw = 0
        Ea = sqrt_transform(E, Yw, np.zeros_like(dyw), self.inflation)
        a = np.sqrt((1.0 - self.beta) / (N - 1.0))
        b = np.sqrt(self.beta)
        if self.beta > 0.0:
            pts = np.vstack([xbar[None, :], xbar[None, :] + S.T])
            Hp = self._observe(obs, pts)
            HSw = obs.whiten(Hp[1:] - Hp[0])  # (r, m)
            Xh = np.vstack([a * (E - xbar), b * S.T])  # (N + r, d)
            Yh = np.vstack([a * Yw, b * HSw])  # (N + r, m)
        else:
            Xh, Yh = a * (E - xbar), a * Yw
        M, m = Yh.shape
        if m < M:  # (Yh^T Yh + I)^{-1} dyw in observation space
            C = Yh.T @ Yh
            C.flat[:: m + 1] += 1.0
            lam, V = np.linalg.eigh(C)
            record_jitter(1.0 - float(lam[0]))
            np.maximum(lam, 1.0, out=lam)
            g = Yh @ (V @ ((V.T @ dyw) / lam))
        else:
            C = Yh @ Yh.T
            C.flat[:: M + 1] += 1.0
            lam, V = np.linalg.eigh(C)
            record_jitter(1.0 - float(lam[0]))
            np.maximum(lam, 1.0, out=lam)
            g = V @ ((V.T @ (Yh @ dyw)) / lam)
        Ea += g @ Xh
        return Ea, {"inflation": self.inflation}
