"""Differentiation through generative priors and observation operators (torch).

Shared by the OOD residual (:mod:`latentda.ood`), the Bayesian inference toolkit
(:mod:`latentda.inference`) and the gradient-based analysis methods:

- :func:`torch_operator` / :func:`check_differentiable`: the built-in observation
  operators as differentiable torch functions;
- :func:`whitener`: ``R^{-1/2}`` as a vector (diagonal ``R``) or an inverse
  Cholesky factor;
- :func:`forward_jacobian` (exact, forward mode), :func:`fd_jacobian` (forward
  differences, one batched call) and :func:`batch_jacobian` (either, by name) of
  a batched map ``(B, k) -> (B, M)``;
- :func:`whitened_forward`: ``z -> R^{-1/2} h(G(z))`` in float64 for a prior.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from latentda.observations import (
    Arctan,
    GaussianNoise,
    Identity,
    Linear,
    ObservationOperator,
    Square,
    Subset,
)

__all__ = ["SUPPORTED_OPERATORS", "batch_jacobian", "central_jacobian", "check_differentiable",
           "fd_jacobian", "forward_jacobian", "torch_operator", "whitened_forward", "whitener"]

#: observation operators with a torch translation (exact types; subclasses may change ``h``)
SUPPORTED_OPERATORS: tuple[type[ObservationOperator], ...] = (Identity, Subset, Linear, Arctan,
                                                              Square)

def check_differentiable(operator: ObservationOperator) -> None:
    """Check that :func:`torch_operator` can translate ``operator`` (call before cycling).

    Raises
    ------
    ValueError
        If ``operator`` is not one of :data:`SUPPORTED_OPERATORS` (exact type): the
        prior cannot be differentiated through it.
    """
    if type(operator) not in SUPPORTED_OPERATORS:
        names = ", ".join(c.__name__ for c in SUPPORTED_OPERATORS)
        raise ValueError(
            f"observation operator {type(operator).__name__} cannot be differentiated through "
            f"in torch; supported observation operators are {names} (express a custom "
            "linear operator as Linear(op.matrix()))"
        )


def torch_operator(operator: ObservationOperator, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float64,
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable torch version of an observation operator.

    Parameters
    ----------
    operator : ObservationOperator
        :class:`~latentda.observations.Identity`, ``Subset``, ``Linear``, ``Arctan``
        or ``Square``.
    device, dtype
        Where and in which precision the constants (indices, matrix) live.

    Returns
    -------
    callable
        ``h(X)`` for a tensor batch ``(N, n)``, returning ``(N, m)``; it supports
        reverse- and forward-mode differentiation and ``torch.func`` transforms.

    Raises
    ------
    ValueError
        For any other operator (see :func:`check_differentiable`).
    """
    check_differentiable(operator)
    device = torch.device(device)
    if isinstance(operator, Identity):
        return lambda x: x
    if isinstance(operator, Linear):
        H = torch.as_tensor(operator.matrix(), dtype=dtype, device=device)
        return lambda x: x @ H.T
    idx = torch.as_tensor(operator.indices, dtype=torch.long, device=device)
    if isinstance(operator, Subset):
        return lambda x: x.index_select(-1, idx)
    if isinstance(operator, Arctan):
        return lambda x: torch.atan(x.index_select(-1, idx))
    return lambda x: torch.square(x.index_select(-1, idx))  # Square


def whitener(R: np.ndarray | float | GaussianNoise, m: int) -> np.ndarray:
    """``R^{-1/2}`` as a vector (diagonal R) or the inverse Cholesky factor (full R)."""
    if isinstance(R, GaussianNoise):
        R = np.diag(R.cov) if R.is_diagonal else R.cov
    R = np.asarray(R)
    if R.dtype.kind not in "biuf":
        raise ValueError(f"R must be a real numeric array (got dtype {R.dtype})")
    R = R.astype(np.float64)
    if not np.all(np.isfinite(R)):
        raise ValueError("R must be finite (it contains NaN or inf)")
    if R.ndim == 0:
        R = np.full(m, float(R))
    if R.ndim == 1:
        if R.shape != (m,):
            raise ValueError(f"R as observation-error variances must have shape ({m},) "
                             f"(got {R.shape}); give one variance per observation")
        if np.any(R <= 0):
            raise ValueError("R variances must be > 0 (R must be positive definite)")
        return 1.0 / np.sqrt(R)
    if R.shape != (m, m):
        raise ValueError(f"R must be a ({m},) vector of variances or an ({m}, {m}) covariance "
                         f"matrix (got shape {R.shape})")
    if not np.allclose(R, R.T, rtol=1e-10, atol=1e-12 * np.abs(R).max()):
        raise ValueError("R must be symmetric; use (R + R.T) / 2")
    try:
        L = np.linalg.cholesky(R)
    except np.linalg.LinAlgError:
        raise ValueError("R must be positive definite (its Cholesky factorisation failed); "
                         "add a small multiple of the identity") from None
    return np.linalg.solve(L, np.eye(m))  # L^{-1}: lower triangular


