r"""Batched gradient-based MCMC in torch (float64): MALA and HMC with dual-averaging step size.

All ``C`` chains run in parallel as one batch: ``log_prob`` maps a float64 tensor of shape
``(C, d)`` to ``(C,)`` unnormalized log densities and must be differentiable by autograd, with
the chains as independent rows (the gradient is ``torch.autograd.grad(lp.sum(), x)``). The log
density and its gradient are computed together once per point and reused at the accept step.

Iterations
----------
``steps`` counts *all* iterations, burn-in included. The first ``burn_in`` iterations
(default ``steps // 2``) adapt the step size and are discarded; of the remaining
``steps - burn_in`` states, every ``thin``-th is kept, counting back from the last one (so the
final state is always the last kept draw): ``T = (steps - burn_in - 1) // thin + 1`` draws.

Preconditioning
---------------
With a square root ``L`` of a covariance (``precond``; a 1-D vector is a diagonal ``L``) both
samplers run in the coordinates ``u = L^{-1} x``, whose density is ``π(L u) |det L|`` and whose
gradient is ``∇_u log π(Lu) = Lᵀ ∇_x log π(x)``. In ``x`` this is

* MALA with proposal covariance ``ε² L Lᵀ``:
  ``x' = x + (ε²/2) L Lᵀ ∇log π(x) + ε L ξ``, ``ξ ~ N(0, I)``;
* HMC with mass matrix ``M = (L Lᵀ)^{-1}`` (momentum ``p ~ N(0, M)``).

The reported ``step_size`` is ``ε`` in the ``u`` coordinates (with ``precond=None``, ``L = I``).

MALA (Roberts & Tweedie 1996)
-----------------------------
In ``u``: ``u' = u + (ε²/2) g(u) + ε ξ`` with ``g = ∇ log π̃`` (``π̃(u) = π(Lu)``), and the
Metropolis–Hastings ratio with the asymmetric proposal density
``q(u' | u) ∝ exp(-|u' - u - (ε²/2) g(u)|² / (2ε²))`` is

    log α = log π̃(u') - log π̃(u) + log q(u | u') - log q(u' | u),

accepted with probability ``min(1, α)``. One gradient per iteration.

Optionally (``drift_clip``, MALTA of Roberts & Tweedie 1996) the drift ``(ε²/2) g(u)`` is
truncated to norm ``drift_clip · ε · √d`` in both ``q(u' | u)`` and ``q(u | u')``; the chain
stays exact, and chains started where the gradient is huge (stiff tails, where plain MALA
overshoots and rejects forever) can move in.

HMC (Duane et al. 1987; Neal 2011)
----------------------------------
In ``u`` with identity mass: ``H(u, p) = -log π̃(u) + |p|²/2``, ``p ~ N(0, I)``, and ``n``
leapfrog steps

    p ← p + (ε/2) g(u);  [u ← u + ε p;  p ← p + ε g(u)] × n  (the last kick is ε/2),

accepted with probability ``min(1, exp(H(u, p) - H(u', p')))``. With ``jitter_steps`` the
number of steps ``n`` is drawn uniformly from ``{1, …, n_leapfrog}`` each iteration (shared by
the chains) to break periodic orbits. ``n`` gradients per iteration. A trajectory that passes
through a point with non-finite log density or gradient (or a non-finite position) is rejected;
the rule depends on the whole path, which reads the same reversed, so detailed balance holds.
Non-finite proposals are never evaluated (the chain's current point is passed instead) and
never accepted, so the samples stay finite.

Dual averaging (Hoffman & Gelman 2014, Algorithm 5)
----------------------------------------------------
During burn-in, with ``ᾱ_m`` the acceptance probability at iteration ``m`` averaged over the
chains (one step size shared by all chains), ``μ = log(10 ε₀)``, ``γ = 0.05``, ``t₀ = 10``,
``κ = 0.75``:

    H̄_m = (1 - 1/(m + t₀)) H̄_{m-1} + (δ - ᾱ_m) / (m + t₀),
    log ε_m = μ - √m H̄_m / γ,
    log ε̄_m = m^{-κ} log ε_m + (1 - m^{-κ}) log ε̄_{m-1},

and after burn-in ``ε = ε̄`` is fixed. ``δ`` is ``target_accept`` (0.574 for MALA, Roberts &
Rosenthal 1998; 0.65 for HMC). Without ``step_size`` the initial ``ε₀`` is found as in NUTS's
``FindReasonableEpsilon``: starting at 1, ε is doubled (halved) until the chain-averaged
acceptance probability of a single proposal (MALA) or a single leapfrog step (HMC) from ``x0``
crosses 0.5.

Diagnostics (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021)
----------------------------------------------------------------
Both are computed on *split* chains: each chain's draws are cut into halves (the middle draw
is dropped when ``T`` is odd), giving ``M = 2C`` chains of length ``N = ⌊T/2⌋``. With chain
means ``θ̄_m``, within-chain variances ``s_m²``, ``W = mean(s_m²)``, ``B/N = var(θ̄_m)``
(``ddof=1``) and ``var⁺ = (N-1)/N W + B/N``:

* split-R-hat ``= sqrt(var⁺ / W)`` (Gelman & Rubin 1992);
* ESS ``= M N / τ̂`` with ``τ̂ = -1 + 2 Σ_{t≤2K+1} ρ̂_t``,
  ``ρ̂_t = 1 - (W - mean_m γ̂_{m,t}) / var⁺`` from the chains' autocovariances ``γ̂_{m,t}``
  (FFT, biased ``1/N`` normalization), truncated by Geyer's initial positive sequence of pair
  sums ``ρ̂_{2k} + ρ̂_{2k+1}`` and made monotone (Geyer's initial monotone sequence), as in
  Stan and ArviZ (``ess(method="mean")``). No rank normalization is applied, so this is the
  ESS of the *mean* of each coordinate; ``τ̂`` is floored at ``1 / log10(M N)`` as in ArviZ.

A coordinate with zero variance (e.g. all proposals rejected) has undefined ESS and R-hat and
gets ``nan``; both need ``T >= 4`` draws per chain and are ``nan`` otherwise in
:class:`MCMCResult`.

References
----------
- G. O. Roberts & R. L. Tweedie (1996), Exponential convergence of Langevin distributions and
  their discrete approximations. Bernoulli 2(4).
- G. O. Roberts & J. S. Rosenthal (1998), Optimal scaling of discrete approximations to
  Langevin diffusions. JRSS B 60(1).
- R. M. Neal (2011), MCMC using Hamiltonian dynamics. Handbook of MCMC, ch. 5.
- M. D. Hoffman & A. Gelman (2014), The No-U-Turn Sampler. JMLR 15.
- A. Vehtari, A. Gelman, D. Simpson, B. Carpenter & P.-C. Bürkner (2021), Rank-normalization,
  folding, and localization: an improved R-hat for assessing convergence of MCMC.
  Bayesian Analysis 16(2).
- C. J. Geyer (1992), Practical Markov chain Monte Carlo. Statistical Science 7(4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from latentda._validate import check_float, check_int

__all__ = ["MCMCResult", "mala", "hmc", "effective_sample_size", "split_rhat"]

LogProb = Callable[[torch.Tensor], torch.Tensor]

_GAMMA = 0.05
_T0 = 10.0
_KAPPA = 0.75


@dataclass(frozen=True)
class MCMCResult:
    """Draws and diagnostics of a batched MCMC run.

    Attributes
    ----------
    samples : np.ndarray
        ``(C, T, d)`` kept draws (after burn-in, thinned) of each of the ``C`` chains.
    log_prob : np.ndarray
        ``(C, T)`` log target (as returned by ``log_prob``) at the kept draws.
    accept_rate : float
        Mean acceptance probability ``min(1, α)`` over chains and post-burn-in iterations.
    accept_rate_chain : np.ndarray
        ``(C,)`` the same, per chain.
    step_size : float
        Final (adapted) step size, in the preconditioned coordinates ``u = L^{-1} x``.
    ess : np.ndarray
        ``(d,)`` effective sample size of the mean of each coordinate over all chains
        (split chains, see :func:`effective_sample_size`).
    rhat : np.ndarray
        ``(d,)`` split-R-hat (see :func:`split_rhat`).
    n_grad : int
        Gradient (and log-density) evaluations per chain, step-size search included.
    method : str
        ``"mala"`` or ``"hmc"``.
    """

    samples: np.ndarray
    log_prob: np.ndarray
    accept_rate: float
    accept_rate_chain: np.ndarray
    step_size: float
    ess: np.ndarray
    rhat: np.ndarray
    n_grad: int
    method: str

    @property
    def last(self) -> np.ndarray:
        """``(C, d)`` final state of each chain."""
        return self.samples[:, -1, :]


# --------------------------------------------------------------------------------------------
# validation and setup
# --------------------------------------------------------------------------------------------


def _check_x0(x0: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x0, torch.Tensor):
        if x0.is_complex() or not (x0.is_floating_point() or x0.dtype in (
                torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise ValueError(f"x0 must be a real numeric tensor (got dtype {x0.dtype})")
        x = x0.detach().to(torch.float64)
    else:
        arr = np.asarray(x0)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"x0 must be a real numeric array of shape (C, d) "
                             f"(got dtype {arr.dtype}); convert it with np.asarray(..., float)")
        x = torch.as_tensor(arr.astype(np.float64))
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x0 must have shape (C, d) with C >= 1 chains and d >= 1 "
                         f"(got shape {tuple(x.shape)}); for one chain pass x0[None, :]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x0 must be finite; replace NaN/inf initial states")
    return x.clone()


def _check_precond(precond: np.ndarray | torch.Tensor | None, d: int,
                   device: torch.device) -> torch.Tensor | None:
    if precond is None:
        return None
    if isinstance(precond, torch.Tensor):
        arr = precond.detach().cpu().to(torch.float64).numpy()
    else:
        arr = np.asarray(precond)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"precond must be a real numeric array (got dtype {arr.dtype})")
        arr = arr.astype(np.float64)
    if arr.shape not in ((d,), (d, d)):
        raise ValueError(f"precond must have shape ({d}, {d}) (a square root L of the proposal "
                         f"covariance) or ({d},) (a diagonal L) (got shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError("precond must be finite")
    if arr.ndim == 1:
        if np.any(arr <= 0):
            raise ValueError("precond as a 1-D vector holds standard deviations and must be > 0 "
                             f"(got min {arr.min()})")
    else:
        s = np.linalg.svd(arr, compute_uv=False)
        if not s[-1] > 1e-12 * s[0]:
            ratio = s[-1] / s[0] if s[0] > 0 else 0.0
            raise ValueError("precond must be a nonsingular (d, d) matrix (smallest/largest "
                             f"singular value {ratio:.3g}); regularize it, e.g. "
                             "the Cholesky factor of cov + 1e-8 I")
    return torch.as_tensor(arr, dtype=torch.float64, device=device)


def _check_generator(generator: torch.Generator | None,
                     device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None "
                         f"(got {type(generator).__name__}); use torch.Generator().manual_seed(0)")
    if generator.device.type != device.type:
        raise ValueError(f"generator must live on x0's device {device} (got {generator.device}); "
                         f"create it with torch.Generator(device={str(device)!r})")
    return generator


def _check_common(x0, steps, burn_in, step_size, target_accept, thin, generator, precond,
                  adapt):
    x = _check_x0(x0)
    steps = check_int("steps", steps, min_value=1)
    if burn_in is None:
        burn_in = steps // 2
    burn_in = check_int("burn_in", burn_in, min_value=0)
    if burn_in >= steps:
        raise ValueError(f"burn_in must be < steps (got burn_in={burn_in}, steps={steps}); "
                         "steps counts all iterations, burn-in included")
    thin = check_int("thin", thin, min_value=1)
    target_accept = check_float("target_accept", target_accept)
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1) (got {target_accept})")
    if step_size is not None:
        step_size = check_float("step_size", step_size, positive=True)
    if not isinstance(adapt, bool):
        raise ValueError(f"adapt must be True or False (got {adapt!r})")
    g = _check_generator(generator, x.device)
    L = _check_precond(precond, x.shape[1], x.device)
    return x, steps, burn_in, step_size, target_accept, thin, g, L


class _Target:
    """``log π̃(u) = log π(L u)`` and its gradient in ``u``, sanitized, with a call counter."""

    def __init__(self, log_prob: LogProb, L: torch.Tensor | None, n_chains: int) -> None:
        if not callable(log_prob):
            raise ValueError(f"log_prob must be callable (got {type(log_prob).__name__})")
        self.log_prob = log_prob
        self.L = L
        self.C = n_chains
        self.n_eval = 0

    def to_x(self, u: torch.Tensor) -> torch.Tensor:
        if self.L is None:
            return u
        return u * self.L if self.L.ndim == 1 else u @ self.L.T

    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        if self.L is None:
            return x
        if self.L.ndim == 1:
            return x / self.L
        return torch.linalg.solve(self.L, x.T).T

    def __call__(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(lp, grad_u, x)``; invalid points get ``lp = -inf`` and a zero gradient."""
        self.n_eval += 1
        with torch.enable_grad():
            uu = u.detach().requires_grad_(True)
            x = self.to_x(uu)
            lp = self.log_prob(x)
            if not isinstance(lp, torch.Tensor) or lp.shape != (self.C,):
                shape = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
                raise ValueError(f"log_prob must return a tensor of shape ({self.C},) for input "
                                 f"of shape {tuple(u.shape)} (got {shape})")
            if lp.requires_grad:
                (grad,) = torch.autograd.grad(lp.sum(), uu, allow_unused=True)
            else:
                grad = None
        if grad is None:
            grad = torch.zeros_like(u)
        lp = lp.detach().to(dtype=torch.float64, device=u.device)
        grad = grad.detach().to(torch.float64)
        x = x.detach()
        valid = torch.isfinite(lp) & torch.isfinite(torch.cat((grad, x), dim=-1)).all(dim=-1)
        lp = torch.where(valid, lp, torch.full_like(lp, -math.inf))
        grad = torch.where(valid[:, None], grad, torch.zeros_like(grad))
        return lp, grad, x


