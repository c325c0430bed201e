"""Bayesian inference of one observation vector through a generative prior.

The model: a prior ``x = G(z) [+ eta]`` with ``z ~ N(0, I_k)`` (and the prior's
off-manifold residual ``eta ~ N(mu_eta, Gamma)``, its ``residual_mean`` and
``residual_cov``), observations ``y = A(x) + eps`` with ``eps ~ N(0, R)``.

- :func:`latent_map` — the latent MAP ("latent 3D-Var")
  ``z* = argmin 1/2 ||z||^2 + 1/2 ||R^{-1/2}(y - A(G(z)))||^2`` by damped
  Gauss–Newton (:func:`~latentda.inference.gauss_newton.gauss_newton`), with a
  fixed budget and a convergence report;
- :func:`latent_laplace` — the Laplace approximation at ``z*``: the Gauss–Newton
  Hessian ``H = M^T M + I`` with ``M = R^{-1/2} A J_G(z*)`` (or the exact Hessian),
  latent covariance ``H^{-1}``, pushed to state space as
  ``C_x = J_G H^{-1} J_G^T`` (``+ Gamma`` for the noisy-manifold prior);
- :func:`variable_space_laplace` — the linearized-generator prior
  ``x ~ N(G(z0) + J_G (0 - z0) [+ mu_eta], J_G J_G^T [+ Gamma])`` around a
  linearization point ``z0`` (default 0, the prior mean, where the mean is
  ``G(0)``), followed by the linear-Gaussian (Kalman) analysis of ``y`` with ``A``
  linearized at the prior mean. With ``Gamma`` the posterior is not confined to
  the generator's range, so it stays consistent when the truth is off it;
- :func:`latent_mcmc` — MALA or HMC chains in latent space started from Laplace
  draws and preconditioned by the Laplace covariance (multimodal posteriors that
  the Laplace approximation reports as one mode);
- :func:`flow_map` and :func:`flow_mcmc` — inference directly in state space
  with a prior whose density ``log p(x)`` is tractable (a RealNVP flow, the
  linear-Gaussian prior): the MAP by L-BFGS and MALA/HMC on
  ``log p(x) + log p(y | x)``, and :func:`flow_laplace`, the Laplace approximation
  at that MAP.

With a linear ``G`` and a linear ``A`` the MAP, the latent Laplace approximation
and the variable-space Laplace analysis are the exact Gaussian posterior.

Every function needs a differentiable observation operator
(:func:`~latentda.autodiff.check_differentiable`): a clear error names the method
and the gradient-free alternatives otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentda._validate import check_ensemble, check_int
from latentda.autodiff import (
    SUPPORTED_OPERATORS,
    batch_jacobian,
    torch_operator,
    whitened_forward,
    whitener,
)
from latentda.inference.gauss_newton import (
    GaussNewtonResult,
    LaplacePosterior,
    floored_inv_sqrt,
    gauss_newton,
    gauss_newton_inv_sqrt,
    laplace_posterior,
)
from latentda.observations import ObservationOperator

__all__ = ["FlowMAP", "LatentMAP", "LaplaceResult", "VariableLaplaceResult", "flow_laplace",
           "flow_map", "flow_mcmc", "latent_laplace", "latent_map", "latent_mcmc",
           "variable_space_laplace"]

F64 = torch.float64
#: what to use when the observation operator cannot be differentiated
GRADIENT_FREE = ("the ensemble filters (ETKF, EnKF, LETKF, HybridETKF) or the particle "
                 "filter, which only evaluate h")


def require_differentiable(operator: ObservationOperator, method: str) -> None:
    """Refuse an operator that torch cannot differentiate, naming ``method`` and the fix."""
    if type(operator) not in SUPPORTED_OPERATORS:
        names = ", ".join(c.__name__ for c in SUPPORTED_OPERATORS)
        raise ValueError(f"{method} needs gradients of the observation operator, but "
                         f"{type(operator).__name__} cannot be differentiated in torch "
                         f"(supported: {names}); use {GRADIENT_FREE} instead")


def _setup(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, method: str,
           jacobian: str) -> tuple[np.ndarray, torch.Tensor, Any, str]:
    require_differentiable(operator, method)
    if operator.state_dim != prior.state_dim:
        raise ValueError(f"observation operator reads states of size {operator.state_dim}, but "
                         f"the prior generates states of size {prior.state_dim}; build the "
                         f"operator for n={prior.state_dim}")
    m = operator.obs_dim
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape != (m,) or not np.isfinite(y).all():
        raise ValueError(f"y must be a finite vector of length m = {m} (got shape {y.shape})")
    W = torch.as_tensor(whitener(R, m), dtype=F64, device=prior.device)
    h = torch_operator(operator, prior.device, F64)
    if jacobian == "auto":
        jacobian = "fd" if prior.dtype == torch.float32 else "forward"
    if jacobian not in ("forward", "fd"):
        raise ValueError(f"jacobian must be 'auto', 'forward' or 'fd' (got {jacobian!r})")
    return y, W, h, jacobian


def _whiten(v: np.ndarray, W: torch.Tensor) -> np.ndarray:
    """``R^{-1/2} v`` for a vector ``(m,)`` or the columns of a matrix ``(m, r)``."""
    Wn = W.cpu().numpy()
    if Wn.ndim == 2:
        return Wn @ v
    return v * Wn if v.ndim == 1 else Wn[:, None] * v


def _decoder_jacobian(prior: Any, z: np.ndarray, jacobian: str) -> np.ndarray:
    """``dG/dz`` at ``z``, shape ``(n, k)``, float64."""
    def G(zz: torch.Tensor) -> torch.Tensor:
        return prior.decode_t(zz.to(prior.dtype)).to(F64)

    zt = torch.as_tensor(z, dtype=F64, device=prior.device)[None]
    return batch_jacobian(G, zt, jacobian, prior.dtype)[0].cpu().numpy()


@dataclass(frozen=True)
class LatentMAP:
    """The latent MAP of one observation vector.

    Attributes
    ----------
    z : ndarray, shape (k,)
    x : ndarray, shape (n,)
        ``G(z)``.
    cost : float
        ``1/2 ||z||^2 + 1/2 misfit``.
    misfit : float
        ``||R^{-1/2}(y - A(G(z)))||^2``.
    M : ndarray, shape (m, k)
        The whitened observed Jacobian ``R^{-1/2} A J_G(z)``.
    converged : bool
    iterations : int
    grad_norm : float
    """

    z: np.ndarray
    x: np.ndarray
    cost: float
    misfit: float
    M: np.ndarray
    converged: bool
    iterations: int
    grad_norm: float


def latent_map(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, *,
               z0: np.ndarray | None = None, steps: int = 50, tol: float = 1e-8,
               jacobian: str = "auto") -> LatentMAP:
    """The latent MAP ``argmin_z 1/2 ||z||^2 + 1/2 ||R^{-1/2}(y - A(G(z)))||^2``.

    Parameters
    ----------
    prior : latentda.priors.Prior
    operator : ObservationOperator
        ``A``, differentiable (Identity, Subset, Linear, Arctan, Square).
    y : ndarray, shape (m,)
    R : float, ndarray (m,) or (m, m), or GaussianNoise
        Observation-error variance(s) or covariance.
    z0 : ndarray, shape (k,), optional
        Start (default 0, the prior mean). A nonlinear problem may have several
        local minima: the result is the one reached from ``z0``.
    steps : int
        Gauss–Newton budget.
    tol : float
        Gradient tolerance relative to ``1 + ||z||``.
    jacobian : {"auto", "forward", "fd"}
        ``auto``: forward differences for float32 priors, forward mode otherwise.

    Returns
    -------
    LatentMAP
    """
    res, *_ = _solve_map(prior, operator, y, R, "latent_map", z0, steps, tol, jacobian)
    return _as_map(prior, res)


def _solve_map(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, method: str,
               z0: np.ndarray | None, steps: int, tol: float, jacobian: str,
               ) -> tuple[GaussNewtonResult, Any, np.ndarray, str]:
    """The latent MAP problem of ``method``: result, whitened map ``F``, ``yw``, Jacobian kind."""
    y, W, h, jac = _setup(prior, operator, y, R, method, jacobian)
    F = whitened_forward(prior, h, W)
    yw = _whiten(y, W)
    res = gauss_newton(F, yw, prior.latent_dim, w0=z0, steps=steps, tol=tol, jacobian=jac,
                       dtype=prior.dtype, device=prior.device)
    return res, F, yw, jac


def _as_map(prior: Any, res: GaussNewtonResult) -> LatentMAP:
    x = prior.decode(res.w[None])[0]
    return LatentMAP(z=res.w, x=x, cost=res.cost, misfit=res.misfit, M=res.jacobian,
                     converged=res.converged, iterations=res.iterations,
                     grad_norm=res.grad_norm)


@dataclass(frozen=True)
class LaplaceResult:
    """A Laplace approximation, in latent and state space.

    Attributes
    ----------
    map : LatentMAP
    z_mean : ndarray, shape (k,)
    z_cov : ndarray, shape (k, k)
        ``H^{-1}``.
    x_mean : ndarray, shape (n,)
        ``G(z*)`` (``+ mu_eta`` with ``add_residual``).
    x_cov : ndarray, shape (n, n)
        ``J_G H^{-1} J_G^T`` (``+ Gamma`` with ``add_residual``).
    damping : float
        Eigenvalue raise of an indefinite exact Hessian (0: none).
    posterior : LaplacePosterior
        The approximation in latent coordinates (``draw`` gives codes).
    """

    map: LatentMAP
    z_mean: np.ndarray
    z_cov: np.ndarray
    x_mean: np.ndarray
    x_cov: np.ndarray
    damping: float
    posterior: LaplacePosterior


def latent_laplace(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, *,
                   add_residual: bool = False, hessian: str = "gauss_newton",
                   z0: np.ndarray | None = None, steps: int = 50, tol: float = 1e-8,
                   jacobian: str = "auto") -> LaplaceResult:
    """The Laplace approximation of the latent posterior, pushed to state space.

    Parameters
    ----------
    add_residual : bool
        The noisy-manifold prior: add the prior's residual mean and covariance
        ``Gamma`` to the state-space mean and covariance.
    hessian : {"gauss_newton", "exact"}
        See :func:`~latentda.inference.gauss_newton.laplace_posterior`.
    Other parameters as :func:`latent_map`.

    Returns
    -------
    LaplaceResult
    """
    res, F, yw, jac = _solve_map(prior, operator, y, R, "latent_laplace", z0, steps, tol,
                                 jacobian)
    post = laplace_posterior(res, hessian=hessian, F=F, yw=yw, device=prior.device)
    Jg = _decoder_jacobian(prior, res.w, jac)
    Lx = Jg @ post.sqrt_cov
    x_cov = Lx @ Lx.T
    mp = _as_map(prior, res)
    x_mean = mp.x.copy()
    if add_residual:
        x_mean = x_mean + prior.residual_mean
        x_cov = x_cov + _full_residual_cov(prior)
    return LaplaceResult(map=mp, z_mean=res.w.copy(), z_cov=post.cov, x_mean=x_mean,
                         x_cov=x_cov, damping=post.damping, posterior=post)


def _full_residual_cov(prior: Any) -> np.ndarray:
    G = np.asarray(prior.residual_cov, dtype=np.float64)
    return np.diag(G) if G.ndim == 1 else G


@dataclass(frozen=True)
class VariableLaplaceResult:
    """The variable-space Laplace analysis (see :func:`variable_space_laplace`).

    Attributes
    ----------
    x_mean, x_cov : ndarray
        Posterior mean ``(n,)`` and covariance ``(n, n)`` of the state.
    prior_mean, prior_cov : ndarray
        The linearized-generator prior.
    z0 : ndarray, shape (k,)
        The linearization point.
    """

    x_mean: np.ndarray
    x_cov: np.ndarray
    prior_mean: np.ndarray
    prior_cov: np.ndarray
    z0: np.ndarray


def variable_space_laplace(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any,
                           *, z0: np.ndarray | None = None, residual: bool = True,
                           jacobian: str = "auto") -> VariableLaplaceResult:
    """Linear-Gaussian analysis of ``y`` under the linearized-generator prior.

    The prior ``x ~ N(mu, C)`` with ``mu = G(z0) - J_G z0 [+ mu_eta]`` and
    ``C = L L^T``, ``L = [J_G, Gamma^{1/2}]`` (``J_G`` at ``z0``); ``A`` is
    linearized at ``mu``. The analysis is computed in the coordinates of ``L``
    (so a singular ``C`` is no problem): with ``Y = R^{-1/2} A L`` and the
    innovation ``d = R^{-1/2}(y - A(mu))``, ``x_a = mu + L (I + Y^T Y)^{-1} Y^T d``
    and ``P_a = L (I + Y^T Y)^{-1} L^T`` — the Kalman analysis.

    Parameters
    ----------
    z0 : ndarray, shape (k,), optional
        Linearization point (default 0, the latent prior mean). The latent MAP is
        another natural choice.
    residual : bool
        Include the prior's residual ``N(mu_eta, Gamma)`` (the noisy-manifold prior).

    Returns
    -------
    VariableLaplaceResult
    """
    y, W, h, jac = _setup(prior, operator, y, R, "variable_space_laplace", jacobian)
    k = prior.latent_dim
    z0 = np.zeros(k) if z0 is None else check_ensemble("z0", z0, k)[0]
    Jg = _decoder_jacobian(prior, z0, jac)
    mu = prior.decode(z0[None])[0] - Jg @ z0
    cols = [Jg]
    if residual:
        mu = mu + prior.residual_mean
        G = _full_residual_cov(prior)
        lam, V = np.linalg.eigh(0.5 * (G + G.T))
        keep = lam > 1e-12 * max(float(lam[-1]), 0.0)
        if keep.any():
            cols.append(V[:, keep] * np.sqrt(lam[keep]))
    L = np.hstack(cols)
    mu_t = torch.as_tensor(mu, dtype=F64, device=prior.device)[None]
    A = batch_jacobian(h, mu_t, "forward")[0].cpu().numpy()  # (m, n)
    with torch.no_grad():
        h_mu = h(mu_t)[0].cpu().numpy()
    Y = _whiten(A @ L, W)
    d = _whiten(y - h_mu, W)
    Hs = gauss_newton_inv_sqrt(Y)  # (I + Y^T Y)^{-1/2}
    w_a = Hs @ (Hs @ (Y.T @ d))
    Lp = L @ Hs
    return VariableLaplaceResult(x_mean=mu + L @ w_a, x_cov=Lp @ Lp.T, prior_mean=mu,
                                 prior_cov=L @ L.T, z0=z0)


def latent_mcmc(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, *,
                sampler: str = "mala", chains: int = 64, steps: int = 400,
                burn_in: int | None = None, z_init: np.ndarray | None = None,
                precondition: bool = True, seed: int = 0, jacobian: str = "auto",
                **sampler_kw: Any) -> Any:
    """MALA or HMC in latent space on ``log p(z | y)``.

    Chains start from draws of the Laplace approximation (or ``z_init``,
    ``(chains, k)``, e.g. prior draws for a multimodal posterior) and, with
    ``precondition``, propose with the Laplace covariance ``H^{-1}``.

    Returns
    -------
    latentda.inference.mcmc.MCMCResult
        Samples of ``z``, shape ``(chains, kept, k)``; decode them with ``prior.decode``.
    """
    from latentda.inference.mcmc import hmc, mala

    y, W, h, jac = _setup(prior, operator, y, R, "latent_mcmc", jacobian)
    if z_init is not None:
        z_init = check_ensemble("z_init", z_init, prior.latent_dim)
        chains = z_init.shape[0]
    chains = check_int("chains", chains, min_value=1)
    k = prior.latent_dim
    F = whitened_forward(prior, h, W)
    yw_np = _whiten(y, W)
    yw = torch.as_tensor(yw_np, dtype=F64, device=prior.device)
    rng = np.random.default_rng(seed)
    post = None
    if precondition or z_init is None:
        res = gauss_newton(F, yw_np, k, jacobian=jac, dtype=prior.dtype, device=prior.device)
        post = laplace_posterior(res)
    Z0 = post.draw(chains, rng, center=False) if z_init is None else z_init

    def log_post(z: torch.Tensor) -> torch.Tensor:
        r = yw - F(z)
        return -0.5 * ((z * z).sum(1) + (r * r).sum(1))

    return _run_sampler(sampler, mala, hmc, log_post, Z0, post, precondition, steps, burn_in,
                        seed, prior.device, sampler_kw)


def _run_sampler(sampler: str, mala: Any, hmc: Any, log_post: Any, X0: np.ndarray,
                 post: LaplacePosterior | None, precondition: bool, steps: int,
                 burn_in: int | None, seed: int, device: Any, kw: dict[str, Any]) -> Any:
    if sampler not in ("mala", "hmc"):
        raise ValueError(f"sampler must be 'mala' or 'hmc' (got {sampler!r})")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    x0 = torch.as_tensor(X0, dtype=F64, device=device)
    pre = None if not precondition or post is None else post.sqrt_cov
    run = mala if sampler == "mala" else hmc
    return run(log_post, x0, steps=steps, burn_in=burn_in, precond=pre, generator=g, **kw)


@dataclass(frozen=True)
class FlowMAP:
    """The state-space MAP under a tractable prior density.

    Attributes
    ----------
    x : ndarray, shape (n,)
    log_posterior : float
        ``log p(x) + log p(y | x)`` up to the constant of the likelihood.
    converged : bool
    iterations : int
    """

    x: np.ndarray
    log_posterior: float
    converged: bool
    iterations: int


def _state_log_post(prior: Any, h: Any, W: torch.Tensor, y: np.ndarray) -> Any:
    yt = torch.as_tensor(y, dtype=F64, device=prior.device)
    diag = W.ndim == 1

    def log_post(x: torch.Tensor) -> torch.Tensor:
        r = yt - h(x)
        r = r * W if diag else r @ W.T
        return prior.log_prob_t(x.to(prior.dtype)).to(F64) - 0.5 * (r * r).sum(1)

    return log_post


def _check_tractable(prior: Any, method: str) -> None:
    try:
        with torch.no_grad():
            prior.log_prob_t(prior.shift[None])
    except NotImplementedError:
        raise ValueError(f"{method} needs a prior with a tractable density log p(x) (the flow "
                         f"or linear-Gaussian family; got {type(prior).__name__}); use "
                         f"latent_map / latent_laplace / latent_mcmc in latent space "
                         f"instead") from None


def flow_map(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, *,
             x0: np.ndarray | None = None, steps: int = 200, tol: float = 1e-9,
             ) -> FlowMAP:
    """``argmax_x log p(x) + log p(y | x)`` by L-BFGS (strong Wolfe line search).

    Parameters
    ----------
    prior : Prior
        A prior with a tractable density (``log_prob_t``): the flow family.
    x0 : ndarray, shape (n,), optional
        Start (default: ``G(0)``, the decoded latent mean).
    steps : int
        Most L-BFGS iterations.
    tol : float
        Gradient tolerance (``tolerance_grad`` of L-BFGS); L-BFGS also stops when the
        log posterior changes by less than 1e-6 between iterations (1e-14 for a
        float64 prior), the resolution of the density.
    """
    y, W, h, _ = _setup(prior, operator, y, R, "flow_map", "forward")
    _check_tractable(prior, "flow_map")
    steps = check_int("steps", steps, min_value=1)
    n = prior.state_dim
    start = prior.decode(np.zeros((1, prior.latent_dim)))[0] if x0 is None else \
        check_ensemble("x0", x0, n)[0]
    x = torch.as_tensor(start, dtype=F64, device=prior.device).clone().requires_grad_(True)
    log_post = _state_log_post(prior, h, W, y)
    # a float32 density cannot resolve changes below ~1e-6 of the log posterior
    change = 1e-14 if prior.dtype == torch.float64 else 1e-6
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=steps, tolerance_grad=tol,
                            tolerance_change=change, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -log_post(x[None])[0]
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        lp = log_post(x[None])[0]
        g, = torch.autograd.grad(lp, x)
    lp = lp.detach()
    state = opt.state[opt._params[0]]
    iters = int(state.get("n_iter", 0))
    return FlowMAP(x=x.detach().cpu().numpy(), log_posterior=float(lp),
                   converged=bool(g.abs().max() <= 10 * tol * max(1.0, float(lp.abs()))
                                  or iters < steps), iterations=iters)


def flow_laplace(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, *,
                 x0: np.ndarray | None = None, steps: int = 200) -> LaplacePosterior:
    """The Laplace approximation in state space at the :func:`flow_map` MAP.

    The covariance is the inverse autograd Hessian of ``-log p(x | y)``, its
    eigenvalues floored (``damping`` > 0) where it is not positive definite.

    Returns
    -------
    LaplacePosterior
        ``mean`` the MAP state ``(n,)``, ``sqrt_cov`` the symmetric square root of
        the covariance, ``cov`` the covariance.
    """
    y, W, h, _ = _setup(prior, operator, y, R, "flow_laplace", "forward")
    xm = torch.as_tensor(flow_map(prior, operator, y, R, x0=x0, steps=steps).x, dtype=F64,
                         device=prior.device)
    log_post = _state_log_post(prior, h, W, y)
    with torch.enable_grad():
        H = torch.autograd.functional.hessian(lambda x: -log_post(x[None])[0], xm)
    sqrt_cov, damping = floored_inv_sqrt(H.cpu().numpy(), 1e-8)
    return LaplacePosterior(xm.cpu().numpy(), sqrt_cov, damping, "exact")


def flow_mcmc(prior: Any, operator: ObservationOperator, y: np.ndarray, R: Any, *,
              sampler: str = "mala", chains: int = 32, steps: int = 400,
              burn_in: int | None = None, x_init: np.ndarray | None = None,
              precondition: bool = True, seed: int = 0, **sampler_kw: Any) -> Any:
    """MALA or HMC directly in state space on ``log p(x) + log p(y | x)``.

    Chains start from ``x_init`` (``(C, n)``, which sets the number of chains) or
    from prior samples. With ``precondition`` the proposals use the Laplace
    covariance at the MAP (:func:`flow_map`): the inverse of the autograd Hessian of
    ``-log p(x | y)``, its eigenvalues floored when it is not positive definite.

    Returns
    -------
    latentda.inference.mcmc.MCMCResult
        Samples of ``x``, shape ``(chains, kept, n)``.
    """
    from latentda.inference.mcmc import hmc, mala

    y, W, h, _ = _setup(prior, operator, y, R, "flow_mcmc", "forward")
    _check_tractable(prior, "flow_mcmc")
    if x_init is not None:
        x_init = check_ensemble("x_init", x_init, prior.state_dim)
        chains = x_init.shape[0]
    chains = check_int("chains", chains, min_value=1)
    X0 = prior.sample(chains, seed=seed) if x_init is None else x_init
    log_post = _state_log_post(prior, h, W, y)
    post = flow_laplace(prior, operator, y, R) if precondition else None
    return _run_sampler(sampler, mala, hmc, log_post, X0, post, precondition, steps, burn_in,
                        seed, prior.device, sampler_kw)
