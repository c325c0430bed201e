"""SMC-ABC with a Gaussian kernel: an SMC sampler with unbiased (pseudo-marginal) likelihoods.

For a simulator ``s ~ p(s | theta)`` of summary statistics, observed summaries
``s_obs`` and a fixed per-summary ``scale``, the Gaussian ABC kernel of width ``epsilon``
defines the likelihood

    L_eps(theta) = E_{s ~ p(. | theta)} [ N(s_obs; s, eps^2 diag(scale^2)) ],

which is *exactly* the likelihood of the noisy-summary model ``s_obs = s + eps * scale * eta``
(``eta`` standard normal; Wilkinson 2013). So the ABC posterior
``p_eps(theta | s_obs) ∝ p(theta) L_eps(theta)`` is an ordinary Bayesian posterior: an
amortized neural posterior trained on ``(theta, s + eps * scale * eta)`` pairs targets the
same distribution (:mod:`latentda.inference.npe`), which is what makes the two comparable.

``L_eps`` is estimated without bias by ``(1/M) sum_j N(s_obs; s_j, ...)`` over ``M``
simulations at ``theta``. The sampler (adaptive SMC-ABC of Del Moral, Doucet & Jasra 2012
with pseudo-marginal moves) starts from the prior (``eps = inf``) and at each stage

1. chooses the next ``eps`` by bisection so that the effective sample size of the
   incremental weights ``L̂_eps_new / L̂_eps_old`` is ``ess_fraction * N`` (never below
   ``epsilon``);
2. reweights, resamples (systematic), and
3. moves every particle with pseudo-marginal Metropolis–Hastings steps: a Gaussian random
   walk with the particles' covariance (scaled by ``2.38^2 / d * rw_scale``), ``M`` fresh
   simulations at the proposal, acceptance ``p(θ') L̂(θ') / (p(θ) L̂(θ))``; the number of
   repeats follows the acceptance rate (Drovandi & Pettitt 2011), so that each particle
   moves with probability ``1 - move_miss`` (at most ``max_moves`` repeats).

The last stage runs at exactly ``epsilon``, and ends with ``final_moves`` extra sweeps.
Pseudo-marginal MH leaves the exact ``p_eps(theta | s_obs)`` invariant for any ``M``, so the
particles target it exactly (up to Monte-Carlo error). That error is hard to judge: a
particle whose likelihood estimate came out lucky is rarely moved ("sticky"), so the
particles are correlated. With ``n_importance > 0`` a final importance-sampling stage
replaces them by independent draws from a Student-t fitted to the particles (mixed with
the prior), each weighted by ``p(theta) L̂(theta) / g(theta)`` with a fresh unbiased
estimate; the weighted draws are consistent, and their effective sample size and the
standard error of the mean (:attr:`SMCABCResult.mean_se`) say how precise they are.
With ``importance_rounds > 1`` the importance stage is adaptive (population Monte Carlo,
Cappé et al. 2004): each pilot round of ``importance_pilot`` draws refits the Student-t to
the *weighted* draws of the round before, so a proposal fitted to few or sticky SMC
particles (too narrow, off-centre) is corrected before the final round of ``n_importance``
draws. Every round weights with fresh unbiased likelihood estimates and the result keeps
the final round only; its proposal depends on earlier rounds but not on its own draws, so
the final round is an ordinary (random-weight) importance sample, consistent for
``p_eps(theta | s_obs)`` whatever the pilots did.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from latentda._validate import check_float, check_int, check_rng
from latentda.filters.resampling import ess, resample

__all__ = ["Prior", "BoxUniform", "GaussianPrior", "SMCABCResult", "smc_abc",
           "gaussian_kernel_log_likelihood", "lv_summary_simulator"]

Simulator = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class Prior(Protocol):
    """What :func:`smc_abc` needs of a prior over ``theta`` (shape ``(n, d)``)."""

    dim: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def log_prob(self, theta: np.ndarray) -> np.ndarray: ...


def _as_vector(name: str, value: Any, n: int | None = None) -> np.ndarray:
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of finite numbers (got {value!r})") from None
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a 1-D array of finite numbers (got {value!r})")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} must have {n} entries (got {arr.size})")
    return arr


class BoxUniform:
    """Uniform prior on the box ``[low, high]`` (componentwise).

    Parameters
    ----------
    low, high : array_like, shape (d,)
        Bounds, ``low < high``.
    """

    def __init__(self, low: Any, high: Any) -> None:
        self.low = _as_vector("low", low)
        self.high = _as_vector("high", high, self.low.size)
        if np.any(self.high <= self.low):
            raise ValueError(f"high must exceed low componentwise (got low={self.low}, "
                             f"high={self.high})")
        self.dim = self.low.size
        self._log_volume = float(np.sum(np.log(self.high - self.low)))

    def __repr__(self) -> str:
        return f"BoxUniform(low={self.low.tolist()}, high={self.high.tolist()})"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws, shape ``(n, d)``."""
        n = check_int("n", n, min_value=1)
        return self.low + (self.high - self.low) * rng.random((n, self.dim))

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Log-density, shape ``(n,)`` (``-inf`` outside the box)."""
        th = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        inside = np.all((th >= self.low) & (th <= self.high), axis=1)
        return np.where(inside, -self._log_volume, -np.inf)


class GaussianPrior:
    """Gaussian prior ``N(mean, cov)``.

    Parameters
    ----------
    mean : array_like, shape (d,)
    cov : array_like, shape (d, d)
        Symmetric positive definite.
    """

    def __init__(self, mean: Any, cov: Any) -> None:
        self.mean = _as_vector("mean", mean)
        self.dim = self.mean.size
        C = np.asarray(cov, dtype=np.float64)
        if C.shape != (self.dim, self.dim) or not np.isfinite(C).all():
            raise ValueError(f"cov must be a finite ({self.dim}, {self.dim}) matrix "
                             f"(got shape {C.shape})")
        if not np.allclose(C, C.T):
            raise ValueError("cov must be symmetric")
        try:
            self._L = np.linalg.cholesky(C)
        except np.linalg.LinAlgError:
            raise ValueError("cov must be positive definite") from None
        self.cov = C
        self._logdet = 2.0 * float(np.sum(np.log(np.diag(self._L))))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws, shape ``(n, d)``."""
        n = check_int("n", n, min_value=1)
        return self.mean + rng.standard_normal((n, self.dim)) @ self._L.T

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Log-density, shape ``(n,)``."""
        th = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        z = np.linalg.solve(self._L, (th - self.mean).T)
        return -0.5 * (np.sum(z * z, axis=0) + self._logdet + self.dim * math.log(2 * math.pi))


def gaussian_kernel_log_likelihood(S: np.ndarray, s_obs: np.ndarray, scale: np.ndarray,
                                   epsilon: float) -> np.ndarray:
    """``log((1/M) sum_j N(s_obs; S[:, j], eps^2 diag(scale^2)))`` per particle.

    Parameters
    ----------
    S : ndarray, shape (n, M, p)
        ``M`` simulated summaries for each of ``n`` parameter values.
    s_obs : ndarray, shape (p,)
    scale : ndarray, shape (p,)
    epsilon : float
        Kernel width (``inf``: a constant kernel, log-likelihood 0).

    Returns
    -------
    ndarray, shape (n,)
    """
    if math.isinf(epsilon):
        return np.zeros(S.shape[0])
    p = S.shape[2]
    u = (S - s_obs) / scale
    a = -0.5 * np.einsum("nmp,nmp->nm", u, u) / (epsilon * epsilon)
    top = a.max(axis=1)
    lme = top + np.log(np.mean(np.exp(a - top[:, None]), axis=1))
    const = -p * math.log(epsilon) - float(np.sum(np.log(scale))) - 0.5 * p * math.log(2 * math.pi)
    return lme + const


@dataclass
class SMCABCResult:
    """Particles of the SMC-ABC posterior and the sampler's record.

    Attributes
    ----------
    theta : ndarray, shape (n, d)
        Samples targeting ``p_eps(theta | s_obs)``: the SMC particles, or the importance
        draws when ``n_importance > 0``.
    log_likelihood : ndarray, shape (n,)
        Each sample's estimate ``log L̂_eps(theta)`` (``-inf`` outside the prior support).
    weights : ndarray, shape (n,) or None
        Normalized importance weights (``None``: equal weights).
    epsilons : list of float
        Kernel width of each stage (the last is ``epsilon``).
    acceptance : list of float
        Mean MH acceptance rate of each stage.
    moves : list of int
        MH sweeps of each stage.
    n_simulations : int
        Total simulator calls (parameter values times simulations per estimate).
    seconds : float
        Wall time.
    """

    theta: np.ndarray
    log_likelihood: np.ndarray
    weights: np.ndarray | None = None
    epsilons: list[float] = field(default_factory=list)
    acceptance: list[float] = field(default_factory=list)
    moves: list[int] = field(default_factory=list)
    n_simulations: int = 0
    seconds: float = 0.0

    def _w(self) -> np.ndarray:
        n = self.theta.shape[0]
        return np.full(n, 1.0 / n) if self.weights is None else self.weights

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean, shape (d,)."""
        return self._w() @ self.theta

    @property
    def cov(self) -> np.ndarray:
        """Posterior covariance, shape (d, d) (unbiased for equal weights)."""
        w = self._w()
        D = self.theta - w @ self.theta
        C = (w[:, None] * D).T @ D
        return C / (1.0 - float(w @ w))

    @property
    def std(self) -> np.ndarray:
        """Posterior standard deviations, shape (d,)."""
        return np.sqrt(np.diag(self.cov))

    @property
    def ess(self) -> float:
        """Effective sample size ``1 / sum w^2`` (the sample count for equal weights)."""
        w = self._w()
        return 1.0 / float(w @ w)

    @property
    def mean_se(self) -> np.ndarray:
        """Monte-Carlo standard error of :attr:`mean`, shape (d,).

        ``sqrt(sum_i w_i^2 (theta_i - mean)^2)`` (self-normalized importance sampling,
        delta method); for equal weights ``std / sqrt(n)``, which ignores the correlation
        of SMC particles and so is only a lower bound there.
        """
        w = self._w()
        D = self.theta - w @ self.theta
        return np.sqrt((w * w) @ (D * D))

    def batch_mean_se(self, n_batches: int = 10) -> np.ndarray:
        """Standard error of :attr:`mean` from ``n_batches`` disjoint batches, shape (d,).

        The samples are split in order into equal batches, each gives a (self-normalized)
        mean, and the error of the overall mean is ``std(batch means) / sqrt(n_batches)``.
        An empirical check of :attr:`mean_se` for independent importance draws (valid
        when each batch holds many effective samples); for SMC particles, which are
        resampled and so not in independent order, it means little.

        Parameters
        ----------
        n_batches : int
            Number of batches (>= 2, at most the sample count).
        """
        n = self.theta.shape[0]
        n_batches = check_int("n_batches", n_batches, min_value=2)
        if n_batches > n:
            raise ValueError(f"n_batches must be at most the sample count {n} "
                             f"(got {n_batches})")
        w = self._w()
        means = []
        for ix in np.array_split(np.arange(n), n_batches):
            wb = w[ix]
            tot = float(wb.sum())
            if tot <= 0:
                continue
            means.append(wb @ self.theta[ix] / tot)
        if len(means) < 2:
            return np.full(self.theta.shape[1], np.inf)
        bm = np.asarray(means)
        # plain batch means; the overall mean weighs batches by their total weight,
        # which varies little when each batch holds many effective samples
        return bm.std(axis=0, ddof=1) / math.sqrt(len(means))