def _accept_prob(log_alpha: torch.Tensor) -> torch.Tensor:
    a = torch.exp(torch.clamp(log_alpha, max=0.0))
    return torch.nan_to_num(a, nan=0.0)


# --------------------------------------------------------------------------------------------
# transition kernels (in u coordinates); each returns the proposal and log α
# --------------------------------------------------------------------------------------------


def _randn(shape: tuple[int, ...], like: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64, device=like.device)


def _drift(grad: torch.Tensor, eps: float, clip: float | None) -> torch.Tensor:
    """``(ε²/2) g``, truncated to Euclidean norm ``clip · ε · √d`` when ``clip`` is set."""
    drift = 0.5 * eps * eps * grad
    if clip is None:
        return drift
    cap = clip * eps * math.sqrt(grad.shape[-1])
    norm = torch.linalg.vector_norm(drift, dim=-1, keepdim=True)
    return drift * torch.clamp(cap / norm.clamp_min(1e-300), max=1.0)


def _mala_propose(target: _Target, u, lp, grad, eps: float, g, clip: float | None):
    xi = _randn(u.shape, u, g)
    up = u + _drift(grad, eps, clip) + eps * xi
    finite = torch.isfinite(up).all(dim=-1)
    up = torch.where(finite[:, None], up, u)  # never evaluate a non-finite point
    lpp, gp, xp = target(up)
    lpp = torch.where(finite, lpp, torch.full_like(lpp, -math.inf))
    log_q_fwd = -0.5 * (xi * xi).sum(dim=-1)
    r = u - up - _drift(gp, eps, clip)
    log_q_bwd = -0.5 * (r * r).sum(dim=-1) / (eps * eps)
    log_alpha = lpp - lp + log_q_bwd - log_q_fwd
    ok = torch.isfinite(lpp) & torch.isfinite(log_alpha)
    log_alpha = torch.where(ok, log_alpha, torch.full_like(log_alpha, -math.inf))
    return up, lpp, gp, xp, log_alpha


