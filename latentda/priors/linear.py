"""Linear-Gaussian (probabilistic PCA) prior: ``x = W z + b + eta``.

``z ~ N(0, I_k)``, ``eta ~ N(0, sigma2 I_n)``, so the marginal of ``x`` is the
Gaussian ``N(b, W W^T + sigma2 I)`` (Tipping & Bishop 1999) and every quantity
is analytic: the reference against which the nonlinear priors and the latent
filters are tested.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from latentda.priors.prior_base import Prior, register


@register
class LinearGaussianPrior(Prior):
    """``G(z) = W z + b`` with isotropic residual variance ``sigma2``.

    Parameters
    ----------
    state_dim, latent_dim : int
        ``n`` and ``k`` (``k <= n``).
    sigma2 : float
        Residual (off-manifold) variance; 0 makes ``G`` exactly invertible on its range.
    dtype : str
        ``float32`` (default) or ``float64``.
    """

    family = "linear"

    def __init__(self, state_dim: int, latent_dim: int, sigma2: float = 0.0,
                 dtype: str = "float32") -> None:
        super().__init__(state_dim, latent_dim, getattr(torch, dtype))
        if latent_dim > state_dim:
            raise ValueError(f"latent_dim ({latent_dim}) must be <= state_dim ({state_dim})")
        if not (sigma2 >= 0 and math.isfinite(sigma2)):
            raise ValueError(f"sigma2 must be finite and >= 0 (got {sigma2})")
        self.register_buffer("W", torch.zeros(state_dim, latent_dim, dtype=self.dtype))
        self.register_buffer("b", torch.zeros(state_dim, dtype=self.dtype))
        self.register_buffer("sigma2", torch.tensor(float(sigma2), dtype=self.dtype))
        self._dtype_name = dtype

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "latent_dim": self.latent_dim,
                "sigma2": float(self.sigma2), "dtype": self._dtype_name}

    @classmethod
    def fit(cls, X: np.ndarray, latent_dim: int, dtype: str = "float32") -> LinearGaussianPrior:
        """Maximum-likelihood PPCA of data ``X`` (N, n) (Tipping & Bishop, eq. 7-8)."""
        X = np.asarray(X, dtype=np.float64)
        N, n = X.shape
        if not 1 <= latent_dim <= n:
            raise ValueError(f"latent_dim must be in [1, {n}] (got {latent_dim})")
        mean = X.mean(axis=0)
        C = np.cov(X, rowvar=False, ddof=0).reshape(n, n)
        lam, U = np.linalg.eigh(C)
        lam, U = lam[::-1], U[:, ::-1]
        sigma2 = float(lam[latent_dim:].mean()) if latent_dim < n else 0.0
        W = U[:, :latent_dim] * np.sqrt(np.maximum(lam[:latent_dim] - sigma2, 0.0))
        prior = cls(n, latent_dim, sigma2, dtype)
        with torch.no_grad():
            prior.W.copy_(torch.as_tensor(W))
            prior.b.copy_(torch.as_tensor(mean))
        return prior

    def decode_t(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T + self.b

    def encode_t(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of ``z`` given ``x``: ``(W^T W + sigma2 I)^-1 W^T (x - b)``."""
        M = self.W.T @ self.W + self.sigma2 * torch.eye(self.latent_dim, dtype=self.dtype,
                                                        device=self.W.device)
        return torch.linalg.solve(M, ((x - self.b) @ self.W).T).T

    def covariance(self) -> np.ndarray:
        """The marginal covariance ``W W^T + sigma2 I`` of ``x`` (float64)."""
        W = self.W.detach().cpu().double().numpy()
        return W @ W.T + float(self.sigma2) * np.eye(self.state_dim)

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        C = torch.as_tensor(self.covariance(), dtype=torch.float64, device=x.device)
        L = torch.linalg.cholesky(C)
        d = (x.double() - self.b.double()).T
        sol = torch.linalg.solve_triangular(L, d, upper=False)
        logdet = 2.0 * torch.log(torch.diagonal(L)).sum()
        return -0.5 * ((sol * sol).sum(0) + logdet + self.state_dim * math.log(2 * math.pi))

    @property
    def residual_cov(self) -> np.ndarray:
        """Covariance of ``x - G(E(x))`` under the prior (analytic for PPCA).

        With ``P = W M^-1 W^T`` the reconstruction operator, the residual
        ``(I - P)(x - b)`` has covariance ``(I - P) C (I - P)^T``. This overrides the
        measured covariance of the base class: :meth:`fit_residual` still records the
        sample statistics (``res_cov``, :attr:`residual_mean`), but this stays analytic.
        """
        W = self.W.detach().cpu().double().numpy()
        s2 = float(self.sigma2)
        M = W.T @ W + s2 * np.eye(self.latent_dim)
        P = W @ np.linalg.solve(M, W.T)
        Q = np.eye(self.state_dim) - P
        return Q @ self.covariance() @ Q.T
