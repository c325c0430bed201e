"""Local identifiability of latent codes from observations, and VAE posterior collapse.

With a generative prior ``x = G(z)`` and observations ``y = A(x) + eps``,
``eps ~ N(0, R)``, the log-likelihood of the code near ``z*`` is governed by the
whitened observed Jacobian

.. math:: M = R^{-1/2} \\, J_A(G(z^*)) \\, J_G(z^*) \\qquad (m \\times k),

whose Gram matrix is the Fisher information ``I(z) = M^T M`` of ``z`` (for
``R = sigma^2 I`` it is ``J^T J / sigma^2``). Its singular values say how well
each latent direction is seen by the observations:

- directions in the numerical null space of ``M`` (singular values
  ``<= rtol * sigma_max``) are not identifiable: the likelihood is flat along them
  and the prior alone decides them;
- the Cramér–Rao lower bound ``diag(I^{-1})`` bounds the variance of any unbiased
  estimator of each coordinate from one set of observations; it is ``+inf`` for a
  coordinate touched by a null direction (see :func:`cramer_rao_bound` for the
  numerical rule);
- ``1 / sigma_max^2`` is the step of gradient descent on ``1/2 ||M dz - r||^2`` at
  which every mode decays without oscillating (steps ``< 2 / sigma_max^2`` converge).

:func:`observed_jacobian` builds ``M`` for a prior and a differentiable observation
operator (:mod:`latentda.autodiff`); :func:`identifiability` analyses one ``M``;
:func:`latent_identifiability` does it for a batch of codes (per-code singular
values, CRLB and rank, as the cycling engine stores them per analysis time).
:func:`posterior_collapse` checks a VAE prior for posterior collapse: coordinates
whose encoder posterior equals the prior ``N(0, 1)`` and how strongly the decoder
responds to each coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentda._validate import check_ensemble, check_float
from latentda.autodiff import batch_jacobian, torch_operator, whitened_forward, whitener
from latentda.observations import GaussianNoise, ObservationOperator

__all__ = ["CollapseReport", "Identifiability", "IdentifiabilityBatch", "cramer_rao_bound",
           "fisher_information", "identifiability", "latent_identifiability",
           "observed_jacobian", "posterior_collapse"]

#: about this many Jacobian entries (codes x outputs x latent) are formed at once
_CHUNK_ELEMENTS = 1 << 22

_JACOBIAN_METHODS = ("auto", "forward", "fd")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Identifiability:
    """Local identifiability of a latent code from one whitened Jacobian ``M`` (m, k).

    Attributes
    ----------
    singular_values : ndarray, shape (k,)
        Singular values of ``M``, descending; ``k - m`` zeros appended when ``m < k``.
    rank : int
        Numerical rank: singular values ``> rtol * sigma_max`` (0 when ``M == 0``).
    null_space : ndarray, shape (k, k - rank)
        Orthonormal basis of the non-identifiable latent directions.
    fisher : ndarray, shape (k, k)
        Fisher information ``I(z) = M^T M`` (``M`` is already whitened).
    crlb : ndarray, shape (k,)
        Cramér–Rao lower bound ``diag(I^{-1})`` per coordinate; ``+inf`` for a
        coordinate with a component in the null space.
    stable_step : float
        ``1 / sigma_max^2``: the largest gradient-descent step on
        ``1/2 ||M dz - r||^2`` that decays every mode monotonically (steps below
        ``2 / sigma_max^2`` converge); ``inf`` when ``M == 0``.
    """

    singular_values: np.ndarray
    rank: int
    null_space: np.ndarray
    fisher: np.ndarray
    crlb: np.ndarray
    stable_step: float


@dataclass(frozen=True)
class IdentifiabilityBatch:
    """Identifiability of a batch of ``B`` codes (see :func:`latent_identifiability`).

    Attributes
    ----------
    singular_values : ndarray, shape (B, k)
        Per-code singular values of the whitened Jacobian, descending (zero-padded).
    crlb : ndarray, shape (B, k)
        Per-code Cramér–Rao lower bounds (``+inf`` where not identifiable).
    rank : ndarray of int, shape (B,)
        Per-code numerical rank.
    """

    singular_values: np.ndarray
    crlb: np.ndarray
    rank: np.ndarray


@dataclass(frozen=True)
class CollapseReport:
    """Posterior-collapse diagnostics of a VAE prior on states ``X``.

    Attributes
    ----------
    kl_per_dim : ndarray, shape (k,)
        Average ``KL(q(z_j | x) || N(0, 1))`` over ``X`` per latent coordinate.
    active_units : int
        Coordinates whose encoder mean varies over ``X``: ``Var_x E_q[z_j] > var_threshold``.
    collapsed_dims : ndarray of int
        Indices of the coordinates with ``kl_per_dim < kl_threshold`` (inactive: the
        posterior is the prior, the code carries no information on ``x``).
    collapsed : bool
        True when every coordinate is collapsed.
    decoder_sensitivity : ndarray, shape (k,)
        RMS over ``X`` of ``||dG/dz_j||`` (physical units) at the encoder mean; 0 for a
        coordinate the decoder ignores.
    """

    kl_per_dim: np.ndarray
    active_units: int
    collapsed_dims: np.ndarray
    collapsed: bool
    decoder_sensitivity: np.ndarray


# --------------------------------------------------------------------------- validation


def _check_rtol(rtol: float) -> float:
    rtol = check_float("rtol", rtol)
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"rtol must lie strictly between 0 and 1 (got {rtol}); the default "
                         "1e-10 suits float64 Jacobians")
    return rtol


def _check_matrix(name: str, A: np.ndarray) -> np.ndarray:
    arr = np.asarray(A)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array (got dtype {arr.dtype}); convert "
                         "it with np.asarray(..., dtype=float)")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a 2-D matrix with both dimensions >= 1 (got shape "
                         f"{arr.shape}); pass one Jacobian, not a batch")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (it contains NaN or inf)")
    return arr


def _check_jacobian(jacobian: str, prior) -> str:
    if jacobian not in _JACOBIAN_METHODS:
        raise ValueError(f"jacobian must be 'auto', 'forward' or 'fd' (got {jacobian!r})")
    if jacobian == "auto":
        return "fd" if prior.dtype == torch.float32 else "forward"
    return jacobian


def _check_codes(prior, z: np.ndarray) -> np.ndarray:
    Z = check_ensemble("z", z, prior.latent_dim)
    if not np.all(np.isfinite(Z)):
        raise ValueError("z must be finite (it contains NaN or inf)")
    return Z


# --------------------------------------------------------------------------- linear algebra


def _spectrum(M: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched SVD of ``M`` (B, m, k): singular values (B, k), ``V^T`` (B, k, k), kept mask."""
    B, m, k = M.shape
    # full V only when m < k (U is then small); thin SVD otherwise (U would be m x m)
    _, s, Vt = np.linalg.svd(M, full_matrices=m < k)
    if m < k:
        s = np.concatenate([s, np.zeros((B, k - m))], axis=1)
    keep = s > rtol * s[:, :1]  # all False when M == 0
    return s, Vt, keep