def _hmc_propose(target: _Target, u, lp, grad, eps: float, n_steps: int, g):
    p0 = _randn(u.shape, u, g)
    ok = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
    un, gn, lpn = u, grad, lp
    xn = None
    p = p0 + 0.5 * eps * grad
    for i in range(n_steps):
        u_new = un + eps * p
        finite = torch.isfinite(u_new).all(dim=-1) & torch.isfinite(p).all(dim=-1)
        ok = ok & finite
        # diverged chains are frozen at their start (finite, already valid) and rejected
        un = torch.where(ok[:, None], u_new, u)
        lpn, gn, xn = target(un)
        ok = ok & torch.isfinite(lpn)
        kick = eps if i < n_steps - 1 else 0.5 * eps
        p = p + kick * gn
    h0 = -lp + 0.5 * (p0 * p0).sum(dim=-1)
    h1 = -lpn + 0.5 * (p * p).sum(dim=-1)
    log_alpha = h0 - h1
    ok = ok & torch.isfinite(log_alpha)
    log_alpha = torch.where(ok, log_alpha, torch.full_like(log_alpha, -math.inf))
    return un, lpn, gn, xn, log_alpha


def _find_reasonable_eps(probe: Callable[[float], torch.Tensor], max_iter: int = 60) -> float:
    """NUTS ``FindReasonableEpsilon`` on the chain-mean acceptance probability of one move."""
    eps = 1.0
    acc = float(_accept_prob(probe(eps)).mean())
    direction = 1.0 if acc > 0.5 else -1.0
    for _ in range(max_iter):
        if (direction > 0 and acc <= 0.5) or (direction < 0 and acc >= 0.5):
            break
        eps_new = eps * 2.0 ** direction
        if not 1e-10 <= eps_new <= 1e10:
            break
        eps = eps_new
        acc = float(_accept_prob(probe(eps)).mean())
    return eps


