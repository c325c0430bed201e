"""Wasserstein GAN with gradient penalty (WGAN-GP, Gulrajani et al. 2017).

Model, on standardized states ``u = (x - shift) / scale``::

    z ~ N(0, I_k),   u = g(z),   x = G(z) = denormalize(g(z))

The generator ``g`` is :func:`~latentda.priors.nets.decoder_net` and the critic
``f`` is :func:`~latentda.priors.nets.encoder_net` with one output (no
normalization layers, so the gradient penalty is a per-sample quantity). The
critic maximises ``E f(u_data) - E f(g(z))`` under the two-sided penalty
``gp_weight * E (||grad f(u_hat)|| - 1)^2`` on random interpolates ``u_hat``
between data and generated states (see :func:`gradient_penalty`), plus an
optional drift term ``drift * E f(u_data)^2`` (Karras et al. 2018) that keeps its
values anchored near zero; the generator minimises ``-E f(g(z))``.

The family has no encoder: ``encode(x)`` is the projection
``argmin_z ||(x - G(z)) / scale||^2 + lam ||z||^2`` by Adam with a fixed budget
(:meth:`Prior.project_t`), batched over the ensemble, optionally from the best of
several seeded starting codes (the same starts for every member, so a member's
code only depends on its own state).

The critic is exposed as a learned regularizer for analysis methods:
:meth:`WGANPrior.critic_t` (physical tensors, differentiable) and the numpy
:meth:`WGANPrior.critic` / :meth:`WGANPrior.critic_grad`. Higher values mean
"more like the climatology"; the critic is (approximately) 1-Lipschitz in
standardized units, so ``-critic`` is a penalty of bounded slope.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from latentda.priors.nets import check_arch, decoder_net, encoder_net
from latentda.priors.prior_base import Prior, register

VAL_METRICS = ("recon", "sliced_wasserstein")


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Two-sided gradient penalty ``E (||grad_u f(u_hat)||_2 - 1)^2``.

    ``u_hat = alpha * real + (1 - alpha) * fake`` with one ``alpha ~ U(0, 1)`` per
    sample (or the given ``alpha``, shape ``(B, 1)``). The result is differentiable
    with respect to the critic's parameters (``create_graph=True``).

    Parameters
    ----------
    critic : nn.Module
        Maps ``(B, n) -> (B, 1)``.
    real, fake : Tensor, shape (B, n)
        Standardized data and generated states.
    alpha : Tensor, shape (B, 1), optional
        Interpolation weights (drawn from the global torch generator when None).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape (got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)})")
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, dtype=real.dtype, device=real.device)
    u = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    with torch.enable_grad():
        d = critic(u)
        (g,) = torch.autograd.grad(d.sum(), u, create_graph=True)
    return ((torch.linalg.vector_norm(g, dim=1) - 1.0) ** 2).mean()


def sliced_wasserstein(A: np.ndarray, B: np.ndarray, n_dirs: int = 128, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equal-size samples ``(N, n)``.

    The mean over ``n_dirs`` seeded random unit directions of the 1-D
    Wasserstein-1 distance between the projected samples (sorted matching).
    """
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or A.shape != B.shape:
        raise ValueError(f"A and B must have the same shape (N, n) (got {A.shape}, {B.shape})")
    rng = np.random.default_rng(seed)
    th = rng.standard_normal((A.shape[1], int(n_dirs)))
    th /= np.linalg.norm(th, axis=0, keepdims=True)
    return float(np.mean(np.abs(np.sort(A @ th, axis=0) - np.sort(B @ th, axis=0))))


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or int(v) < lo:
        raise ValueError(f"{name} must be an integer >= {lo} (got {v!r})")
    return int(v)


def _check_float(name: str, v: Any, lo: float, strict: bool) -> float:
    ok = (isinstance(v, int | float | np.floating) and not isinstance(v, bool)
          and math.isfinite(float(v)) and (float(v) > lo if strict else float(v) >= lo))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lo} "
                         f"(got {v!r})")
    return float(v)