def _crlb_from_eig(V: np.ndarray, lam: np.ndarray, keep: np.ndarray, rtol: float) -> np.ndarray:
    """``diag(F^{-1})`` from ``F = V diag(lam) V^T`` (batched: V (B, k, k), lam/keep (B, k)).

    Sums ``V_ij^2 / lam_j`` over the identifiable ``j``; ``+inf`` where the squared
    projection of ``e_i`` on the null space, ``sum_{j not kept} V_ij^2``, exceeds ``rtol``.
    """
    V2 = V * V
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    crlb = np.einsum("bij,bj->bi", V2, inv)
    null_mass = np.einsum("bij,bj->bi", V2, (~keep).astype(np.float64))
    crlb[null_mass > rtol] = np.inf
    return crlb


def identifiability(M: np.ndarray, rtol: float = 1e-10) -> Identifiability:
    """Local identifiability of the latent code from the whitened Jacobian ``M``.

    Parameters
    ----------
    M : ndarray, shape (m, k)
        Whitened observed Jacobian ``R^{-1/2} A J_G(z*)`` (:func:`observed_jacobian`).
    rtol : float
        Relative rank threshold on the singular values, in ``(0, 1)``.

    Returns
    -------
    Identifiability
        Singular values, rank, null space, Fisher information, CRLB, stable step.
        The CRLB is computed from the SVD of ``M`` (not from ``M^T M``, which would
        square the condition number), with the rule of :func:`cramer_rao_bound`
        applied to the singular vectors: ``+inf`` for coordinate ``i`` when its
        squared component in the null space exceeds ``rtol``.

    Raises
    ------
    ValueError
        If ``M`` is not a finite 2-D real matrix or ``rtol`` is not in ``(0, 1)``.
    """
    M = _check_matrix("M", M)
    rtol = _check_rtol(rtol)
    s, Vt, keep = _spectrum(M[None], rtol)
    s, V, keep = s[0], Vt[0].T, keep[0]
    rank = int(keep.sum())
    crlb = _crlb_from_eig(V[None], (s * s)[None], keep[None], rtol)[0]
    F = M.T @ M
    smax = float(s[0])
    return Identifiability(singular_values=s, rank=rank, null_space=V[:, rank:].copy(),
                           fisher=0.5 * (F + F.T), crlb=crlb,
                           stable_step=1.0 / smax ** 2 if smax > 0 else float("inf"))


