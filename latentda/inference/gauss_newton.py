"""Gauss–Newton MAP and the Laplace approximation of a Gaussian-prior inverse problem.

Every gradient-based analysis of the package reduces to one problem. The
analysed variables ``v`` (state ``x``, latent code ``z``, or ``[z, eta]``) have a
Gaussian prior ``N(m, S S^T)`` with square root ``S`` (``d x r``), written in
*whitened prior coordinates* ``w``::

    v = m + S w,   w ~ N(0, I_r)

and the whitened forward map ``F(w) = R^{-1/2} h(v(w))`` sends them to the
``m_obs`` observations ``y_w = R^{-1/2} y``. The negative log posterior is

    J(w) = 1/2 ||w||^2 + 1/2 ||y_w - F(w)||^2.

:func:`gauss_newton` minimises ``J`` (the MAP, "latent 3D-Var" when ``v = z``) by
Levenberg–Marquardt-damped Gauss–Newton steps

    (I + J_F^T J_F + lambda I) dw = J_F^T (y_w - F(w)) - w,

with ``J_F = dF/dw`` (forward-mode or forward-difference Jacobian, ``m x r``);
``lambda`` starts at 0 (a pure Gauss–Newton step, whose matrix is always
positive definite here) and grows tenfold after a step that does not lower
``J``. It stops, converged, when the gradient norm ``||w - J_F^T (y_w - F)||``
falls below ``tol * (1 + ||w||)``, when a full Gauss–Newton step lowers ``J`` by
less than ``100 eps`` of a float32 ``F`` (relative; such a decoder's gradient
cannot be resolved further), or when no damped step lowers
``J`` (a stationary point); otherwise when the budget is spent, not converged.

:func:`laplace_posterior` is the Laplace approximation ``N(w*, H^{-1})`` at the
MAP. Its Hessian is the Gauss–Newton one, ``H = I + J_F^T J_F`` (symmetric,
eigenvalues >= 1, never singular), or, with ``hessian="exact"``, the autograd
Hessian of ``J``, which can be indefinite away from a minimum or at a saddle of
a multimodal posterior: its eigenvalues are then floored at ``floor * max(1,
lambda_max)`` (a damped solve), the largest raise is returned as
``damping`` and a :class:`HessianWarning` is issued. In the original variables
the covariance is ``S H^{-1} S^T``; :class:`LaplacePosterior` keeps the
symmetric square root ``H^{-1/2}`` so that draws cost one matrix product.

A linear ``F`` makes ``J`` quadratic: one Gauss–Newton step reaches the exact
posterior mean and ``H^{-1}`` is the exact posterior covariance (the Kalman
analysis written in prior-whitened coordinates), which the tests check to 1e-8.
One step from ``w = 0`` with a nonlinear ``F`` is the analysis of the problem
linearized at the prior mean (the variable-space Laplace prior of
:mod:`latentda.inference.latent`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from latentda._validate import check_float, check_int
from latentda.autodiff import batch_jacobian

__all__ = ["GaussNewtonResult", "HessianWarning", "LaplacePosterior", "floored_inv_sqrt",
           "gauss_newton", "gauss_newton_inv_sqrt", "laplace_posterior"]

F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)


class HessianWarning(RuntimeWarning):
    """A Hessian was singular or indefinite and its eigenvalues were floored."""


@dataclass(frozen=True)
class GaussNewtonResult:
    """The MAP of ``J(w)`` (see the module docstring).

    Attributes
    ----------
    w : ndarray, shape (r,)
        The minimiser in whitened prior coordinates.
    cost : float
        ``J(w)``.
    misfit : float
        ``||y_w - F(w)||^2`` (twice the observation part of ``J``).
    jacobian : ndarray, shape (m, r)
        ``dF/dw`` at ``w``.
    iterations : int
        Steps tried (accepted or rejected).
    converged : bool
        Whether a stopping test (gradient, precision or stationarity; see the module
        docstring) was met within the budget.
    grad_norm : float
        ``||grad J(w)||`` at the end.
    """

    w: np.ndarray
    cost: float
    misfit: float
    jacobian: np.ndarray
    iterations: int
    converged: bool
    grad_norm: float


def _as_f64(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a,
                           dtype=F64, device=device)


def gauss_newton(F: Callable[[torch.Tensor], torch.Tensor], yw: np.ndarray | torch.Tensor,
                 r: int, *, w0: np.ndarray | None = None, steps: int = 20,
                 tol: float = 1e-8, jacobian: str = "forward",
                 dtype: torch.dtype = F64, device: str | torch.device = "cpu",
                 ) -> GaussNewtonResult:
    """Minimise ``1/2 ||w||^2 + 1/2 ||y_w - F(w)||^2`` by damped Gauss–Newton.

    Parameters
    ----------
    F : callable
        Whitened forward map on a batch ``(B, r) -> (B, m)`` (float64 tensors).
    yw : array, shape (m,)
        Whitened observations ``R^{-1/2} y``.
    r : int
        Number of whitened prior coordinates.
    w0 : ndarray, shape (r,), optional
        Start (default: the prior mean, ``w = 0``).
    steps : int
        Most steps (>= 1). ``steps=1`` from ``w = 0`` is the linearized analysis.
    tol : float
        Gradient tolerance relative to ``1 + ||w||``.
    jacobian : {"forward", "fd", "central"}
        Exact forward-mode Jacobian, forward or central differences.
    dtype : torch.dtype
        Precision inside ``F`` (sets the difference step of ``fd`` and ``central``).
    device : str or torch.device

    Returns
    -------
    GaussNewtonResult
    """
    r = check_int("r", r, min_value=1)
    steps = check_int("steps", steps, min_value=1)
    tol = check_float("tol", tol, positive=True)
    dev = torch.device(device)
    yw_t = _as_f64(yw, dev).reshape(-1)
    w = torch.zeros(r, dtype=F64, device=dev) if w0 is None else _as_f64(w0, dev).clone()
    if w.shape != (r,) or not torch.isfinite(w).all():
        raise ValueError(f"w0 must be a finite vector of length r = {r} (got {tuple(w.shape)})")
    eye = torch.eye(r, dtype=F64, device=dev)
    # float64: the gradient test decides; lower precisions stop when J stops improving
    ftol = 0.0 if dtype == F64 else 100.0 * float(torch.finfo(dtype).eps)

    def evaluate(wv: torch.Tensor) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            res = yw_t - F(wv[None])[0]
        return res, float(0.5 * (wv @ wv + res @ res))

    res, cost = evaluate(w)
    if not np.isfinite(cost):
        raise ValueError("the forward map is not finite at the starting point w0")
    lam = 0.0
    J = None
    grad = None
    it = 0
    converged = False
    for it in range(1, steps + 1):  # noqa: B007 - it is reported
        if J is None:
            J = batch_jacobian(F, w[None], jacobian, dtype)[0]  # (m, r)
            grad = w - J.T @ res
            if float(grad.norm()) <= tol * (1.0 + float(w.norm())):
                converged = True
                it -= 1
                break
        A = eye + J.T @ J
        if lam > 0:
            A = A + lam * eye
        dw = -torch.linalg.solve(A, grad)
        w_try = w + dw
        res_try, cost_try = evaluate(w_try)
        # accept a step that lowers J, or leaves it within round-off (near the minimum
        # J is flat to machine precision while the gradient still converges)
        if np.isfinite(cost_try) and cost_try <= cost + 8.0 * EPS * abs(cost):
            flat = lam <= 1.0 and cost - cost_try <= ftol * abs(cost)
            w, res, cost = w_try, res_try, cost_try
            J = None
            lam = lam / 10.0 if lam > 1e-12 else 0.0
            if flat:  # a full Gauss-Newton step gains nothing at F's precision
                converged = True
                break
        else:
            lam = 1.0 if lam == 0.0 else lam * 10.0
            if lam > 1e12:  # no descent even along a tiny gradient step: stationary
                converged = True
                break
    if J is None:
        J = batch_jacobian(F, w[None], jacobian, dtype)[0]
        grad = w - J.T @ res
        converged = converged or float(grad.norm()) <= tol * (1.0 + float(w.norm()))
    return GaussNewtonResult(w=w.cpu().numpy(), cost=cost, misfit=float(res @ res),
                             jacobian=J.cpu().numpy(), iterations=it, converged=converged,
                             grad_norm=float(grad.norm()))


@dataclass(frozen=True)
class LaplacePosterior:
    """The Gaussian ``N(w*, H^{-1})`` in whitened prior coordinates.

    Attributes
    ----------
    mean : ndarray, shape (r,)
        ``w*``.
    sqrt_cov : ndarray, shape (r, r)
        Symmetric ``H^{-1/2}``.
    damping : float
        Largest eigenvalue raise applied to the Hessian (0: none needed).
    hessian : str
        ``gauss_newton`` or ``exact``.
    """

    mean: np.ndarray
    sqrt_cov: np.ndarray
    damping: float
    hessian: str

    @property
    def cov(self) -> np.ndarray:
        """``H^{-1}``, shape (r, r)."""
        return self.sqrt_cov @ self.sqrt_cov

    def draw(self, n: int, rng: np.random.Generator, center: bool = True) -> np.ndarray:
        """``n`` draws ``w* + H^{-1/2} xi`` (``xi`` centered to mean 0 when ``center``)."""
        xi = rng.standard_normal((int(n), self.mean.size))
        if center and n > 1:
            xi -= xi.mean(axis=0)
        return self.mean + xi @ self.sqrt_cov

    def to_original(self, m: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``m + S w*`` and covariance ``S H^{-1} S^T`` of ``v = m + S w``."""
        L = S @ self.sqrt_cov
        return m + S @ self.mean, L @ L.T


