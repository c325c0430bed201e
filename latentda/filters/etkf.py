"""The ensemble transform Kalman filter (deterministic, symmetric square root)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentda.filters.base import (
    EnsembleFilter,
    Geometry,
    Observation,
    batched_transforms,
    sqrt_transform,
    whitened_innovations,
)

__all__ = ["ETKF"]


@dataclass
class ETKF(EnsembleFilter):
    """Ensemble transform Kalman filter (Bishop et al. 2001; Hunt et al. 2007).

    Works in ensemble space: with ``Y`` the whitened observation anomalies
    ``(HE - mean) R^{-1/2}`` (shape ``(N, m)``), it decomposes the ``N x N`` matrix
    ``C = Y Y^T + (N-1) I`` once. The mean moves by the Kalman update with the
    ensemble covariance and the anomalies are transformed by the symmetric square
    root ``T = sqrt(N-1) C^{-1/2}``; the ones-vector is an eigenvector of ``T``
    (eigenvalue 1), so the transform preserves the mean and the analysis anomalies
    sum to zero. When ``m < N`` the equivalent ``m x m`` problem is decomposed
    instead (see :func:`~latentda.filters.base.batched_transforms`). Analysis anomalies
    are then multiplied by ``inflation``.

    Parameters
    ----------
    inflation : float
        Post-analysis multiplicative inflation, >= 1.

    Examples
    --------
    >>> ETKF(inflation=1.02)
    ETKF(inflation=1.02)
    """

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        Yw, dyw = whitened_innovations(HE, obs)
        N, m = Yw.shape
        if m >= N:
            Ea = sqrt_transform(E, Yw, dyw, self.inflation)
        else:  # fewer observations than members: decompose the m x m Gram matrix instead
            xbar = E.mean(axis=0)
            W = batched_transforms(Yw[None], dyw[None], N - 1.0, self.inflation, "obs")[0]
            Ea = W @ (E - xbar)
            Ea += xbar
        return Ea, {"inflation": self.inflation}
