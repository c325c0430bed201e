"""Out-of-distribution (OOD) residual diagnostics of observations against a generative prior.

A generative prior ``x = G(z)`` (:mod:`latentda.priors`) confines the states it can
produce to a ``k``-dimensional manifold. Given observations ``y = h(x) + eps`` with
``eps ~ N(0, R)``, the *OOD residual* is the smallest whitened misfit between ``y``
and any observed state of the manifold, per observation::

    r(y) = min_z  ( ||R^{-1/2} (y - h(G(z)))||^2  [+ ||z||^2] ) / m

(:func:`ood_residual`, batched over ``B`` observation vectors; the bracketed term
is the latent prior ``z ~ N(0, I)``, switched on by ``latent_prior=True``).
Its null distribution, for observations of states that the prior generates:

- **without the latent term**, ``m * r`` is the residual sum of squares of a
  least-squares fit with ``k`` parameters: exactly ``chi2(m - k)`` for a linear
  generator ``G(z) = W z + b`` and linear ``h`` (``H W`` of full column rank),
  approximately so for a smooth nonlinear ``G`` (the local linearisation). It
  needs ``m > k``: with ``m <= k`` the prior can fit any ``y`` and the residual is
  identically ~0;
- **with the latent term** and a linear-Gaussian ``G``, ``m * r`` equals
  ``(y - H b)^T (H W W^T H^T + R)^{-1} (y - H b)``, exactly ``chi2(m)`` for
  ``z ~ N(0, I)``; any ``m`` is allowed.

The *score* is the chi-square upper-tail probability of ``m * r`` (roughly uniform
on ``[0, 1]`` under the null) and an observation is *flagged* when the score is
below ``level``. :func:`manifold_distance` is the state-space counterpart, the RMS
distance ``||x - G(E(x))|| / sqrt(n)`` of a state to its reconstruction.

Minimisation. All ``B`` problems are solved at once by a batched
Levenberg–Marquardt (damped Gauss–Newton) iteration in float64: the Jacobian of
``h(G(z))`` with respect to ``z`` is formed by forward-mode differentiation
(``torch.func.jvp`` vectorised over the ``k`` latent directions, so one Jacobian
costs about ``k`` decoder passes), the ``k x k`` normal equations are solved per
problem, and each problem keeps its own damping (decreased after an accepted
step, increased after a rejected one). For a linear prior the iteration
converges to round-off in a few steps. For a nonlinear prior it finds a *local*
minimum from the start ``z0`` (zeros by default; the encoder of an estimate of
the state is a good warm start, see :func:`ood_residual`), so ``r`` is an upper
bound on the true minimum. The observation operator must be differentiable in
torch: :func:`torch_operator` translates the built-in operators, and
:func:`check_differentiable` rejects the others before a run.

**Blind spot.** The diagnostic only sees what ``h`` sees. An anomaly ``a`` in the
null space of ``H`` (for instance on unobserved variables of a
:class:`~latentda.observations.Subset` operator) leaves ``y`` unchanged: the
observations of the anomalous state still project onto the manifold, their
residual is that of the unperturbed state and they are **not** flagged, however
far the state lies from the manifold. Only a state-space measure such as
:func:`manifold_distance` of the state (or of an analysis) can reveal it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import chi2

from latentda._validate import check_ensemble, check_float, check_int
from latentda.autodiff import (
    SUPPORTED_OPERATORS,
    check_differentiable,
    fd_jacobian,
    forward_jacobian,
    torch_operator,
    whitener,
)
from latentda.observations import GaussianNoise, Identity, ObservationOperator, Subset
from latentda.priors.prior_base import Prior

__all__ = ["SUPPORTED_OPERATORS", "OODResult", "check_differentiable", "manifold_distance",
           "ood_residual", "torch_operator"]



# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class OODResult:
    """OOD residuals of a batch of ``B`` observation vectors (see :func:`ood_residual`).

    Attributes
    ----------
    residual : ndarray, shape (B,)
        ``r``: the minimised whitened misfit (plus ``||z||^2`` with the latent prior)
        divided by ``m``.
    score : ndarray, shape (B,)
        Upper-tail probability ``P(chi2(dof) > m r)``; roughly uniform under the null.
    flag : ndarray of bool, shape (B,)
        ``score < level``: the observation is out of distribution for the prior.
    z : ndarray, shape (B, k)
        The minimising codes (float64).
    dof : int
        Degrees of freedom of the reference law: ``m - k``, or ``m`` with the latent prior.
    level : float
        The false-alarm level used for ``flag``.
    converged : ndarray of bool, shape (B,)
        Whether the iteration met its stopping test before the step budget ran out.
    """

    residual: np.ndarray
    score: np.ndarray
    flag: np.ndarray
    z: np.ndarray
    dof: int
    level: float
    converged: np.ndarray


# --------------------------------------------------------------------------- helpers


def _state_estimate(prior: Prior, operator: ObservationOperator, Y: np.ndarray) -> np.ndarray:
    """Minimum-norm standardized state matching linear observations ``Y`` (B, m).

    ``x = shift + scale * u`` with the smallest ``||u||`` such that ``H x = y``
    (least squares when ``H`` has more rows than rank): unobserved variables of a
    ``Subset`` operator stay at the climatological ``shift``.
    """
    shift = prior.shift.detach().cpu().double().numpy()
    scale = prior.scale.detach().cpu().double().numpy()
    if isinstance(operator, Identity | Subset):
        idx = operator.indices
        X = np.broadcast_to(shift, (Y.shape[0], shift.size)).copy()
        X[:, idx] = Y
        return X
    H = operator.matrix()
    U = (Y - shift @ H.T) @ np.linalg.pinv(H * scale).T
    return shift + U * scale


# --------------------------------------------------------------------------- residual


def ood_residual(prior: Prior, operator: ObservationOperator, y: np.ndarray,
                 R: np.ndarray | float | GaussianNoise, *, z0: np.ndarray | None = None,
                 latent_prior: bool = False, level: float = 0.01, steps: int = 100,
                 damping: float = 1e-3, tol: float | None = None,
                 jacobian: str = "auto") -> OODResult:
    """OOD residual ``r = min_z ||R^{-1/2}(y - h(G(z)))||^2 / m`` of each observation vector.

    Parameters
    ----------
    prior : Prior
        The generative prior ``G`` (any family, on any device).
    operator : ObservationOperator
        ``h``, one of :data:`SUPPORTED_OPERATORS`, reading the prior's ``state_dim``.
    y : ndarray, shape (B, m) or (m,)
        Observation vectors (finite; drop missing entries with a ``Subset`` operator).
    R : ndarray (m,) or (m, m), float, or GaussianNoise
        Observation-error variances (diagonal ``R``) or full covariance.
    z0 : ndarray, shape (B, k) or (k,), optional
        Warm start, e.g. ``prior.encode`` of the analysis mean. When None, each
        problem starts from zeros or, for a linear ``h``, from the encoder of the
        minimum-norm state matching ``y`` (unobserved variables at the prior's
        ``shift``), whichever has the lower objective. With a nonlinear prior the
        result is a local minimum reached from this start.
    latent_prior : bool
        Add ``||z||^2`` (the prior ``z ~ N(0, I)``) to the objective; ``r`` is still
        divided by ``m`` and the reference law becomes ``chi2(m)``.
    level : float
        False-alarm level in ``(0, 1)``: ``flag = score < level``.
    steps : int
        Most Levenberg–Marquardt iterations (each rejected step counts as one).
    damping : float
        Initial damping, relative to the mean curvature ``tr(J^T J) / k``.
    tol : float, optional
        Stopping test (once the damping is <= 1): an accepted step that lowers the
        objective by less than ``tol`` relative, or is shorter than
        ``sqrt(tol) * (||z|| + sqrt(tol))``. Default ``100 eps`` of the prior's dtype.
        A problem also stops when even a tiny damped step cannot lower the objective.
    jacobian : {"auto", "forward", "fd"}
        ``forward``: forward-mode differentiation (``k`` vectorised JVPs, exact);
        ``fd``: forward differences from one batched decoder call of ``B (k + 1)``
        codes (about 3x cheaper on the CPU; its error, about the square root of the
        decoder's epsilon, is far below a float32 decoder's own accuracy).
        ``auto``: ``fd`` for float32 priors, ``forward`` otherwise.

    Returns
    -------
    OODResult
        ``residual``, ``score``, ``flag``, ``z``, ``dof``, ``level``, ``converged``.

    Raises
    ------
    ValueError
        On an unsupported or mismatched observation operator, on ``y``, ``R`` or
        ``z0`` of the wrong shape, and when ``m <= k`` without the latent prior (the
        residual is then identically ~0: use ``latent_prior=True``).
    """
    check_differentiable(operator)
    n, k = prior.state_dim, prior.latent_dim
    if operator.state_dim != n:
        raise ValueError(f"observation operator reads states of size {operator.state_dim}, but "
                         f"the prior generates states of size {n}; build the operator for n={n}")
    m = operator.obs_dim
    Y = check_ensemble("y", y, m)
    if not np.all(np.isfinite(Y)):
        raise ValueError("y must be finite (it contains NaN or inf); drop missing observations "
                         "with a Subset operator")
    B = Y.shape[0]
    level = check_float("level", level, min_value=0.0, max_value=1.0)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (got {level})")
    steps = check_int("steps", steps, min_value=1)
    damping = check_float("damping", damping, positive=True)
    if latent_prior:
        dof = m
    else:
        if m <= k:
            raise ValueError(
                f"latent_prior=False needs more observations than latent dimensions (m={m} <= "
                f"k={k}): the prior then fits any y and the residual is identically ~0; use "
                "latent_prior=True (reference law chi2(m))")
        dof = m - k
    W = whitener(R, m)
    if z0 is None:
        Z0 = np.zeros((B, k))
    else:
        Z0 = check_ensemble("z0", z0, k)
        if Z0.shape[0] == 1 and B > 1:
            Z0 = np.repeat(Z0, B, axis=0)
        if Z0.shape[0] != B:
            raise ValueError(f"z0 must have shape ({B}, {k}) like y (got {np.shape(z0)})")
        if not np.all(np.isfinite(Z0)):
            raise ValueError("z0 must be finite (it contains NaN or inf)")
    if tol is None:
        tol = 100.0 * torch.finfo(prior.dtype).eps
    tol = check_float("tol", tol, positive=True)
    xtol = float(np.sqrt(tol))
    if jacobian not in ("auto", "forward", "fd"):
        raise ValueError(f"jacobian must be 'auto', 'forward' or 'fd' (got {jacobian!r})")
    if jacobian == "auto":
        jacobian = "fd" if prior.dtype == torch.float32 else "forward"
    rel_step = float(np.sqrt(torch.finfo(prior.dtype).eps))

    dev, f64 = prior.device, torch.float64
    h = torch_operator(operator, dev, f64)
    Wt = torch.as_tensor(W, dtype=f64, device=dev)
    diag_R = Wt.ndim == 1

    def whiten(v: torch.Tensor) -> torch.Tensor:
        return v * Wt if diag_R else v @ Wt.T

    Yw = whiten(torch.as_tensor(Y, dtype=f64, device=dev))

    def hw(z: torch.Tensor) -> torch.Tensor:  # whitened h(G(z)), float64 in and out
        return whiten(h(prior.decode_t(z.to(prior.dtype)).to(f64)))

    def resid(z: torch.Tensor, yw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            f = yw - hw(z)
            cost = (f * f).sum(1)
            if latent_prior:
                cost = cost + (z * z).sum(1)
        return f, cost

    z = torch.as_tensor(Z0, dtype=f64, device=dev).clone()
    f, cost = resid(z, Yw)
    if z0 is None and operator.linear:  # also try the encoder of a least-squares state
        zc = torch.as_tensor(prior.encode(_state_estimate(prior, operator, Y)), dtype=f64,
                             device=dev)
        fc, cc = resid(zc, Yw)
        better = cc < cost
        z[better], f[better], cost[better] = zc[better], fc[better], cc[better]
    lam = torch.full((B,), damping, dtype=f64, device=dev)
    A = torch.zeros(B, k, k, dtype=f64, device=dev)
    g = torch.zeros(B, k, dtype=f64, device=dev)
    stale = torch.ones(B, dtype=torch.bool, device=dev)  # needs a new Jacobian
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    eye = torch.eye(k, dtype=f64, device=dev)
    for _ in range(steps):
        act = torch.nonzero(~done).squeeze(1)
        if act.numel() == 0:
            break
        new = act[stale[act]]
        if new.numel():
            J = (forward_jacobian(hw, z[new]) if jacobian == "forward"  # d hw / dz, (b, m, k)
                 else fd_jacobian(hw, z[new], rel_step))  # the residual's is -J
            A[new] = J.transpose(1, 2) @ J
            g[new] = -(J.transpose(1, 2) @ f[new].unsqueeze(2)).squeeze(2)  # J_f^T f
            if latent_prior:
                A[new] += eye
                g[new] += z[new]
            stale[new] = False
        Aa = A[act]
        scale = torch.diagonal(Aa, dim1=1, dim2=2).mean(1).clamp_min(1e-300)
        M = Aa + (lam[act] * scale)[:, None, None] * eye
        delta = -torch.linalg.solve(M, g[act].unsqueeze(2)).squeeze(2)
        z_try = z[act] + delta
        f_try, cost_try = resid(z_try, Yw[act])
        ok = torch.isfinite(cost_try) & (cost_try < cost[act])
        small = (((delta.norm(dim=1) <= xtol * (z_try.norm(dim=1) + xtol))
                  | (cost[act] - cost_try <= tol * cost_try)) & (lam[act] <= 1.0))
        acc = act[ok]
        z[acc], f[acc], cost[acc] = z_try[ok], f_try[ok], cost_try[ok]
        stale[acc] = True
        done[acc] = small[ok]
        lam[acc] = (lam[acc] / 10.0).clamp_min(1e-15)
        rej = act[~ok]
        lam[rej] = lam[rej] * 10.0
        done[rej] = lam[rej] > 1e12  # no descent even along a tiny gradient step: stationary
    residual = (cost / m).cpu().numpy()
    score = chi2.sf(m * residual, dof)
    return OODResult(residual=residual, score=score, flag=score < level,
                     z=z.cpu().numpy(), dof=int(dof), level=level,
                     converged=done.cpu().numpy().copy())


# --------------------------------------------------------------------------- state space


def manifold_distance(prior: Prior, X: np.ndarray) -> np.ndarray:
    """RMS distance ``||x - G(E(x))|| / sqrt(n)`` of each state to its reconstruction.

    Parameters
    ----------
    prior : Prior
    X : ndarray, shape (B, n) or (n,)
        States (physical units).

    Returns
    -------
    ndarray, shape (B,)
        In the units of the state; unlike :func:`ood_residual` it also sees
        anomalies in the null space of the observation operator.
    """
    X = check_ensemble("X", X, prior.state_dim)
    D = X - prior.reconstruct(X)
    return np.sqrt(np.mean(D * D, axis=1))
