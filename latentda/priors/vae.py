"""Variational autoencoder prior (Kingma & Welling 2014) with a Gaussian decoder.

Model, on standardized states ``u = (x - shift) / scale``::

    z ~ N(0, I_k),   u | z ~ N(g(z), diag(s2)),   q(z | u) = N(mu(u), diag(sigma2(u)))

``decode(z) = G(z) = denormalize(g(z))`` (the decoder mean), ``encode(x) = mu(u)``.
The bounds on ``log p(x)`` are in *physical* units: the change of variables
adds ``-sum(log scale)``.

- ``elbo(X, n_samples)``: ``E_q[log p(u|z)] - KL(q || p) - sum(log scale)``, the
  KL in closed form (diagonal Gaussians), the first term by Monte Carlo;
- ``iwae(X, K)``: the importance-weighted bound of Burda et al. (2016),
  ``E[log (1/K) sum_k p(u, z_k) / q(z_k|u)]``; non-decreasing in ``K``, equal to
  the ELBO's expectation at ``K = 1``;
- ``kl_per_dim(X)`` and ``active_units(X)``: the posterior-collapse diagnostics
  (average KL per latent coordinate; coordinates whose posterior mean varies
  across the data, ``Var_x[mu_j(x)] > 0.01``).

``beta`` weighs the KL in the training loss (``beta = 1``: the ELBO). The decoder
variance is learned: one scalar (``decoder_var="scalar"``, the default, which
respects translation symmetry) or one per variable (``"diagonal"``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from latentda.priors.nets import check_arch, decoder_net, encoder_net
from latentda.priors.prior_base import Prior, register

LOG2PI = math.log(2.0 * math.pi)


@register
class VAEPrior(Prior):
    """Gaussian VAE (see the module docstring).

    Parameters
    ----------
    state_dim, latent_dim : int
    arch : dict
        Encoder/decoder architecture (:func:`latentda.priors.nets.check_arch`).
    beta : float
        KL weight of the training loss (> 0).
    kl_warmup : int
        Optimizer steps over which the KL weight ramps linearly from 0 to ``beta``
        (KL annealing, Bowman et al. 2016; 0: none). The decoder first learns to
        reconstruct, then the posterior is pulled towards the prior.
    decoder_var : {"scalar", "diagonal"}
        Learned decoder variance: one value, or one per variable.
    dtype : str
        ``float32`` (default) or ``float64``.
    """

    family = "vae"

    def __init__(self, state_dim: int, latent_dim: int, arch: dict[str, Any] | None = None,
                 beta: float = 1.0, decoder_var: str = "scalar", kl_warmup: int = 0,
                 dtype: str = "float32") -> None:
        super().__init__(state_dim, latent_dim, getattr(torch, dtype))
        self.arch = check_arch(arch or {"kind": "mlp"}, state_dim)
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be finite and > 0 (got {beta})")
        if decoder_var not in ("scalar", "diagonal"):
            raise ValueError(f"decoder_var must be 'scalar' or 'diagonal' (got {decoder_var!r})")
        if int(kl_warmup) < 0:
            raise ValueError(f"kl_warmup must be >= 0 steps (got {kl_warmup})")
        self.beta, self.decoder_var, self._dtype_name = float(beta), decoder_var, dtype
        self.kl_warmup = int(kl_warmup)
        self._kl_weight = self.beta
        self.encoder = encoder_net(self.arch, state_dim, 2 * latent_dim)
        self.decoder = decoder_net(self.arch, latent_dim, state_dim)
        if hasattr(self.encoder, "attach"):   # shift2d: candidate centres need the decoder
            self.encoder.attach(self.decoder, self)
        self.dec_logvar = nn.Parameter(torch.full((1 if decoder_var == "scalar" else state_dim,),
                                                  -2.0))
        self.to(self.dtype)

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "latent_dim": self.latent_dim, "arch": self.arch,
                "beta": self.beta, "decoder_var": self.decoder_var, "kl_warmup": self.kl_warmup,
                "dtype": self._dtype_name}

    @torch.no_grad()
    def initialize_from_data(self, X: np.ndarray) -> float | None:
        """Fit the data-dependent parts of the networks (the ``shift2d`` basis) to
        physical training states; the normalization must already be set. Returns the
        fraction of the centred variance the basis leaves out (``None``: nothing fitted)."""
        if not hasattr(self.decoder, "initialize_from_data"):
            return None
        u = self.normalize(torch.as_tensor(np.asarray(X), dtype=self.dtype,
                                           device=self.device))
        return self.decoder.initialize_from_data(u, self.encoder)

    # ------------------------------------------------------------------ maps
    def posterior_t(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | x)`` for physical states."""
        return self._posterior_n(self.normalize(x))

    def _posterior_n(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(u)
        mu, logvar = h[:, :self.latent_dim], h[:, self.latent_dim:]
        # bounded values, but the gradient of the unbounded one (straight through): a hard
        # clamp has no gradient, so a log-variance that overshot 20 in one step stayed
        # there for ever with a KL of 0.5 e^20 = 2.4e8 (measured)
        return mu, logvar + (logvar.clamp(-30.0, 20.0) - logvar).detach()

    def decode_t(self, z: torch.Tensor) -> torch.Tensor:
        return self.denormalize(self.decoder(z))

    def encode_t(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior_t(x)[0]

    # ------------------------------------------------------------------ bounds
    def _log_lik_n(self, u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``log N(u; g, diag(s2))`` summed over variables; broadcasts leading dims."""
        lv = self.dec_logvar.expand(self.state_dim)
        return -0.5 * (((u - g) ** 2) * torch.exp(-lv) + lv + LOG2PI).sum(-1)

    @staticmethod
    def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``KL(N(mu, diag e^logvar) || N(0, I))`` per coordinate (closed form)."""
        return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar)

    def _log_jac(self) -> torch.Tensor:
        return torch.log(self.scale.double()).sum()

    def elbo_t(self, x: torch.Tensor, n_samples: int = 1,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Monte-Carlo ELBO per state (closed-form KL), physical units."""
        u = self.normalize(x)
        mu, logvar = self._posterior_n(u)
        eps = torch.randn((int(n_samples), *mu.shape), generator=generator, dtype=mu.dtype,
                          device="cpu").to(mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = self._log_lik_n(u, self.decoder(z.reshape(-1, self.latent_dim)).reshape(
            int(n_samples), *u.shape)).mean(0)
        return rec.double() - self._kl(mu, logvar).sum(-1).double() - self._log_jac()

    def iwae_t(self, x: torch.Tensor, K: int, generator: torch.Generator | None = None,
               ) -> torch.Tensor:
        """IWAE-K bound per state, physical units."""
        u = self.normalize(x)
        mu, logvar = self._posterior_n(u)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((int(K), *mu.shape), generator=generator, dtype=mu.dtype,
                          device="cpu").to(mu.device)
        z = mu + std * eps
        log_pxz = self._log_lik_n(u, self.decoder(z.reshape(-1, self.latent_dim)).reshape(
            int(K), *u.shape))
        log_pz = -0.5 * (z * z + LOG2PI).sum(-1)
        log_q = -0.5 * (eps * eps + logvar + LOG2PI).sum(-1)
        lw = (log_pxz + log_pz - log_q).double()
        return torch.logsumexp(lw, 0) - math.log(int(K)) - self._log_jac()

    @torch.no_grad()
    def elbo(self, X: np.ndarray, n_samples: int = 1, seed: int = 0) -> np.ndarray:
        """ELBO per state ``(N,)`` (nats, physical units), ``n_samples`` MC draws."""
        g = torch.Generator().manual_seed(int(seed))
        return self._batched(lambda t: self.elbo_t(t, n_samples, g), X, self.state_dim, "X",
                             int(n_samples))

    @torch.no_grad()
    def iwae(self, X: np.ndarray, K: int = 50, seed: int = 0) -> np.ndarray:
        """IWAE-K lower bound on ``log p(x)`` per state ``(N,)``."""
        if int(K) < 1:
            raise ValueError(f"K must be >= 1 (got {K})")
        g = torch.Generator().manual_seed(int(seed))
        return self._batched(lambda t: self.iwae_t(t, int(K), g), X, self.state_dim, "X",
                             int(K))

    @torch.no_grad()
    def kl_per_dim(self, X: np.ndarray) -> np.ndarray:
        """Average ``KL(q(z_j|x) || N(0,1))`` per latent coordinate over ``X``, ``(k,)``."""
        kl = self._batched(lambda t: self._kl(*self.posterior_t(t)), X, self.state_dim, "X")
        return kl.mean(0)

    @torch.no_grad()
    def active_units(self, X: np.ndarray, threshold: float = 0.01) -> int:
        """Latent coordinates whose posterior mean varies over ``X``: ``Var_x mu_j > threshold``."""
        mu = self.encode(X)
        return int((mu.var(axis=0, ddof=1) > threshold).sum())

    # ------------------------------------------------------------------ training
    def training_loss(self, xn: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        mu, logvar = self._posterior_n(xn)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = self._log_lik_n(xn, self.decoder(z)).mean()
        kl = self._kl(mu, logvar).sum(-1).mean()
        return -(rec - self._kl_weight * kl), {"rec": float(rec.detach()),
                                               "kl": float(kl.detach())}

    def train_step(self, xn: torch.Tensor, optimizers: list[torch.optim.Optimizer],
                   step: int) -> dict[str, float]:
        ramp = min(1.0, step / self.kl_warmup) if self.kl_warmup else 1.0
        self._kl_weight = self.beta * ramp
        try:
            return super().train_step(xn, optimizers, step)
        finally:
            self._kl_weight = self.beta

    @torch.no_grad()
    def validation_metrics(self, X: np.ndarray) -> dict[str, float]:
        out = super().validation_metrics(X)
        out["elbo"] = float(self.elbo(X, 1).mean())
        out["active_units"] = float(self.active_units(X))
        return out