def _simulate_block(simulate: Simulator, theta: np.ndarray, M: int, p: int,
                    rng: np.random.Generator) -> np.ndarray:
    n = theta.shape[0]
    S = np.asarray(simulate(np.repeat(theta, M, axis=0), rng), dtype=np.float64)
    if S.shape != (n * M, p):
        raise ValueError(f"simulate must return shape (n, {p}) for n parameter rows "
                         f"(got {S.shape} for n = {n * M})")
    if not np.isfinite(S).all():
        raise ValueError("simulate returned non-finite summaries; the kernel needs finite "
                         "values (map failures to a finite sentinel)")
    return S.reshape(n, M, p)


def _next_epsilon(ll_fn: Callable[[float], np.ndarray], ll_old: np.ndarray, eps_old: float,
                  eps_min: float, target: float) -> float:
    """Largest drop of ``eps`` whose incremental-weight ESS fraction is ``>= target``."""
    N = ll_old.size

    def ess_frac(eps: float) -> float:
        lw = ll_fn(eps) - ll_old
        lw -= lw.max()
        w = np.exp(lw)
        return ess(w / w.sum()) / N

    if ess_frac(eps_min) >= target:
        return eps_min
    lo = math.log(eps_min)
    hi = math.log(eps_old) if math.isfinite(eps_old) else lo + 20.0
    # ensure the upper end satisfies the target (it does at eps_old; large eps ~ flat)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if ess_frac(math.exp(mid)) >= target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-4:
            break
    return math.exp(hi)


