"""Gradient-based analyses: iterated Laplace, variable-space Laplace and MCMC ("MCMC EnKF").

The forecast ensemble (plus, with ``beta > 0``, the space's static background
``B = S_B S_B^T``) defines a Gaussian prior of the analysed variables ``v``::

    v = xbar + S w,   S = [sqrt((1 - beta)/(N - 1)) A^T, sqrt(beta) S_B],   w ~ N(0, I_r)

with ``A`` the forecast anomalies and ``r = N + rank(B)``: the hybrid covariance
``(1 - beta) P_ens + beta B`` of :class:`~latentda.filters.hybrid.HybridETKF`,
written in whitened coordinates. The observation function is differentiated
through ``obs.h_torch`` (the space composes the decoder and the operator, so in
a latent space ``h = A ∘ G``). Then (:mod:`latentda.inference.gauss_newton`):

- :class:`LaplaceAnalysis` finds the MAP ``w*`` of
  ``1/2 ||w||^2 + 1/2 ||R^{-1/2}(y - h(xbar + S w))||^2`` by damped Gauss–Newton
  (``iterations`` relinearizations: with ``v = z`` this is latent 3D-Var with a
  flow-dependent covariance), and draws the analysis ensemble from the Laplace
  approximation ``N(w*, H^{-1})``, ``H = I + J^T J`` (or the exact Hessian,
  damped when indefinite, the damping reported as ``hessian_damping``), or, by
  default, places them deterministically with the square root of that covariance
  in the ensemble subspace (``anomalies="transform"``, the ETKF transform
  linearized at the MAP);
- :class:`VariableLaplace` is the same analysis with one linearization at the
  forecast mean: the linearized-generator (variable-space Laplace) prior, a
  linear-Gaussian analysis that is not restricted to the generator's range when
  the space carries the residual (``noisy_manifold``);
- :class:`MCMCAnalysis` runs one MALA or HMC chain per member, started from the
  Laplace members and preconditioned by ``H^{-1/2}``, and returns the chains'
  final states: the ensemble is a sample of the non-Gaussian posterior
  (acceptance rate and effective sample size reported).

With a linear ``h`` every method's posterior is the exact Gaussian one: the
Laplace mean is the Kalman analysis mean of the hybrid covariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latentda._validate import check_float, check_int
from latentda.filters.base import Background, EnsembleFilter, Geometry, Observation

__all__ = ["LaplaceAnalysis", "MCMCAnalysis", "VariableLaplace"]

HESSIANS = ("gauss_newton", "exact")
JACOBIANS = ("auto", "forward", "fd")
SAMPLERS = ("mala", "hmc")
ANOMALIES = ("transform", "draws")


@dataclass
class LaplaceAnalysis(EnsembleFilter):
    """Iterated Gauss–Newton MAP with a Laplace-approximation ensemble.

    Parameters
    ----------
    beta : float
        Weight of the space's static background in the prior covariance, in
        [0, 1] (0: the ensemble covariance alone; no background needed).
    iterations : int
        Gauss–Newton budget (>= 1).
    hessian : {"gauss_newton", "exact"}
        Hessian of the Laplace approximation.
    jacobian : {"auto", "forward", "fd"}
        ``auto``: forward differences when ``obs.h_torch`` computes in float32
        (a float32 prior), forward mode otherwise.
    tol : float
        Gradient tolerance of the MAP, relative to ``1 + ||w||``.
    anomalies : {"transform", "draws"}
        How the members spread around the MAP. ``draws``: ``N`` independent draws
        of the Laplace approximation ``N(w*, H^{-1})`` (centered on the MAP).
        ``transform``: the deterministic square root of the Laplace covariance in
        the ensemble subspace, ``A_a = A_f T`` with ``T = (I + J_e^T J_e)^{-1/2}``
        and ``J_e`` the Jacobian along the forecast anomalies at the MAP (the
        ETKF transform linearized at the MAP, as in the iterative EnKF); with
        ``beta = 0`` it is exactly the Laplace covariance, without sampling noise.
    starts : int
        Extra starting points of the MAP search (0: start at the prior mean only). The
        cost is evaluated at ``starts`` draws of the (hybrid) prior; when the lowest of
        them costs less than the prior mean, a second Gauss–Newton search starts there
        and the lower of the two MAPs is kept: a global search for multimodal
        posteriors, e.g. the position of a feature that no member has near the truth.
        Needs an ``rng``.
    gate : float
        With ``beta > 0``: the analysis with the ensemble covariance alone (``beta = 0``,
        from the prior mean) runs first and is kept when its misfit
        ``||R^{-1/2}(y - h(v*))||^2`` is consistent with the observation errors (its
        chi-square tail probability with ``m`` degrees of freedom is at least
        ``gate``); only otherwise does the hybrid analysis (static background and
        ``starts``) run. The static background is then a fallback for an ensemble that
        has lost the truth instead of a share of every analysis, which would forget
        what the earlier analyses learned. ``0`` (default): always the hybrid analysis.
        ``static_used`` in the cycle info says which was kept.
    inflation : float
        Post-analysis multiplicative inflation of the anomalies (>= 1).
    """

    beta: float = 0.0
    iterations: int = 10
    starts: int = 0
    gate: float = 0.0
    hessian: str = "gauss_newton"
    jacobian: str = "auto"
    tol: float = 1e-6
    anomalies: str = "transform"

    needs_gradient = True

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """Random draws need an ``rng`` (``anomalies="draws"``, and every MCMC analysis)."""
        return self.anomalies == "draws" or self.starts > 0

    @property
    def needs_background(self) -> bool:  # type: ignore[override]
        """A static background is needed when ``beta > 0``."""
        return self.beta > 0.0

    def _validate_params(self) -> None:
        super()._validate_params()
        self.beta = check_float("beta", self.beta, min_value=0.0, max_value=1.0)
        if self.beta >= 1.0:
            raise ValueError("beta must be < 1 for a Laplace/MCMC analysis: the ensemble "
                             "covariance must keep a share (use beta in [0, 1))")
        self.iterations = check_int("iterations", self.iterations, min_value=1)
        self.starts = check_int("starts", self.starts, min_value=0)
        self.gate = check_float("gate", self.gate, min_value=0.0, max_value=1.0)
        if self.gate >= 1.0 or (self.gate > 0.0 and self.beta == 0.0):
            raise ValueError(f"gate must be in [0, 1) and needs beta > 0 (a static "
                             f"background to fall back on; got gate={self.gate}, "
                             f"beta={self.beta})")
        self.tol = check_float("tol", self.tol, positive=True)
        if self.hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {', '.join(HESSIANS)} "
                             f"(got {self.hessian!r})")
        if self.anomalies not in ANOMALIES:
            raise ValueError(f"anomalies must be one of {', '.join(ANOMALIES)} "
                             f"(got {self.anomalies!r})")
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"jacobian must be one of {', '.join(JACOBIANS)} "
                             f"(got {self.jacobian!r})")

    # ------------------------------------------------------------------ the problem
    def _problem(self, E: np.ndarray, obs: Observation, background: Background | None,
                 beta: float) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray, str, Any]:
        """Prior mean ``xbar``, square root ``S`` and the whitened torch forward map."""
        import torch

        N = E.shape[0]
        xbar = E.mean(axis=0)
        cols = [np.sqrt((1.0 - beta) / (N - 1.0)) * (E - xbar).T]
        if beta > 0.0:
            cols.append(np.sqrt(beta) * background.sqrt)
        S = np.hstack(cols)  # (d, r)
        f64 = torch.float64
        xbar_t = torch.as_tensor(xbar, dtype=f64)
        S_t = torch.as_tensor(S, dtype=f64)
        Wr = torch.as_tensor(obs.rinv_sqrt, dtype=f64)  # Z @ R^{-1/2}, as obs.whiten

        def whiten(v: torch.Tensor) -> torch.Tensor:
            return v * Wr if Wr.ndim == 1 else v @ Wr

        h = obs.h_torch

        def F(w: torch.Tensor) -> torch.Tensor:
            return whiten(h(xbar_t + w @ S_t.T))

        dtype = getattr(h, "dtype", f64)
        jac = self.jacobian
        if jac == "auto":
            jac = "fd" if dtype == torch.float32 else "forward"
        yw = obs.whiten(obs.y)
        return xbar, S, F, yw, jac, dtype

    def _start(self, F: Any, yw: np.ndarray, r: int, rng: np.random.Generator | None
               ) -> np.ndarray | None:
        """The lowest-cost of ``starts`` prior draws, None if ``w = 0`` costs less."""
        if self.starts == 0:
            return None
        import torch

        if rng is None:
            raise ValueError("starts > 0 draws random starting points: pass an rng")
        W = np.vstack([np.zeros((1, r)), rng.standard_normal((self.starts, r))])
        y = torch.as_tensor(yw, dtype=torch.float64)
        cost = np.empty(len(W))
        with torch.no_grad():
            for i in range(0, len(W), 256):
                w = torch.as_tensor(W[i:i + 256], dtype=torch.float64)
                cost[i:i + 256] = (0.5 * (w * w).sum(1)
                                   + 0.5 * ((y - F(w).double()) ** 2).sum(1)).numpy()
        best = int(np.nanargmin(cost))
        return None if best == 0 else W[best]

    def _laplace(self, E: np.ndarray, obs: Observation, background: Background | None,
                 rng: np.random.Generator | None = None,
                 ) -> tuple[Any, Any, np.ndarray, np.ndarray, Any, np.ndarray, dict[str, float]]:
        """MAP and Laplace posterior; ``info["beta"]`` is the static weight used."""
        import warnings

        from scipy.stats import chi2

        from latentda.inference.gauss_newton import gauss_newton, laplace_posterior

        def solve(w0: np.ndarray | None = None) -> Any:  # on the current problem
            return gauss_newton(F, yw, S.shape[1], w0=w0, steps=self.iterations,
                                tol=self.tol, jacobian=jac, dtype=dtype)

        beta = self.beta
        res = None
        if self.gate > 0.0:  # the ensemble alone first; the static part only if it misfits
            xbar, S, F, yw, jac, dtype = self._problem(E, obs, background, 0.0)
            res = solve()
            if chi2.sf(res.misfit, len(yw)) >= self.gate:
                beta = 0.0
            else:
                res = None
        if res is None:
            xbar, S, F, yw, jac, dtype = self._problem(E, obs, background, beta)
            res = solve()
            w0 = self._start(F, yw, S.shape[1], rng)
            if w0 is not None:  # a second search from the best prior draw; keep the lower
                alt = solve(w0)
                res = alt if alt.cost < res.cost else res
        with warnings.catch_warnings():  # the damping is reported in info instead
            warnings.simplefilter("ignore")
            post = laplace_posterior(res, hessian=self.hessian, F=F, yw=yw)
        info = {"map_iterations": float(res.iterations),
                "map_converged": float(res.converged),
                "hessian_damping": float(post.damping), "beta": beta}
        if self.gate > 0.0:
            info["static_used"] = float(beta > 0.0)
        return res, post, xbar, S, F, yw, info

    def _spread(self, V: np.ndarray) -> np.ndarray:
        if self.inflation == 1.0:
            return V
        mean = V.mean(axis=0)
        return mean + self.inflation * (V - mean)

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 background: Background | None = None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        res, post, xbar, S, _, _, info = self._laplace(E, obs, background, rng)
        Wm = self._members(res, post, E.shape[0], rng, info.pop("beta"))
        return self._spread(xbar + Wm @ S.T), {"inflation": self.inflation, **info}

    def _members(self, res: Any, post: Any, N: int, rng: np.random.Generator, beta: float
                 ) -> np.ndarray:
        """The analysis members in whitened coordinates ``w``, shape ``(N, r)``."""
        if self.anomalies == "draws":
            return post.draw(N, rng)  # centered: the ensemble mean is the MAP
        # J_e: Jacobian along A_i / sqrt(N - 1) (the first N columns of S carry an extra
        # sqrt(1 - beta)); J_e 1 = 0, so T 1 = 1 and the members' mean stays at the MAP.
        # Member i's anomaly sum_j T_ij (x_j - xbar) has w-coordinates
        # sqrt((N - 1) / (1 - beta)) (T_i - 1/N) on the ensemble columns.
        from latentda.inference.gauss_newton import gauss_newton_inv_sqrt

        T = gauss_newton_inv_sqrt(res.jacobian[:, :N] / np.sqrt(1.0 - beta))
        Wm = np.tile(res.w, (N, 1))
        Wm[:, :N] += np.sqrt((N - 1.0) / (1.0 - beta)) * (T - 1.0 / N)
        return Wm


@dataclass
class VariableLaplace(LaplaceAnalysis):
    """The Laplace analysis linearized once, at the forecast mean.

    The prior is Gaussian around the linearization point (for a latent space:
    ``x ~ N(G(zbar), J P_z J^T [+ P_eta])``, the linearized-generator prior) and
    the analysis is the linear-Gaussian one; ``iterations`` is fixed to 1.
    """

    iterations: int = 1

    def _validate_params(self) -> None:
        if int(self.iterations) != 1:
            raise ValueError(f"iterations must be 1 for VariableLaplace (one linearization "
                             f"at the forecast mean; got {self.iterations}); use "
                             f"LaplaceAnalysis for an iterated analysis")
        super()._validate_params()


@dataclass
class MCMCAnalysis(LaplaceAnalysis):
    """MALA or HMC chains from the Laplace draws: an ensemble sampled from the posterior.

    Parameters
    ----------
    sampler : {"mala", "hmc"}
    steps : int
        Iterations per chain, burn-in included (>= 2).
    burn_in : int, optional
        Step-size adaptation iterations (default ``steps // 2``).
    n_leapfrog : int
        Leapfrog steps of HMC.
    target_accept : float, optional
        Acceptance rate the step size adapts to (default 0.574 for MALA, 0.65 for HMC).
    precondition : bool
        Propose with the Laplace covariance ``H^{-1}`` (recommended).
    Other parameters as :class:`LaplaceAnalysis`.
    """

    sampler: str = "mala"
    steps: int = 40
    burn_in: int | None = None
    n_leapfrog: int = 5
    target_accept: float | None = None
    precondition: bool = True

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """MCMC always draws random numbers."""
        return True

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} "
                             f"(got {self.sampler!r})")
        self.steps = check_int("steps", self.steps, min_value=2)
        if self.burn_in is not None:
            self.burn_in = check_int("burn_in", self.burn_in, min_value=0,
                                     max_value=self.steps - 1)
        self.n_leapfrog = check_int("n_leapfrog", self.n_leapfrog, min_value=1)
        if self.target_accept is not None:
            self.target_accept = check_float("target_accept", self.target_accept,
                                             min_value=0.0, max_value=1.0)
            if not 0.0 < self.target_accept < 1.0:
                raise ValueError(f"target_accept must lie strictly between 0 and 1 "
                                 f"(got {self.target_accept})")

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 background: Background | None = None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        import torch

        from latentda.inference.mcmc import hmc, mala

        res, post, xbar, S, F, yw, info = self._laplace(E, obs, background, rng)
        N = E.shape[0]
        W0 = torch.as_tensor(self._members(res, post, N, rng, info.pop("beta")))
        yw_t = torch.as_tensor(yw)

        def log_post(w: torch.Tensor) -> torch.Tensor:
            res = yw_t - F(w)
            return -0.5 * ((w * w).sum(1) + (res * res).sum(1))

        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        kw: dict[str, Any] = {"steps": self.steps, "burn_in": self.burn_in, "generator": g,
                              "precond": post.sqrt_cov if self.precondition else None}
        if self.target_accept is not None:
            kw["target_accept"] = self.target_accept
        if self.sampler == "hmc":
            out = hmc(log_post, W0, n_leapfrog=self.n_leapfrog, **kw)
        else:
            out = mala(log_post, W0, **kw)
        Ea = self._spread(xbar + out.last @ S.T)
        info.update(accept_rate=float(out.accept_rate),
                    mcmc_ess=float(np.nanmin(out.ess)) if np.isfinite(out.ess).any()
                    else float("nan"))
        return Ea, {"inflation": self.inflation, **info}