def forward_jacobian(F: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Per-problem Jacobians ``(B, M, k)`` of a batched map ``F: (B, k) -> (B, M)``.

    Each output row must depend on its own input row only (true of every prior).
    Forward mode (``k`` directions, vectorised); reverse mode if a layer lacks a
    forward-mode rule.
    """
    k = z.shape[1]
    V = torch.eye(k, dtype=z.dtype, device=z.device).unsqueeze(1).expand(k, *z.shape)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch loads its forward-mode decompositions through torch.jit.script once
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*",
                                    category=DeprecationWarning)
            Jt = torch.func.vmap(lambda v: torch.func.jvp(F, (z,), (v,))[1])(V)
        return Jt.permute(1, 2, 0)
    except (RuntimeError, NotImplementedError):  # pragma: no cover - layer without jvp rule
        with torch.enable_grad():
            J = torch.autograd.functional.jacobian(lambda u: F(u).sum(0), z, vectorize=True)
        return J.permute(1, 0, 2).detach()


def fd_jacobian(F: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                 rel_step: float) -> torch.Tensor:
    """Forward-difference Jacobians ``(B, M, k)`` from one batched call of ``F``.

    The step of problem ``b`` is ``rel_step * max(1, max|z_b|)``: about the square
    root of the decoder's machine epsilon, the usual forward-difference optimum.
    """
    B, k = z.shape
    step = rel_step * z.abs().amax(1).clamp_min(1.0)  # (B,)
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    pts = z.unsqueeze(1) + step[:, None, None] * eye  # (B, k, k)
    with torch.no_grad():
        out = F(torch.cat([z, pts.reshape(B * k, k)]))
    f0, fk = out[:B], out[B:].reshape(B, k, -1)
    return ((fk - f0.unsqueeze(1)) / step[:, None, None]).transpose(1, 2)


def central_jacobian(F: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                     rel_step: float) -> torch.Tensor:
    """Central-difference Jacobians ``(B, M, k)`` from one batched call of ``F``.

    The step of problem ``b`` is ``rel_step * max(1, max|z_b|)``: about the cube root
    of the machine epsilon of ``F``'s computation, the central-difference optimum (its
    truncation error is second order in the step, so the step can be larger than a
    forward difference's and the round-off of a float32 ``F`` matters less).
    """
    B, k = z.shape
    step = rel_step * z.abs().amax(1).clamp_min(1.0)  # (B,)
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    d = step[:, None, None] * eye
    pts = torch.cat([(z.unsqueeze(1) + d).reshape(B * k, k),
                     (z.unsqueeze(1) - d).reshape(B * k, k)])
    with torch.no_grad():
        out = F(pts)
    fp, fm = out[:B * k].reshape(B, k, -1), out[B * k:].reshape(B, k, -1)
    return ((fp - fm) / (2.0 * step[:, None, None])).transpose(1, 2)


def batch_jacobian(F: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                   method: str = "forward", dtype: torch.dtype = torch.float64,
                   ) -> torch.Tensor:
    """Per-problem Jacobians ``(B, M, k)`` of ``F: (B, k) -> (B, M)`` at ``z``.

    Parameters
    ----------
    F : callable
        Batched map whose output row ``b`` depends on input row ``b`` only.
    z : Tensor, shape (B, k)
    method : {"forward", "fd", "central"}
        Exact forward mode, forward differences (one batched call of ``F``, step the
        square root of the machine epsilon of ``dtype``), or central differences (one
        batched call of ``2 k B`` points, step its cube root).
    dtype : torch.dtype
        Precision of the computation inside ``F`` (sets the difference step).
    """
    if method == "forward":
        return forward_jacobian(F, z)
    if method == "fd":
        return fd_jacobian(F, z, float(np.sqrt(torch.finfo(dtype).eps)))
    if method == "central":
        return central_jacobian(F, z, float(np.cbrt(torch.finfo(dtype).eps)))
    raise ValueError(f"jacobian must be 'forward', 'fd' or 'central' (got {method!r})")


def whitened_forward(prior, h: Callable[[torch.Tensor], torch.Tensor], W: torch.Tensor,
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z -> R^{-1/2} h(G(z))``: float64 codes in, float64 whitened observations out.

    Parameters
    ----------
    prior : latentda.priors.Prior
        Decodes in its own dtype on its device.
    h : callable
        Differentiable observation function (:func:`torch_operator`).
    W : Tensor
        ``R^{-1/2}`` from :func:`whitener`, a vector ``(m,)`` or a matrix ``(m, m)``.
    """
    diag = W.ndim == 1

    def hw(z: torch.Tensor) -> torch.Tensor:
        v = h(prior.decode_t(z.to(prior.dtype)).to(torch.float64))
        return v * W if diag else v @ W.T

    return hw