class _DualAveraging:
    """Hoffman & Gelman (2014) Algorithm 5 on the chain-mean acceptance probability."""

    def __init__(self, eps0: float, target: float) -> None:
        self.mu = math.log(10.0 * eps0)
        self.target = target
        self.h_bar = 0.0
        self.log_eps_bar = 0.0
        self.m = 0
        self.eps = eps0

    def update(self, accept_prob: float) -> float:
        self.m += 1
        m = self.m
        w = 1.0 / (m + _T0)
        self.h_bar = (1.0 - w) * self.h_bar + w * (self.target - accept_prob)
        log_eps = self.mu - math.sqrt(m) / _GAMMA * self.h_bar
        eta = m ** (-_KAPPA)
        self.log_eps_bar = eta * log_eps + (1.0 - eta) * self.log_eps_bar
        self.eps = math.exp(log_eps)
        return self.eps

    @property
    def final(self) -> float:
        return math.exp(self.log_eps_bar) if self.m > 0 else self.eps


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def _run(method: str, log_prob: LogProb, x0, *, steps, burn_in, step_size, target_accept,
         adapt, precond, thin, generator, n_leapfrog: int = 1,
         jitter_steps: bool = False, drift_clip: float | None = None) -> MCMCResult:
    x, steps, burn_in, step_size, target_accept, thin, g, L = _check_common(
        x0, steps, burn_in, step_size, target_accept, thin, generator, precond, adapt)
    C, d = x.shape
    target = _Target(log_prob, L, C)
    u = target.to_u(x)
    lp, grad, x = target(u)
    bad = ~torch.isfinite(lp)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(f"x0 must have finite log_prob and gradient at every chain "
                         f"(non-finite at rows {rows}); start the chains inside the support")

    def propose(eps: float, n_steps: int):
        if method == "mala":
            return _mala_propose(target, u, lp, grad, eps, g, drift_clip)
        return _hmc_propose(target, u, lp, grad, eps, n_steps, g)

    if step_size is None:
        eps = _find_reasonable_eps(lambda e: propose(e, 1)[4])
    else:
        eps = step_size
    dual = _DualAveraging(eps, target_accept) if adapt and burn_in > 0 else None

    n_post = steps - burn_in
    start = (n_post - 1) % thin
    T = (n_post - 1) // thin + 1
    samples = torch.empty((C, T, d), dtype=torch.float64, device=x.device)
    lps = torch.empty((C, T), dtype=torch.float64, device=x.device)
    acc_sum = torch.zeros(C, dtype=torch.float64, device=x.device)
    k = 0
    for it in range(steps):
        if it == burn_in and dual is not None:
            eps = dual.final
        if method == "hmc" and jitter_steps and n_leapfrog > 1:
            n_steps = int(torch.randint(1, n_leapfrog + 1, (1,), generator=g,
                                        device=x.device).item())
        else:
            n_steps = n_leapfrog
        up, lpp, gp, xp, log_alpha = propose(eps, n_steps)
        log_u = torch.log(torch.rand(C, generator=g, dtype=torch.float64, device=x.device))
        accept = log_u < log_alpha
        u = torch.where(accept[:, None], up, u)
        x = torch.where(accept[:, None], xp, x)
        lp = torch.where(accept, lpp, lp)
        grad = torch.where(accept[:, None], gp, grad)
        a = _accept_prob(log_alpha)
        if it < burn_in:
            if dual is not None:
                eps = dual.update(float(a.mean()))
        else:
            acc_sum += a
            j = it - burn_in
            if j >= start and (j - start) % thin == 0:
                samples[:, k] = x
                lps[:, k] = lp
                k += 1
    assert k == T

    samples_np = samples.cpu().numpy()
    acc_chain = (acc_sum / n_post).cpu().numpy()
    if T >= 4:
        ess = effective_sample_size(samples_np)
        rhat = split_rhat(samples_np)
    else:
        ess = np.full(d, np.nan)
        rhat = np.full(d, np.nan)
    return MCMCResult(samples=samples_np, log_prob=lps.cpu().numpy(),
                      accept_rate=float(acc_chain.mean()), accept_rate_chain=acc_chain,
                      step_size=float(eps), ess=ess, rhat=rhat, n_grad=int(target.n_eval),
                      method=method)