def smc_abc(simulate: Simulator, prior: Prior, s_obs: Any, *, epsilon: float,
            scale: Any = None, n_particles: int = 1000, n_sims: int = 10,
            ess_fraction: float = 0.5, rw_scale: float = 1.0, move_miss: float = 0.05,
            max_moves: int = 10, final_moves: int = 3, max_stages: int = 100,
            n_importance: int = 0, importance_sims: int | None = None,
            importance_df: float = 5.0, importance_inflation: float = 1.5,
            defensive: float = 0.05, importance_rounds: int = 1,
            importance_pilot: int | None = None,
            rng: np.random.Generator | int = 0) -> SMCABCResult:
    """Sample the Gaussian-kernel ABC posterior ``p_eps(theta | s_obs)`` by SMC.

    Parameters
    ----------
    simulate : callable
        ``simulate(theta, rng) -> s``: one summary vector per row of ``theta`` (shape
        ``(n, d)`` in, ``(n, p)`` out), finite.
    prior : Prior
        ``sample(n, rng)`` and ``log_prob(theta)`` (e.g. :class:`BoxUniform`).
    s_obs : array_like, shape (p,)
        Observed summaries.
    epsilon : float
        Final kernel width (> 0), in units of ``scale``.
    scale : array_like, shape (p,), optional
        Per-summary scale (> 0); default ones.
    n_particles : int
        Number of particles ``N`` (>= 10).
    n_sims : int
        Simulations per likelihood estimate ``M`` (>= 1).
    ess_fraction : float
        Target ESS fraction of each reweighting, in (0, 1).
    rw_scale : float
        Multiplier of the random-walk covariance ``2.38^2 / d * Cov(particles)`` (> 0).
    move_miss : float
        Accepted probability that a particle is never moved in a stage, in (0, 1).
    max_moves : int
        Cap on the MH sweeps of one stage (>= 1).
    final_moves : int
        Extra MH sweeps at the final ``epsilon`` (>= 0).
    max_stages : int
        Cap on the number of stages (>= 1); the stage at the cap jumps to ``epsilon``.
    n_importance : int
        If > 0, a final importance-sampling stage: ``n_importance`` independent draws from
        the proposal ``(1 - defensive) t_df(m, importance_inflation * C) + defensive *
        prior`` (``m``, ``C`` the particles' mean and covariance), weighted by
        ``p(theta) L̂_eps(theta) / g(theta)`` with fresh unbiased estimates ``L̂``. The
        weighted draws are consistent for ``p_eps(theta | s_obs)`` (random-weight
        importance sampling) and independent, unlike the MH-moved particles, whose
        pseudo-marginal "stickiness" correlates them; they replace the particles in the
        result (see :attr:`SMCABCResult.mean_se`).
    importance_sims : int, optional
        Simulations per likelihood estimate in that stage (default ``n_sims``).
    importance_df : float
        Degrees of freedom of the Student-t proposal (> 2).
    importance_inflation : float
        Covariance inflation of the proposal (>= 1).
    defensive : float
        Weight of the prior in the proposal mixture, in [0, 1) (``> 0`` bounds the
        weights where the prior is proper).
    importance_rounds : int
        Rounds of the importance stage (>= 1): ``importance_rounds - 1`` pilot rounds,
        each refitting the proposal's centre and covariance to the weighted draws of the
        round before (the first is fitted to the SMC particles), then the final round,
        which alone makes the result.
    importance_pilot : int, optional
        Draws of each pilot round (>= 10; default ``n_importance``).
    rng : numpy.random.Generator or int

    Returns
    -------
    SMCABCResult

    Raises
    ------
    ValueError
        On invalid settings (before any simulation) or a simulator returning the wrong
        shape or non-finite values.
    """
    if not callable(simulate):
        raise ValueError(f"simulate must be callable, simulate(theta, rng) -> (n, p) "
                         f"(got {type(simulate).__name__})")
    for attr in ("sample", "log_prob", "dim"):
        if not hasattr(prior, attr):
            raise ValueError(f"prior must have sample(n, rng), log_prob(theta) and dim "
                             f"(missing {attr!r})")
    s_obs = _as_vector("s_obs", s_obs)
    p = s_obs.size
    scale = np.ones(p) if scale is None else _as_vector("scale", scale, p)
    if np.any(scale <= 0):
        raise ValueError(f"scale must be > 0 componentwise (got {scale})")
    epsilon = check_float("epsilon", epsilon, positive=True)
    N = check_int("n_particles", n_particles, min_value=10)
    M = check_int("n_sims", n_sims, min_value=1)
    ess_fraction = check_float("ess_fraction", ess_fraction)
    if not 0.0 < ess_fraction < 1.0:
        raise ValueError(f"ess_fraction must be in (0, 1) (got {ess_fraction})")
    rw_scale = check_float("rw_scale", rw_scale, positive=True)
    move_miss = check_float("move_miss", move_miss)
    if not 0.0 < move_miss < 1.0:
        raise ValueError(f"move_miss must be in (0, 1) (got {move_miss})")
    max_moves = check_int("max_moves", max_moves, min_value=1)
    final_moves = check_int("final_moves", final_moves, min_value=0)
    max_stages = check_int("max_stages", max_stages, min_value=1)
    n_importance = check_int("n_importance", n_importance, min_value=0)
    M_is = M if importance_sims is None else check_int("importance_sims", importance_sims,
                                                        min_value=1)
    importance_df = check_float("importance_df", importance_df, min_value=2.0 + 1e-9)
    importance_inflation = check_float("importance_inflation", importance_inflation,
                                       min_value=1.0)
    defensive = check_float("defensive", defensive, min_value=0.0)
    if defensive >= 1.0:
        raise ValueError(f"defensive must be in [0, 1) (got {defensive})")
    importance_rounds = check_int("importance_rounds", importance_rounds, min_value=1)
    n_pilot = (n_importance if importance_pilot is None
               else check_int("importance_pilot", importance_pilot, min_value=10))
    rng = check_rng(rng)
    d = int(prior.dim)

    t0 = time.perf_counter()
    theta = np.asarray(prior.sample(N, rng), dtype=np.float64).reshape(N, d)
    S = _simulate_block(simulate, theta, M, p, rng)
    n_sim = N * M
    log_prior = np.asarray(prior.log_prob(theta), dtype=np.float64)

    def ll_at(Sx: np.ndarray, eps: float) -> np.ndarray:
        return gaussian_kernel_log_likelihood(Sx, s_obs, scale, eps)

    eps = math.inf
    ll = ll_at(S, eps)
    epsilons: list[float] = []
    accs: list[float] = []
    moves: list[int] = []
    for stage in range(max_stages):
        if stage == max_stages - 1:
            new_eps = epsilon
        else:
            new_eps = _next_epsilon(partial(ll_at, S), ll, eps, epsilon, ess_fraction)
        ll_new = ll_at(S, new_eps)
        lw = ll_new - ll
        lw -= lw.max()
        w = np.exp(lw)
        w /= w.sum()
        a = resample(w, rng, "systematic")
        theta, S, ll, log_prior = theta[a], S[a], ll_new[a], log_prior[a]
        eps = new_eps
        final = eps <= epsilon
        # pseudo-marginal random-walk MH moves
        C = np.atleast_2d(np.cov(theta.T)) * (2.38 ** 2 / d) * rw_scale
        lam, U = np.linalg.eigh(C)
        L = U * np.sqrt(np.maximum(lam, 1e-300))
        n_acc = 0
        sweeps = 0
        budget = max_moves + (final_moves if final else 0)
        target_sweeps = 1
        while sweeps < min(target_sweeps, budget):
            prop = theta + rng.standard_normal((N, d)) @ L.T
            lp_prop = np.asarray(prior.log_prob(prop), dtype=np.float64)
            ok = np.isfinite(lp_prop)
            ll_prop = np.full(N, -np.inf)
            S_prop = S.copy()
            if ok.any():
                S_new = _simulate_block(simulate, prop[ok], M, p, rng)
                n_sim += int(ok.sum()) * M
                S_prop[ok] = S_new
                ll_prop[ok] = ll_at(S_new, eps)
            with np.errstate(invalid="ignore"):
                log_ratio = (lp_prop + ll_prop) - (log_prior + ll)
            accept = ok & (np.log(rng.random(N)) < log_ratio)
            theta[accept] = prop[accept]
            S[accept] = S_prop[accept]
            ll[accept] = ll_prop[accept]
            log_prior[accept] = lp_prop[accept]
            n_acc += int(accept.sum())
            sweeps += 1
            if sweeps == 1:
                rate = max(n_acc / N, 1e-3)
                need = 1 if rate >= 1.0 else math.ceil(math.log(move_miss) / math.log(1 - rate))
                target_sweeps = need + (final_moves if final else 0)
        epsilons.append(eps)
        accs.append(n_acc / (N * sweeps))
        moves.append(sweeps)
        if final:
            break
    weights = None
    if n_importance > 0:
        for r in range(importance_rounds):
            n_r = n_importance if r == importance_rounds - 1 else n_pilot
            theta, ll, weights, n_is = _importance_stage(
                simulate, prior, theta, n_r, M_is, p, importance_df,
                importance_inflation, defensive, lambda Sx: ll_at(Sx, epsilon), rng,
                weights=weights)
            n_sim += n_is
    return SMCABCResult(theta=theta, log_likelihood=ll, weights=weights, epsilons=epsilons,
                        acceptance=accs, moves=moves, n_simulations=n_sim,
                        seconds=time.perf_counter() - t0)