def gauss_newton_inv_sqrt(J: np.ndarray) -> np.ndarray:
    """``(I + J^T J)^{-1/2}`` (symmetric) for a whitened Jacobian ``J`` of shape ``(m, r)``.

    With the thin SVD ``J = U diag(s) V^T``: ``I + V diag(1/sqrt(1 + s^2) - 1) V^T``
    (never singular; its eigenvalues lie in ``(0, 1]``). The Laplace covariance's
    square root, and the ETKF transform when ``J`` is the Jacobian along the
    forecast anomalies.
    """
    _, s, Vt = np.linalg.svd(J, full_matrices=False)
    return np.eye(J.shape[1]) + (Vt.T * (1.0 / np.sqrt(1.0 + s * s) - 1.0)) @ Vt


def floored_inv_sqrt(H: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """Symmetric ``H^{-1/2}`` with eigenvalues floored at ``floor * max(1, lambda_max)``.

    Returns the square root and the largest eigenvalue raise (0: ``H`` was safely
    positive definite).
    """
    lam, V = np.linalg.eigh(0.5 * (H + H.T))
    lo = floor * max(1.0, float(lam[-1]))
    damping = max(0.0, lo - float(lam[0]))
    lam = np.maximum(lam, lo)
    return (V / np.sqrt(lam)) @ V.T, damping


def laplace_posterior(result: GaussNewtonResult, *, hessian: str = "gauss_newton",
                      F: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      yw: np.ndarray | torch.Tensor | None = None, floor: float = 1e-8,
                      device: str | torch.device = "cpu") -> LaplacePosterior:
    """The Laplace approximation at a :func:`gauss_newton` MAP.

    Parameters
    ----------
    result : GaussNewtonResult
    hessian : {"gauss_newton", "exact"}
        ``gauss_newton``: ``I + J^T J`` from the result's Jacobian (no new
        evaluations). ``exact``: the autograd Hessian of ``J(w)`` (needs ``F``
        and ``yw``; ``F`` must be twice differentiable in torch).
    floor : float
        Relative eigenvalue floor of an indefinite or singular Hessian.

    Returns
    -------
    LaplacePosterior

    Warns
    -----
    HessianWarning
        When the exact Hessian had eigenvalues below the floor (they are raised to it).
    """
    floor = check_float("floor", floor, positive=True)
    J = result.jacobian
    if hessian == "gauss_newton":
        return LaplacePosterior(result.w.copy(), gauss_newton_inv_sqrt(J), 0.0, hessian)
    if hessian != "exact":
        raise ValueError(f"hessian must be 'gauss_newton' or 'exact' (got {hessian!r})")
    if F is None or yw is None:
        raise ValueError("hessian='exact' needs the forward map F and the whitened "
                         "observations yw")
    dev = torch.device(device)
    yw_t = _as_f64(yw, dev).reshape(-1)

    def cost(w: torch.Tensor) -> torch.Tensor:
        res = yw_t - F(w[None])[0]
        return 0.5 * (w @ w + res @ res)

    with torch.enable_grad():
        H = torch.autograd.functional.hessian(cost, _as_f64(result.w, dev)).cpu().numpy()
    sqrt_cov, damping = floored_inv_sqrt(H, floor)
    if damping > 0:
        warnings.warn(f"the Hessian of the negative log posterior is not positive definite "
                      f"at the MAP; its eigenvalues were raised by up to {damping:.3g} "
                      f"(a damped solve)", HessianWarning, stacklevel=2)
    return LaplacePosterior(result.w.copy(), sqrt_cov, damping, hessian)