def mala(log_prob: LogProb, x0: np.ndarray | torch.Tensor, *, steps: int,
         burn_in: int | None = None, step_size: float | None = None,
         target_accept: float = 0.574, adapt: bool = True,
         precond: np.ndarray | torch.Tensor | None = None, thin: int = 1,
         generator: torch.Generator | None = None,
         drift_clip: float | None = None) -> MCMCResult:
    """Metropolis-adjusted Langevin algorithm on ``C`` chains in parallel.

    Parameters
    ----------
    log_prob : callable
        Maps a float64 tensor ``(C, d)`` to ``(C,)`` unnormalized log densities, differentiable
        by autograd, rows independent. ``-inf`` (or NaN) marks points outside the support; such
        proposals are rejected.
    x0 : array or tensor, shape (C, d)
        Initial states (finite, finite log density). Computation runs on ``x0``'s device.
    steps : int
        Total iterations, burn-in included.
    burn_in : int, optional
        Adaptation iterations discarded at the start (default ``steps // 2``); ``< steps``.
    step_size : float, optional
        Initial (``adapt=True``) or fixed step size ``ε`` in the preconditioned coordinates;
        default: NUTS's doubling/halving heuristic.
    target_accept : float
        Target mean acceptance probability for dual averaging, in (0, 1).
    adapt : bool
        Adapt ``ε`` by dual averaging during burn-in.
    precond : array or tensor, optional
        ``(d, d)`` square root ``L`` of the proposal covariance (``x' = x + (ε²/2) L Lᵀ ∇ + ε L ξ``)
        or ``(d,)`` diagonal of ``L``.
    thin : int
        Keep every ``thin``-th post-burn-in state (the final state is always kept).
    generator : torch.Generator, optional
        Source of all randomness (on ``x0``'s device); the same seed gives identical results.
    drift_clip : float, optional
        Truncate the drift ``(ε²/2) g(u)`` (preconditioned coordinates) to Euclidean norm
        ``drift_clip · ε · √d`` (MALTA). The MH ratio uses the same truncated drift, so the
        chain stays exact. Off by default (plain MALA); a value like 10 leaves the bulk of a
        well-scaled target untouched but lets chains started in stiff tails (where
        ``(ε²/2)|∇ log π|`` overshoots and every proposal is rejected) move in.

    Returns
    -------
    MCMCResult
        ``n_grad`` is ``steps + 1`` plus the step-size search evaluations.

    Raises
    ------
    ValueError
        On invalid arguments, naming the field, or if ``log_prob(x0)`` is not finite.
    """
    if drift_clip is not None:
        drift_clip = check_float("drift_clip", drift_clip, positive=True)
    return _run("mala", log_prob, x0, steps=steps, burn_in=burn_in, step_size=step_size,
                target_accept=target_accept, adapt=adapt, precond=precond, thin=thin,
                generator=generator, drift_clip=drift_clip)