def fisher_information(M: np.ndarray, R: np.ndarray | float | GaussianNoise | None = None,
                       ) -> np.ndarray:
    """Fisher information ``M^T R^{-1} M`` of the latent code.

    Parameters
    ----------
    M : ndarray, shape (m, k)
        Observed Jacobian ``A J_G(z*)``; already whitened when ``R`` is None.
    R : float, ndarray of shape (m,) or (m, m), GaussianNoise or None
        Observation-error covariance: a scalar variance ``sigma^2``, per-observation
        variances, a full SPD matrix; None when ``M`` is already whitened.

    Returns
    -------
    ndarray, shape (k, k)
        The symmetric positive semi-definite Fisher information.

    Raises
    ------
    ValueError
        If ``M`` is not a finite 2-D matrix, or ``R`` has the wrong shape or is not
        symmetric positive definite.
    """
    M = _check_matrix("M", M)
    if R is not None:
        W = whitener(R, M.shape[0])
        M = M * W[:, None] if W.ndim == 1 else W @ M
    F = M.T @ M
    return 0.5 * (F + F.T)


def cramer_rao_bound(F: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Cramér–Rao lower bound ``diag(F^{-1})`` per coordinate, ``+inf`` where not identifiable.

    With ``F = V diag(lam) V^T`` (eigen-decomposition), the eigenvalues
    ``lam_j > rtol * lam_max`` are identifiable and
    ``diag(F^{-1})_i = sum_j V_ij^2 / lam_j`` over them. Coordinate ``i`` is not
    identifiable, and gets ``+inf``, when its squared component in the null space,
    ``sum_{j: lam_j <= rtol lam_max} V_ij^2``, exceeds ``rtol`` (a component of norm
    above ``sqrt(rtol)``; smaller ones are rounding of the computed eigenvectors).
    ``F = 0`` gives ``+inf`` everywhere.

    Note that ``rtol`` applies here to eigenvalues of ``F`` (squared singular values
    of ``M``), and that forming ``F = M^T M`` loses the directions with singular values
    below about ``sqrt(eps) * sigma_max``: :func:`identifiability` works on ``M``.

    Parameters
    ----------
    F : ndarray, shape (k, k)
        Symmetric positive semi-definite Fisher information.
    rtol : float
        Relative eigenvalue threshold, in ``(0, 1)``.

    Returns
    -------
    ndarray, shape (k,)

    Raises
    ------
    ValueError
        If ``F`` is not a finite square symmetric positive semi-definite matrix, or
        ``rtol`` is not in ``(0, 1)``.
    """
    F = _check_matrix("F", F)
    rtol = _check_rtol(rtol)
    if F.shape[0] != F.shape[1]:
        raise ValueError(f"F must be a square (k, k) matrix (got shape {F.shape})")
    scale = float(np.abs(F).max())
    if not np.allclose(F, F.T, rtol=1e-10, atol=1e-12 * scale):
        raise ValueError("F must be symmetric; use (F + F.T) / 2")
    lam, V = np.linalg.eigh(0.5 * (F + F.T))
    lam_max = float(lam[-1])
    if lam[0] < -np.sqrt(np.finfo(np.float64).eps) * max(lam_max, 0.0) or (
            lam_max <= 0 and scale > 0):
        raise ValueError(f"F must be positive semi-definite (smallest eigenvalue {lam[0]:.3g}, "
                         f"largest {lam_max:.3g}); build it as M^T R^-1 M")
    keep = lam > rtol * lam_max
    return _crlb_from_eig(V[None], lam[None], keep[None], rtol)[0]


# --------------------------------------------------------------------------- priors


def observed_jacobian(prior, operator: ObservationOperator, z: np.ndarray,
                      R: np.ndarray | float | GaussianNoise, jacobian: str = "auto",
                      ) -> np.ndarray:
    """Whitened observed Jacobians ``M = R^{-1/2} J_A(G(z)) J_G(z)`` at each code.

    Parameters
    ----------
    prior : latentda.priors.Prior
        The generator ``G`` (decoded in its own dtype, on its device).
    operator : ObservationOperator
        A differentiable operator (:data:`latentda.autodiff.SUPPORTED_OPERATORS`)
        reading states of size ``prior.state_dim``.
    z : ndarray, shape (B, k) or (k,)
        Latent codes.
    R : float, ndarray of shape (m,) or (m, m), or GaussianNoise
        Observation-error covariance; ``R^{-1/2}`` is ``1/sqrt`` of the variances or
        the inverse Cholesky factor (the Fisher information does not depend on the
        choice of square root).
    jacobian : {"auto", "forward", "fd"}
        Exact forward mode, or forward differences (step ``sqrt(eps)`` of the prior's
        dtype); ``auto`` is ``fd`` for float32 priors and ``forward`` otherwise.

    Returns
    -------
    ndarray, shape (B, m, k), float64

    Raises
    ------
    ValueError
        On an unsupported operator, an operator whose ``state_dim`` differs from the
        prior's, codes of the wrong width, a bad ``R`` or ``jacobian``.
    """
    F, Z, method, m = _whitened_map(prior, operator, z, R, jacobian)
    return np.concatenate(list(_jacobian_chunks(prior, F, Z, method, m)), axis=0)


def _whitened_map(prior, operator, z, R, jacobian):
    if operator.state_dim != prior.state_dim:
        raise ValueError(f"operator.state_dim ({operator.state_dim}) must equal "
                         f"prior.state_dim ({prior.state_dim}); build the observation "
                         f"operator for n={prior.state_dim}")
    h = torch_operator(operator, prior.device, torch.float64)
    Z = _check_codes(prior, z)
    method = _check_jacobian(jacobian, prior)
    m = operator.obs_dim
    W = torch.as_tensor(whitener(R, m), dtype=torch.float64, device=prior.device)
    return whitened_forward(prior, h, W), Z, method, m


def _jacobian_chunks(prior, F, Z: np.ndarray, method: str, out_dim: int):
    """Yield ``(b, out_dim, k)`` float64 Jacobian blocks of ``F`` over chunks of ``Z``."""
    B, k = Z.shape
    width = max(out_dim, prior.state_dim)
    chunk = max(1, _CHUNK_ELEMENTS // (k * width))
    for i in range(0, B, chunk):
        zt = torch.as_tensor(Z[i:i + chunk], dtype=torch.float64, device=prior.device)
        J = batch_jacobian(F, zt, method=method, dtype=prior.dtype)
        yield J.detach().to("cpu", torch.float64).numpy()


def latent_identifiability(prior, operator: ObservationOperator, z: np.ndarray,
                           R: np.ndarray | float | GaussianNoise, rtol: float = 1e-10,
                           jacobian: str = "auto") -> IdentifiabilityBatch:
    """Per-code identifiability of a batch of codes (singular values, CRLB, rank).

    Parameters
    ----------
    prior, operator, z, R, jacobian
        As in :func:`observed_jacobian`.
    rtol : float
        Relative rank threshold on the singular values, in ``(0, 1)``.

    Returns
    -------
    IdentifiabilityBatch
        ``singular_values`` (B, k), ``crlb`` (B, k) and ``rank`` (B,), each row as
        :func:`identifiability` of that code's Jacobian would give.

    Raises
    ------
    ValueError
        As :func:`observed_jacobian`, and on ``rtol`` outside ``(0, 1)``.
    """
    rtol = _check_rtol(rtol)
    F, Z, method, m = _whitened_map(prior, operator, z, R, jacobian)
    S, C, K = [], [], []
    for M in _jacobian_chunks(prior, F, Z, method, m):
        s, Vt, keep = _spectrum(M, rtol)
        S.append(s)
        C.append(_crlb_from_eig(Vt.transpose(0, 2, 1), s * s, keep, rtol))
        K.append(keep.sum(1))
    return IdentifiabilityBatch(singular_values=np.concatenate(S), crlb=np.concatenate(C),
                                rank=np.concatenate(K).astype(np.int64))


def posterior_collapse(prior, X: np.ndarray, kl_threshold: float = 0.01,
                       var_threshold: float = 0.01, jacobian: str = "auto") -> CollapseReport:
    """Posterior-collapse diagnostics of a VAE prior on states ``X``.

    Parameters
    ----------
    prior : latentda.priors.VAEPrior
        A prior with an encoder posterior ``q(z | x)`` (``kl_per_dim``, ``active_units``).
    X : ndarray, shape (N, n)
        Physical states (``N >= 2``), e.g. held-out climatology.
    kl_threshold : float
        A coordinate with average KL below this is collapsed (> 0).
    var_threshold : float
        A coordinate is active when the variance of its encoder mean over ``X``
        exceeds this (> 0).
    jacobian : {"auto", "forward", "fd"}
        How ``dG/dz`` is computed (as in :func:`observed_jacobian`).

    Returns
    -------
    CollapseReport

    Raises
    ------
    ValueError
        If the prior has no encoder posterior (posterior collapse is defined for VAE
        priors), or on a bad ``X``, threshold or ``jacobian``.
    """
    if not (callable(getattr(prior, "kl_per_dim", None))
            and callable(getattr(prior, "active_units", None))):
        raise ValueError(f"posterior collapse is defined for VAE priors, whose encoder gives a "
                         f"posterior q(z|x) (kl_per_dim); {type(prior).__name__} has none")
    X = check_ensemble("X", X, prior.state_dim)
    if X.shape[0] < 2:
        raise ValueError(f"X must hold at least 2 states to measure variances over x (got "
                         f"{X.shape[0]})")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite (it contains NaN or inf)")
    kl_threshold = check_float("kl_threshold", kl_threshold, positive=True)
    var_threshold = check_float("var_threshold", var_threshold, positive=True)
    method = _check_jacobian(jacobian, prior)
    kl = np.asarray(prior.kl_per_dim(X), dtype=np.float64)
    active = int(prior.active_units(X, var_threshold))
    collapsed_dims = np.flatnonzero(kl < kl_threshold)
    mu = prior.encode(X)

    def G(z: torch.Tensor) -> torch.Tensor:
        return prior.decode_t(z.to(prior.dtype)).to(torch.float64)

    sq = np.zeros(prior.latent_dim)
    for J in _jacobian_chunks(prior, G, mu, method, prior.state_dim):
        sq += (J * J).sum(axis=(0, 1))  # sum over codes and state variables
    return CollapseReport(kl_per_dim=kl, active_units=active, collapsed_dims=collapsed_dims,
                          collapsed=bool(collapsed_dims.size == prior.latent_dim),
                          decoder_sensitivity=np.sqrt(sq / X.shape[0]))