@register
class WGANPrior(Prior):
    """WGAN-GP generator + critic (see the module docstring).

    Parameters
    ----------
    state_dim, latent_dim : int
    arch : dict
        Generator architecture (:func:`latentda.priors.nets.check_arch`).
    critic_arch : dict, optional
        Critic architecture (default: ``arch``).
    n_critic : int
        Critic updates per generator update (>= 1).
    gp_weight : float
        Weight of the gradient penalty (>= 0; 10 in the paper).
    drift : float
        Weight of ``E f(u_data)^2`` in the critic loss (>= 0).
    betas : (float, float)
        Adam betas of both players, each in ``[0, 1)`` (paper: ``(0.0, 0.9)``).
    critic_lr_scale : float
        Critic learning rate / generator learning rate (> 0).
    project_steps, project_lam, project_lr : int, float, float
        Budget, code penalty ``lam`` (>= 0) and Adam step size of the projection
        used by ``encode``.
    project_restarts : int
        Starting codes of the projection: zeros plus ``project_restarts - 1``
        seeded standard-normal codes (the same for every member); the best
        objective wins.
    project_seed : int
        Seed of those starting codes.
    val_metric : {"recon", "sliced_wasserstein"}
        What ``val_loss`` (early stopping) measures, see :meth:`validation_metrics`.
    val_states, val_project_steps : int
        Size of the fixed validation subset and projection budget used there.
    dtype : str
        ``float32`` (default) or ``float64``.
    """

    family = "wgan"

    def __init__(self, state_dim: int, latent_dim: int, arch: dict[str, Any] | None = None,
                 critic_arch: dict[str, Any] | None = None, n_critic: int = 5,
                 gp_weight: float = 10.0, drift: float = 1e-3,
                 betas: tuple[float, float] | list[float] = (0.0, 0.9),
                 critic_lr_scale: float = 1.0, project_steps: int = 200,
                 project_lam: float = 1e-3, project_lr: float = 0.05,
                 project_restarts: int = 1, project_seed: int = 0,
                 val_metric: str = "recon", val_states: int = 256,
                 val_project_steps: int = 100, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64' (got {dtype!r})")
        super().__init__(state_dim, latent_dim, getattr(torch, dtype))
        self.arch = check_arch(arch or {"kind": "mlp"}, state_dim)
        if self.arch.get("content") == "basis":
            raise ValueError("arch.content 'basis' is for VAE priors (the basis is fitted to "
                             "training states centred by the encoder); use content 'conv'")
        critic_arch = critic_arch or self.arch
        if critic_arch.get("kind") == "shift2d":
            critic_arch = {**critic_arch, "kind": "conv2d"}   # a critic has no position code
            for key in ("sign", "stagger", "pv", "content", "modes", "hidden"):
                critic_arch.pop(key, None)
        self.critic_arch = check_arch(critic_arch, state_dim)
        self.n_critic = _check_int("n_critic", n_critic, 1)
        self.gp_weight = _check_float("gp_weight", gp_weight, 0.0, strict=False)
        self.drift = _check_float("drift", drift, 0.0, strict=False)
        if (not isinstance(betas, list | tuple) or len(betas) != 2
                or not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1) (got {betas!r})")
        self.betas = (float(betas[0]), float(betas[1]))
        self.critic_lr_scale = _check_float("critic_lr_scale", critic_lr_scale, 0.0, True)
        self.project_steps = _check_int("project_steps", project_steps, 1)
        self.project_lam = _check_float("project_lam", project_lam, 0.0, strict=False)
        self.project_lr = _check_float("project_lr", project_lr, 0.0, strict=True)
        self.project_restarts = _check_int("project_restarts", project_restarts, 1)
        self.project_seed = _check_int("project_seed", project_seed, 0)
        if val_metric not in VAL_METRICS:
            raise ValueError(f"val_metric must be one of {VAL_METRICS} (got {val_metric!r})")
        self.val_metric = val_metric
        self.val_states = _check_int("val_states", val_states, 2)
        self.val_project_steps = _check_int("val_project_steps", val_project_steps, 1)
        self._dtype_name = dtype
        self.generator = decoder_net(self.arch, latent_dim, state_dim)
        self.critic_net = encoder_net(self.critic_arch, state_dim, 1)
        self.to(self.dtype)

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "latent_dim": self.latent_dim, "arch": self.arch,
                "critic_arch": self.critic_arch, "n_critic": self.n_critic,
                "gp_weight": self.gp_weight, "drift": self.drift, "betas": list(self.betas),
                "critic_lr_scale": self.critic_lr_scale, "project_steps": self.project_steps,
                "project_lam": self.project_lam, "project_lr": self.project_lr,
                "project_restarts": self.project_restarts, "project_seed": self.project_seed,
                "val_metric": self.val_metric, "val_states": self.val_states,
                "val_project_steps": self.val_project_steps, "dtype": self._dtype_name}

    # ------------------------------------------------------------------ maps
    def decode_t(self, z: torch.Tensor) -> torch.Tensor:
        return self.denormalize(self.generator(z))

    def projection_t(self, x: torch.Tensor, steps: int | None = None,
                     restarts: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Best projection codes and their objectives, ``(N, k)`` and ``(N,)``.

        Runs :meth:`Prior.project_t` (``steps`` Adam iterations, default
        ``project_steps``) from ``restarts`` starting codes per member (default
        ``project_restarts``: zeros, then seeded ``N(0, I)`` codes shared by all
        members), all in one batch, and keeps each member's lowest objective
        ``||(x - G(z)) / scale||^2 + lam ||z||^2``.
        """
        steps = self.project_steps if steps is None else int(steps)
        R = self.project_restarts if restarts is None else int(restarts)
        N, k = x.shape[0], self.latent_dim
        starts = torch.zeros(R, k, dtype=x.dtype)
        if R > 1:
            g = torch.Generator(device="cpu").manual_seed(self.project_seed)
            starts[1:] = torch.randn(R - 1, k, generator=g, dtype=x.dtype)
        z0 = starts.to(x.device).repeat_interleave(N, dim=0)           # (R*N, k), start-major
        xr = x.repeat(R, 1)
        z = self.project_t(xr, z0, steps=steps, lam=self.project_lam, lr=self.project_lr)
        with torch.no_grad():
            r = self.generator(z) - self.normalize(xr)
            obj = ((r * r).sum(1) + self.project_lam * (z * z).sum(1)).view(R, N)
            best = obj.argmin(0)
            idx = best * N + torch.arange(N, device=x.device)
        return z[idx], obj[best, torch.arange(N, device=x.device)]

    def encode_t(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_t(x)[0]

    # ------------------------------------------------------------------ critic
    def critic_t(self, x: torch.Tensor) -> torch.Tensor:
        """Critic values ``f((x - shift) / scale)`` of physical states, ``(N, n) -> (N,)``.

        Differentiable with respect to ``x`` (and the critic's parameters).
        """
        return self.critic_net(self.normalize(x))[:, 0]

    @torch.no_grad()
    def critic(self, X: np.ndarray) -> np.ndarray:
        """Critic values of physical states ``(N, n)``, float64 ``(N,)`` (higher: more real)."""
        return self._from(self.critic_t(self._to(X, self.state_dim, "X")))

    def critic_grad(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Critic values ``(N,)`` and their gradients with respect to physical ``X``, ``(N, n)``."""
        x = self._to(X, self.state_dim, "X").detach().requires_grad_(True)
        with torch.enable_grad():
            d = self.critic_t(x)
            (g,) = torch.autograd.grad(d.sum(), x)
        return self._from(d), self._from(g)

    # ------------------------------------------------------------------ training
    def make_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """``[generator Adam, critic Adam]`` with the configured betas."""
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=self.betas),
                torch.optim.Adam(self.critic_net.parameters(), lr=lr * self.critic_lr_scale,
                                 betas=self.betas)]

    def _noise(self, m: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(m, self.latent_dim, dtype=like.dtype, device=like.device)

    def train_step(self, xn: torch.Tensor, optimizers: list[torch.optim.Optimizer],
                   step: int) -> dict[str, float]:
        """``n_critic`` critic updates, then one generator update, on one standardized batch.

        The trainer hands one batch of ``B`` states per step. It is split into
        ``n_critic`` disjoint parts (``torch.tensor_split``; the whole batch is reused
        when ``B < n_critic``), so each critic update sees fresh data, as in
        Algorithm 1 of Gulrajani et al. with critic batch ``B / n_critic``; every
        update draws fresh codes and interpolation weights. The generator update
        uses ``B`` fresh codes. Returns the last critic update's loss, Wasserstein
        estimate ``E f(data) - E f(G(z))`` and penalty, and the generator loss.
        """
        g_opt, c_opt = optimizers
        parts = xn.tensor_split(self.n_critic) if xn.shape[0] >= self.n_critic else (
            (xn,) * self.n_critic)
        self.generator.requires_grad_(False)
        self.critic_net.requires_grad_(True)
        try:
            for real in parts:
                with torch.no_grad():
                    fake = self.generator(self._noise(real.shape[0], real))
                d_real = self.critic_net(real)[:, 0]
                d_fake = self.critic_net(fake)[:, 0]
                gp = gradient_penalty(self.critic_net, real, fake)
                w = d_real.mean() - d_fake.mean()
                loss = -w + self.gp_weight * gp + self.drift * (d_real * d_real).mean()
                c_opt.zero_grad(set_to_none=True)
                loss.backward()
                c_opt.step()
            self.critic_net.requires_grad_(False)
            self.generator.requires_grad_(True)
            g_loss = -self.critic_net(self.generator(self._noise(xn.shape[0], xn))).mean()
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
        finally:
            self.generator.requires_grad_(True)
            self.critic_net.requires_grad_(True)
        return {"critic_loss": float(loss.detach()), "wasserstein": float(w.detach()),
                "gp": float(gp.detach()), "gen_loss": float(g_loss.detach())}

    @torch.no_grad()
    def validation_metrics(self, X: np.ndarray) -> dict[str, float]:
        """Quality on held-out physical states ``X``.

        - ``recon_rmse``: projection reconstruction RMSE (physical units) on a fixed,
          evenly spaced subset of at most ``val_states`` states, with the reduced
          budget ``val_project_steps`` and one start;
        - ``wasserstein_estimate``: ``mean f(X) - mean f(G(z))`` over all of ``X``
          and as many seeded samples (standardized units; a lower bound on W1 when
          the critic is 1-Lipschitz);
        - ``sliced_wasserstein``: sliced W1 between ``X`` and those samples (physical
          units), a critic-free sample-quality measure;
        - ``val_loss``: ``recon_rmse`` (default ``val_metric="recon"``) or
          ``sliced_wasserstein``.

        ``recon`` is the default because the generator is used through its projection
        in latent data assimilation: the error of representing held-out states on the
        generator's range is what matters there, and unlike the adversarial losses it
        is comparable across steps (the critic changes as it trains).
        """
        X = np.asarray(X, dtype=np.float64)
        N = X.shape[0]
        sub = X[np.unique(np.linspace(0, N - 1, min(N, self.val_states)).round().astype(int))]
        xs = self._to(sub, self.state_dim, "X")
        z, _ = self.projection_t(xs, steps=self.val_project_steps, restarts=1)
        rec = self._from(self.decode_t(z))
        rmse = float(np.sqrt(np.mean((sub - rec) ** 2)))
        S = self.sample(N, seed=self.project_seed)
        w = float(self.critic(X).mean() - self.critic(S).mean())
        sw = sliced_wasserstein(X, S, seed=self.project_seed) if N >= 2 else float("nan")
        val = rmse if self.val_metric == "recon" else sw
        return {"val_loss": val, "recon_rmse": rmse, "wasserstein_estimate": w,
                "sliced_wasserstein": sw}