def hmc(log_prob: LogProb, x0: np.ndarray | torch.Tensor, *, steps: int,
        burn_in: int | None = None, step_size: float | None = None, n_leapfrog: int = 10,
        target_accept: float = 0.65, adapt: bool = True,
        precond: np.ndarray | torch.Tensor | None = None, thin: int = 1,
        jitter_steps: bool = True, generator: torch.Generator | None = None) -> MCMCResult:
    """Hamiltonian Monte Carlo (leapfrog, fixed or jittered path length) on ``C`` chains.

    Parameters
    ----------
    log_prob, x0, steps, burn_in, step_size, target_accept, adapt, thin, generator
        As in :func:`mala`.
    n_leapfrog : int
        Leapfrog steps per iteration (the maximum when ``jitter_steps``), ``>= 1``.
    precond : array or tensor, optional
        ``(d, d)`` or ``(d,)`` square root ``L`` of the inverse mass matrix:
        ``M = (L Lᵀ)^{-1}``, i.e. HMC with identity mass in ``u = L^{-1} x``.
    jitter_steps : bool
        Draw the number of leapfrog steps uniformly from ``{1, …, n_leapfrog}`` each iteration
        (shared by all chains).

    Returns
    -------
    MCMCResult
        ``n_grad`` counts the leapfrog gradient evaluations plus the initial point and the
        step-size search.

    Raises
    ------
    ValueError
        On invalid arguments, naming the field, or if ``log_prob(x0)`` is not finite.
    """
    n_leapfrog = check_int("n_leapfrog", n_leapfrog, min_value=1)
    if not isinstance(jitter_steps, bool):
        raise ValueError(f"jitter_steps must be True or False (got {jitter_steps!r})")
    return _run("hmc", log_prob, x0, steps=steps, burn_in=burn_in, step_size=step_size,
                target_accept=target_accept, adapt=adapt, precond=precond, thin=thin,
                generator=generator, n_leapfrog=n_leapfrog, jitter_steps=jitter_steps)


