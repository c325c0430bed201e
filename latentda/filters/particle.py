"""The bootstrap particle filter (SIR) with regularization and likelihood tempering.

The forecast ensemble ``E`` (shape ``(N, d)``) is the particle set. An analysis

1. weights the particles by the Gaussian likelihood
   ``log w_i += -0.5 |(y - h(x_i)) R^{-1/2}|^2`` in the log domain (never underflows);
2. optionally *tempers* the likelihood (adaptive annealing): the weights go through
   ``p(y|x)^{phi_k}`` for ``0 = phi_0 < phi_1 < ... < phi_K = 1``, each increment chosen
   by bisection so that the conditional ESS of the incremental weights is ``temper_ess * N``;
   the particles are resampled and moved by the regularization kernel between stages, so
   an informative or far-out observation moves them gradually instead of collapsing the
   weights (tempering needs ``bandwidth > 0`` or ``shrinkage < 1`` to move anything);
3. resamples (``scheme``) when ``ESS / N < ess_threshold``, then regularizes (kernel jitter
   or Liu–West shrinkage) and applies the post-analysis ``inflation``.

When it does not resample, the filter returns the (unchanged) particles with their
weights (:attr:`AnalysisResult.weights`) and carries the log-weights to the next analysis;
members keep their order through the forecast, so weight ``i`` stays with member ``i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentda._validate import check_float, check_int
from latentda.filters.base import AnalysisResult, EnsembleFilter, Geometry, Observation
from latentda.filters.resampling import SCHEMES, ess, normalize_log_weights, resample

__all__ = ["ParticleFilter", "silverman_bandwidth", "gaussian_log_likelihood"]

#: how the particles move between tempering stages (see ParticleFilter)
TEMPER_MOVES = ("preserve", "broaden")

#: a log-weight this far below the largest one is zero in float64 (exp underflows)
_UNDERFLOW = -math.log(np.finfo(np.float64).tiny)


def silverman_bandwidth(N: int, d: int) -> float:
    """Optimal Gaussian-kernel bandwidth ``(4 / (N (d + 2)))^(1 / (d + 4))``.

    The bandwidth of the regularized particle filter that minimizes the mean
    integrated squared error for a Gaussian target (Musso, Oudjane & Le Gland 2001).
    """
    N = check_int("N", N, min_value=1)
    d = check_int("d", d, min_value=1)
    return (4.0 / (N * (d + 2.0))) ** (1.0 / (d + 4.0))


def gaussian_log_likelihood(HE: np.ndarray, obs: Observation) -> np.ndarray:
    """``-0.5 |(y - HE_i) R^{-1/2}|^2`` per member (constants dropped), shape ``(N,)``."""
    r = obs.whiten(obs.y - HE)
    return -0.5 * np.einsum("ij,ij->i", r, r)


def _log_det_2pi_R(obs: Observation) -> float:
    if obs.R_is_diagonal:
        return float(np.sum(np.log(2.0 * np.pi * np.diag(obs.R))))
    sign, logdet = np.linalg.slogdet(2.0 * np.pi * obs.R)
    return float(logdet)


def _logsumexp(a: np.ndarray) -> float:
    top = float(a.max())
    if top == -np.inf:
        return -np.inf
    return top + float(np.log(np.exp(a - top).sum()))


@dataclass
class ParticleFilter(EnsembleFilter):
    """Bootstrap particle filter (sampling-importance-resampling) on the ensemble.

    Parameters
    ----------
    scheme : {"systematic", "stratified", "residual", "multinomial"}
        Resampling scheme (see :mod:`latentda.filters.resampling`).
    ess_threshold : float
        Resample when ``ESS / N < ess_threshold``; in (0, 1], 1 resamples at every analysis.
    bandwidth : float
        Regularization after each resampling: every resampled particle gets a Gaussian
        jitter with covariance ``bandwidth**2 * V``, ``V = sum_i w_i (x_i - m)(x_i - m)^T``
        the weighted covariance of the particles before resampling (``m`` their weighted
        mean). 0 (default) is the plain bootstrap filter; :func:`silverman_bandwidth`
        gives the usual choice. Must be 0 when ``shrinkage`` is set.
    shrinkage : float or None
        Liu–West kernel (for parameter estimation), ``a`` in (0, 1]: after resampling
        ``x <- a x + (1 - a) m + sqrt(1 - a**2) * jitter`` with jitter covariance ``V``, which
        keeps the weighted mean and covariance (``a = 1``: no jitter).
    temper : bool
        Likelihood tempering (adaptive annealing) at every analysis.
    temper_ess : float
        Target conditional ESS fraction of each tempering stage, in (0, 1).
    max_temper_stages : int
        Cap on the number of stages; the last allowed stage goes straight to ``phi = 1``
        (``info["temper_capped"] = 1``).
    temper_move : {"preserve", "broaden"}
        How the particles move between tempering stages (after resampling):

        - ``"preserve"`` (default, for cycling): the jitter is followed by a shrinkage
          towards the weighted mean by ``1 / sqrt(1 + bandwidth**2)``, so the moves keep
          the weighted mean and covariance and do not compound over the stages; an
          analysis with more than one stage then always ends with resampling and the
          ordinary (broadening) regularization, once, as an untempered one that resamples.
          The particles cannot leave the span of the forecast cloud: an observation many
          forecast standard deviations away is only partly reached.
        - ``"broaden"``: every stage adds the full jitter ``bandwidth**2 V`` (the spread
          grows by ``1 + bandwidth**2`` per stage), which lets the particles travel far
          beyond the forecast cloud, flattening the forecast information on the way: for
          single analyses of wildly inconsistent observations, where the likelihood
          dominates. It compounds in cycled runs of chaotic models (can blow up).
    inflation : float
        Post-analysis multiplicative inflation of the (weighted) anomalies, >= 1,
        applied after regularization.

    Notes
    -----
    ``info`` of each analysis holds

    - ``"ess"``: effective sample size ``1 / sum w_i^2`` of the final weights, *before*
      the resampling decision, as a **count** (1 to N); ``"ess_fraction"`` is ``ess / N``;
    - ``"ess_untempered"``: the ESS count the one-shot (untempered) update has;
    - ``"resampled"``: 1 when the returned ensemble was resampled at the end (equal
      weights), else 0 (tempering also resamples between its stages, counted by
      ``temper_stages - 1``);
    - ``"temper_stages"``: number of likelihood stages (1 without tempering) and
      ``"temper_capped"`` (1 when the cap forced the last stage);
    - ``"log_likelihood"``: the particle estimate of ``log p(y_t | y_{1:t-1})`` (Gaussian
      constants included; the product over tempering stages, which is only approximately
      unbiased when regularization moves the particles between stages).

    Without tempering, an observation that gives every particle but one a weight that is
    zero in float64 relative to the best (log-likelihood gaps beyond ~708), or every
    particle a ``-inf`` log-likelihood, raises ``ValueError``: the update would collapse
    onto a single particle. Tempering (``temper=True``) recovers from such cases.

    The returned ensemble's member order follows the ancestors (:attr:`ancestors`, the
    index of the forecast member each returned member descends from).

    Examples
    --------
    >>> pf = ParticleFilter(bandwidth=silverman_bandwidth(1000, 40), temper=True)
    >>> round(pf.bandwidth, 3)
    0.81
    """

    scheme: str = "systematic"
    ess_threshold: float = 0.5
    bandwidth: float = 0.0
    shrinkage: float | None = None
    temper: bool = False
    temper_ess: float = 0.5
    max_temper_stages: int = 100
    temper_move: str = "preserve"

    stochastic = True

    def __post_init__(self) -> None:
        self._log_weights: np.ndarray | None = None
        self._weights_out: np.ndarray | None = None
        #: ancestor (forecast member index) of each member of the last analysis ensemble
        self.ancestors: np.ndarray | None = None
        super().__post_init__()

    # ------------------------------------------------------------------ parameters / state

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)} "
                             f"(got {self.scheme!r})")
        self.ess_threshold = check_float("ess_threshold", self.ess_threshold)
        if not 0.0 < self.ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold must be in (0, 1] (got {self.ess_threshold}); "
                             "1 resamples at every analysis")
        self.bandwidth = check_float("bandwidth", self.bandwidth, nonnegative=True)
        if self.shrinkage is not None:
            self.shrinkage = check_float("shrinkage", self.shrinkage)
            if not 0.0 < self.shrinkage <= 1.0:
                raise ValueError(f"shrinkage must be in (0, 1] or None (got {self.shrinkage})")
            if self.bandwidth != 0.0:
                raise ValueError(f"set either bandwidth or shrinkage, not both (got "
                                 f"bandwidth={self.bandwidth}, shrinkage={self.shrinkage}); "
                                 "Liu-West shrinkage implies the jitter scale sqrt(1 - a^2)")
        if not isinstance(self.temper, bool | np.bool_):
            raise ValueError(f"temper must be True or False (got {self.temper!r})")
        self.temper = bool(self.temper)
        self.temper_ess = check_float("temper_ess", self.temper_ess)
        if not 0.0 < self.temper_ess < 1.0:
            raise ValueError(f"temper_ess must be in (0, 1) (got {self.temper_ess})")
        self.max_temper_stages = check_int("max_temper_stages", self.max_temper_stages,
                                           min_value=1)
        if self.temper_move not in TEMPER_MOVES:
            raise ValueError(f"temper_move must be one of {', '.join(TEMPER_MOVES)} "
                             f"(got {self.temper_move!r})")

    def get_state(self) -> dict[str, Any]:
        """The carried normalized log-weights as a list (``None``: equal weights).

        A zero weight (log-weight ``-inf``) is written as ``None`` so that the state
        is plain JSON.
        """
        lw = self._log_weights
        if lw is None:
            return {"log_weights": None}
        return {"log_weights": [None if v == -np.inf else float(v) for v in lw]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (``{}`` resets to equal weights)."""
        extra = set(state) - {"log_weights"}
        if extra:
            raise ValueError(f"ParticleFilter state has only 'log_weights' (got {sorted(extra)})")
        lw = state.get("log_weights")
        if lw is None:
            self._log_weights = None
            return
        arr = np.asarray([-np.inf if v is None else v for v in lw], dtype=np.float64)
        if arr.ndim != 1 or arr.size < 2:
            raise ValueError(f"state['log_weights'] must have shape (N,) with N >= 2 "
                             f"(got {arr.shape})")
        _, lz = normalize_log_weights(arr)
        self._log_weights = arr - lz

    def reset(self) -> None:
        """Forget the carried weights (start again from equal weights)."""
        self._log_weights = None
        self._weights_out = None
        self.ancestors = None

    @property
    def weights(self) -> np.ndarray | None:
        """Normalized weights of the last analysis ensemble (``None``: equal weights)."""
        return None if self._weights_out is None else self._weights_out.copy()

    # ------------------------------------------------------------------ analysis

    def analyse(self, E: np.ndarray, obs: Observation, rng: np.random.Generator | None,
                geometry: Geometry | None = None, background: Any = None) -> AnalysisResult:
        """Assimilate ``obs``; see :meth:`EnsembleFilter.analyse` (``background`` is unused).

        The result's ``weights`` are the normalized weights of the returned ensemble
        (``None`` after resampling: equal weights).
        """
        res = super().analyse(E, obs, rng, geometry, background)
        res.weights = self.weights
        return res

    def _check_call(self, E: np.ndarray, obs: Observation, geometry: Geometry | None) -> None:
        super()._check_call(E, obs, geometry)
        lw = self._log_weights
        if lw is not None and lw.size != E.shape[0]:
            raise ValueError(f"the ParticleFilter carries weights for N = {lw.size} particles "
                             f"but E has N = {E.shape[0]} members; call reset() when the "
                             "ensemble size changes")

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        assert rng is not None
        N = E.shape[0]
        lw = np.full(N, -math.log(N)) if self._log_weights is None else self._log_weights
        ll = gaussian_log_likelihood(HE, obs)
        w_one, _ = normalize_log_weights(lw + ll)  # raises if every particle is impossible
        ess_untempered = ess(w_one)
        X = E
        anc = np.arange(N)
        log_like = 0.0
        stages = 1
        capped = False
        if self.temper:
            X, lw, anc, log_like, stages, capped = self._tempered(X, lw, ll, obs, rng)
        else:
            self._check_collapse(ll)
            lw = lw + ll
            _, lz = normalize_log_weights(lw)
            lw = lw - lz
            log_like = lz
        w = np.exp(lw)
        ess_val = ess(w)
        resampled = (self.ess_threshold >= 1.0 or ess_val / N < self.ess_threshold
                     or (stages > 1 and self.temper_move == "preserve"))
        if resampled:
            X, a = self._resample_move(X, w, rng)
            anc = anc[a]
            w_out = None
        else:
            X = X.copy() if X is E else X
            w_out = w
        if self.inflation != 1.0:
            m = X.mean(axis=0) if w_out is None else w_out @ X
            X = m + self.inflation * (X - m)
        self._log_weights = None if w_out is None else lw
        self._weights_out = w_out
        self.ancestors = anc
        info = {
            "ess": ess_val,
            "ess_fraction": ess_val / N,
            "ess_untempered": ess_untempered,
            "resampled": float(resampled),
            "temper_stages": float(stages),
            "temper_capped": float(capped),
            "log_likelihood": log_like - 0.5 * _log_det_2pi_R(obs),
            "inflation": self.inflation,
        }
        return X, info

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _check_collapse(ll: np.ndarray) -> None:
        if ll.size < 2:
            return
        top2 = np.partition(ll, ll.size - 2)[-2:]
        second, best = float(top2[0]), float(top2[1])
        if second - best < -_UNDERFLOW:
            raise ValueError(
                f"every particle but one has zero likelihood in float64 relative to the best "
                f"(log-likelihood gap {best - second:.4g} > {_UNDERFLOW:.4g}; best whitened "
                f"squared misfit {-2.0 * best:.4g}): the update would collapse onto one "
                "particle. Turn on likelihood tempering (temper=True), use a larger "
                "observation-error covariance R, or check the observations")

    def _tempered(self, X: np.ndarray, lw: np.ndarray, ll: np.ndarray, obs: Observation,
                  rng: np.random.Generator,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int, bool]:
        """Adaptive annealing ``phi: 0 -> 1``; returns the weighted particles at ``phi = 1``."""
        N = X.shape[0]
        anc = np.arange(N)
        log_target = math.log(self.temper_ess)
        phi = 0.0
        log_like = 0.0
        stages = 0
        capped = False
        while True:
            stages += 1
            rest = 1.0 - phi
            if stages >= self.max_temper_stages:
                delta = rest
                capped = self._log_cess(lw, ll, rest) < log_target
            else:
                delta = self._next_increment(lw, ll, rest, log_target)
            final = delta >= rest
            inc = ll if final and phi == 0.0 else (rest if final else delta) * ll
            lw = lw + inc
            _, lz = normalize_log_weights(lw)
            lw = lw - lz
            log_like += lz
            if final:
                return X, lw, anc, log_like, stages, capped
            phi += delta
            X, a = self._resample_move(X, np.exp(lw), rng,
                                       preserve=self.temper_move == "preserve")
            anc = anc[a]
            lw = np.full(N, -math.log(N))
            ll = gaussian_log_likelihood(self._observe(obs, X), obs)

    @staticmethod
    def _log_cess(lw: np.ndarray, ll: np.ndarray, delta: float) -> float:
        """log of the conditional ESS fraction ``(sum W u)^2 / sum W u^2``, ``u = e^{delta ll}``."""
        a = lw + delta * ll
        return 2.0 * _logsumexp(a) - _logsumexp(a + delta * ll)

    def _next_increment(self, lw: np.ndarray, ll: np.ndarray, rest: float,
                        log_target: float) -> float:
        if self._log_cess(lw, ll, rest) >= log_target:
            return rest
        lo, hi = 0.0, rest
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if self._log_cess(lw, ll, mid) >= log_target:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-6 * hi:
                break
        return lo if lo > 0.0 else hi

    def _resample_move(self, X: np.ndarray, w: np.ndarray, rng: np.random.Generator,
                       preserve: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Resample ``X`` by ``w`` and regularize; returns the new particles and ancestors.

        ``preserve``: shrink the jittered particles towards the weighted mean by
        ``1 / sqrt(1 + bandwidth^2)`` so that the kernel keeps the weighted covariance
        (used between tempering stages, where the jitter would otherwise compound).
        """
        a = resample(w, rng, self.scheme)
        Xr = X[a]
        shrink = self.shrinkage
        h = self.bandwidth if shrink is None else math.sqrt(max(0.0, 1.0 - shrink * shrink))
        if h == 0.0 and (shrink is None or shrink == 1.0):
            return Xr, a
        m = w @ X
        keep = w > 0.0
        B = np.sqrt(w[keep])[:, None] * (X[keep] - m)  # V = B^T B
        n_out, d = Xr.shape
        if d <= B.shape[0]:
            lam, U = np.linalg.eigh(B.T @ B)
            L = U * np.sqrt(np.maximum(lam, 0.0))  # V = L L^T
            jitter = rng.standard_normal((n_out, d)) @ L.T
        else:  # ensemble space: cheaper when d exceeds the number of weighted particles
            jitter = rng.standard_normal((n_out, B.shape[0])) @ B
        if shrink is not None:
            Xr = shrink * Xr + (1.0 - shrink) * m
        if h != 0.0:
            Xr += h * jitter
        if preserve and shrink is None:
            Xr = m + (Xr - m) / math.sqrt(1.0 + h * h)
        return Xr, a