def _mvt_logpdf(X: np.ndarray, m: np.ndarray, L: np.ndarray, df: float) -> np.ndarray:
    d = m.size
    z = np.linalg.solve(L, (X - m).T)
    with np.errstate(over="ignore"):  # far outside a narrow t: q = inf, log-density -inf
        q = np.sum(z * z, axis=0)
    logdet = float(np.sum(np.log(np.diag(L))))
    return (math.lgamma(0.5 * (df + d)) - math.lgamma(0.5 * df) - 0.5 * d * math.log(df * math.pi)
            - logdet - 0.5 * (df + d) * np.log1p(q / df))


def _importance_stage(simulate: Simulator, prior: Prior, particles: np.ndarray, n: int, M: int,
                      p: int, df: float, inflation: float, defensive: float,
                      ll_fn: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator,
                      weights: np.ndarray | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Independent draws from a t / prior mixture, weighted with unbiased likelihoods.

    The t is centred at the (weighted) mean of ``particles`` with their (weighted)
    covariance times ``inflation``.
    """
    d = particles.shape[1]
    if weights is None:
        m = particles.mean(axis=0)
        C = np.atleast_2d(np.cov(particles.T))
    else:
        m = weights @ particles
        D = particles - m
        C = (weights[:, None] * D).T @ D / max(1.0 - float(weights @ weights), 1e-12)
    C = C * inflation
    lam, U = np.linalg.eigh(C)
    C = (U * np.maximum(lam, 1e-12 * max(float(lam.max()), 1e-300))) @ U.T
    L = np.linalg.cholesky(C)
    from_prior = rng.random(n) < defensive
    X = np.empty((n, d))
    k = int(from_prior.sum())
    if k:
        X[from_prior] = np.asarray(prior.sample(k, rng), dtype=np.float64).reshape(k, d)
    z = rng.standard_normal((n - k, d)) @ L.T
    chi = rng.chisquare(df, size=n - k)
    X[~from_prior] = m + z / np.sqrt(chi / df)[:, None]
    log_p = np.asarray(prior.log_prob(X), dtype=np.float64)
    log_g = _mvt_logpdf(X, m, L, df) + math.log1p(-defensive)
    if defensive > 0:
        lp_safe = np.where(np.isfinite(log_p), log_p, -np.inf)
        log_g = np.logaddexp(log_g, math.log(defensive) + lp_safe)
    ok = np.isfinite(log_p)
    ll = np.full(n, -np.inf)
    if ok.any():
        ll[ok] = ll_fn(_simulate_block(simulate, X[ok], M, p, rng))
    lw = np.where(ok, log_p + ll - log_g, -np.inf)
    if not np.isfinite(lw).any():
        raise ValueError("every importance draw fell outside the prior support")
    lw -= lw.max()
    w = np.exp(lw)
    w /= w.sum()
    return X, ll, w, int(ok.sum()) * M


def lv_summary_simulator(model: Any = None, n_threads: int = 1) -> Simulator:
    """``simulate(log_theta, rng) -> summaries`` for the stochastic Lotka–Volterra model.

    Parameters
    ----------
    model : StochasticLotkaVolterra, optional
        Default: the reference setup (``X0 = 50``, ``Y0 = 100``, 30 time units every 0.2).
    n_threads : int
        Threads that run chunks of a batch concurrently (the Gillespie kernel releases
        the GIL). Per-simulation seeds are drawn before the split, so the result does not
        depend on ``n_threads``.

    Returns
    -------
    callable
        Maps log-rates of shape ``(n, 4)`` and a Generator to the 9 summary statistics
        of :func:`latentda.dynamics.lotka_volterra_ssa.summary_statistics`, shape ``(n, 9)``
        (one Gillespie simulation per row).
    """
    from latentda.dynamics.lotka_volterra_ssa import StochasticLotkaVolterra, summary_statistics

    if model is None:
        model = StochasticLotkaVolterra()
    if not isinstance(model, StochasticLotkaVolterra):
        raise ValueError(f"model must be a StochasticLotkaVolterra (got {type(model).__name__})")
    n_threads = check_int("n_threads", n_threads, min_value=1)

    def simulate(log_theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lt = np.ascontiguousarray(log_theta, dtype=np.float64)
        seeds = rng.integers(0, np.iinfo(np.int64).max, size=lt.shape[0], dtype=np.int64)
        if n_threads == 1 or lt.shape[0] < 2 * n_threads:
            return summary_statistics(model.simulate_seeds(lt, seeds)[0])
        from concurrent.futures import ThreadPoolExecutor

        parts = np.array_split(np.arange(lt.shape[0]), n_threads)
        with ThreadPoolExecutor(n_threads) as ex:
            trajs = list(ex.map(lambda ix: model.simulate_seeds(lt[ix], seeds[ix])[0], parts))
        return summary_statistics(np.concatenate(trajs))

    return simulate