# --------------------------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------------------------


def _check_samples(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"samples must be a real numeric array (got dtype {arr.dtype})")
    if arr.ndim != 3:
        raise ValueError(f"samples must have shape (C, T, d) (got shape {arr.shape}); "
                         "for one chain of one variable use x[None, :, None]")
    if arr.shape[0] < 1 or arr.shape[1] < 4 or arr.shape[2] < 1:
        raise ValueError(f"samples must hold C >= 1 chains of T >= 4 draws of d >= 1 "
                         f"variables (got shape {arr.shape})")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("samples must be finite")
    return arr


def _split(arr: np.ndarray) -> np.ndarray:
    half = arr.shape[1] // 2
    return np.concatenate((arr[:, :half], arr[:, -half:]), axis=0)


def _autocov(arr: np.ndarray) -> np.ndarray:
    """Biased (1/N) autocovariance along axis 1 of ``(M, N, d)`` via FFT."""
    n = arr.shape[1]
    centred = arr - arr.mean(axis=1, keepdims=True)
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=nfft, axis=1)
    return np.fft.irfft(f * np.conj(f), n=nfft, axis=1)[:, :n] / n


def _ess_1d(acov: np.ndarray, chain_mean: np.ndarray) -> float:
    """Multi-chain ESS from ``acov`` ``(M, N)`` and ``chain_mean`` ``(M,)`` (ArviZ ``_ess``)."""
    m, n = acov.shape
    mean_var = float(np.mean(acov[:, 0])) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus += float(np.var(chain_mean, ddof=1))
    if not var_plus > 0 or not np.isfinite(var_plus):
        return math.nan
    acov_mean = acov.mean(axis=0)
    rho = np.zeros(n)
    rho_even = 1.0
    rho[0] = rho_even
    rho_odd = 1.0 - (mean_var - acov_mean[1]) / var_plus
    rho[1] = rho_odd
    # Geyer's initial positive sequence
    t = 1
    while t < n - 3 and rho_even + rho_odd > 0.0:
        rho_even = 1.0 - (mean_var - acov_mean[t + 1]) / var_plus
        rho_odd = 1.0 - (mean_var - acov_mean[t + 2]) / var_plus
        if rho_even + rho_odd >= 0.0:
            rho[t + 1] = rho_even
            rho[t + 2] = rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0.0:
        rho[max_t + 1] = rho_even
    # Geyer's initial monotone sequence
    t = 1
    while t <= max_t - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = 0.5 * (rho[t - 1] + rho[t])
            rho[t + 2] = rho[t + 1]
        t += 2
    total = m * n
    tau = -1.0 + 2.0 * float(np.sum(rho[:max_t + 1])) + float(np.sum(rho[max_t + 1:max_t + 2]))
    tau = max(tau, 1.0 / math.log10(total))
    return total / tau


def effective_sample_size(samples: np.ndarray) -> np.ndarray:
    """Multi-chain effective sample size of the mean of each coordinate (split chains).

    Parameters
    ----------
    samples : np.ndarray, shape (C, T, d)
        ``C`` chains of ``T >= 4`` finite draws.

    Returns
    -------
    np.ndarray, shape (d,)
        ESS per coordinate (Vehtari et al. 2021 without rank normalization; Stan/ArviZ
        ``ess(method="mean")``): ``nan`` for a coordinate with zero variance.

    Raises
    ------
    ValueError
        If ``samples`` is not a finite ``(C, T, d)`` array with ``T >= 4``.
    """
    arr = _split(_check_samples(samples))
    acov = _autocov(arr)
    means = arr.mean(axis=1)
    return np.array([_ess_1d(acov[:, :, j], means[:, j]) for j in range(arr.shape[2])])


def split_rhat(samples: np.ndarray) -> np.ndarray:
    """Split-R-hat (Gelman–Rubin on chains cut into halves) of each coordinate.

    Parameters
    ----------
    samples : np.ndarray, shape (C, T, d)
        ``C >= 1`` chains of ``T >= 4`` finite draws.

    Returns
    -------
    np.ndarray, shape (d,)
        ``sqrt(((N-1)/N W + B/N) / W)``; ``nan`` for a coordinate with zero within-chain
        variance.

    Raises
    ------
    ValueError
        If ``samples`` is not a finite ``(C, T, d)`` array with ``T >= 4``.
    """
    arr = _split(_check_samples(samples))
    n = arr.shape[1]
    w = arr.var(axis=1, ddof=1).mean(axis=0)
    b_over_n = arr.mean(axis=1).var(axis=0, ddof=1)
    var_plus = (n - 1.0) / n * w + b_over_n
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat = np.sqrt(var_plus / w)
    return np.where(w > 0, rhat, np.nan)
