"""The cycling engine: forecast → observe → analyse → diagnose → write.

:class:`Cycle` holds the ensemble of physical states and the current time. A
script can drive it step by step::

    cyc = Cycle(model, ETKF(inflation=1.02), operator, E0)
    cyc.forecast(until=0.05)
    diag = cyc.analyse(y, variances, truth=x_true)
    cyc.ensemble            # the analysis ensemble (N, n)

or run it over an :class:`~latentda.obs_stream.ObservationStream` with
:meth:`Cycle.run`. The filter works through a *space* (state or latent), so the
same engine drives every method. Random numbers of cycle ``c`` come from
``default_rng([seed, c])``, so a run is reproducible and can be resumed at any
cycle.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentda import diagnostics as dg
from latentda._validate import check_ensemble, check_float, check_int
from latentda.bias_monitor import BIAS_SCALARS
from latentda.dynamics.base import Dynamics
from latentda.filters.base import EnsembleFilter, Observation
from latentda.obs_stream import ObservationStream
from latentda.observations import ObservationOperator
from latentda.spaces import StateSpace
from latentda.window import WINDOW_SCALARS


class DivergenceError(RuntimeError):
    """The filter diverged: non-finite states, or skill beyond the configured bounds.

    Attributes
    ----------
    time : float
        Analysis time of the first bad cycle (nothing from it is written).
    reason : str
        What was detected.
    """

    def __init__(self, time: float, reason: str) -> None:
        super().__init__(f"diverged at time {time:g}: {reason}")
        self.time = time
        self.reason = reason


#: scalar diagnostics written every cycle: name -> (long_name, units)
SCALARS: dict[str, tuple[str, str]] = {
    "rmse_forecast": ("RMSE of the forecast mean against the truth", "model units"),
    "rmse_analysis": ("RMSE of the analysis mean against the truth", "model units"),
    "spread_forecast": ("forecast ensemble spread (root mean variance)", "model units"),
    "spread_analysis": ("analysis ensemble spread (root mean variance)", "model units"),
    "crps_forecast": ("CRPS of the forecast ensemble, mean over variables", "model units"),
    "crps_analysis": ("CRPS of the analysis ensemble, mean over variables", "model units"),
    "innovation_rms": ("RMS of the innovation y - H(forecast mean)", "model units"),
    "innovation_chi2": ("normalised innovation d'(HPH'+R)^-1 d / m (about 1 if consistent)",
                        "1"),
    "inflation": ("multiplicative inflation applied in the analysis", "1"),
    "ess": ("effective sample size 1/sum(w^2) of the particle weights before resampling "
            "(particle filters; NaN otherwise)", "1"),
    "temper_stages": ("likelihood-tempering stages of the particle analysis (1: untempered; "
                      "NaN for other filters)", "1"),
    "rmse_smoothed": ("RMSE of the smoothed mean against the truth (smoothers; NaN otherwise)",
                      "model units"),
    "spread_smoothed": ("smoothed ensemble spread (smoothers; NaN otherwise)", "model units"),
    "jitter": ("largest eigenvalue floor added in the analysis to keep matrices positive "
               "definite (0: none needed)", "1"),
    "map_iterations": ("Gauss-Newton iterations of the MAP (Laplace and MCMC analyses; NaN "
                       "otherwise)", "1"),
    "hessian_damping": ("eigenvalue raise applied to a singular or indefinite Hessian in the "
                        "Laplace approximation (0: none needed; NaN for other analyses)", "1"),
    "static_used": ("1 when the gated Laplace/MCMC analysis fell back on the static "
                    "background (the ensemble alone misfit the observations), 0 when the "
                    "ensemble alone was kept (NaN without a gate)", "1"),
    "accept_rate": ("mean Metropolis acceptance rate of the MCMC analysis chains (NaN for "
                    "other analyses)", "1"),
    "mcmc_ess": ("smallest effective sample size over the analysed variables of the MCMC "
                 "analysis chains' kept draws (NaN for other analyses)", "1"),
}


#: out-of-distribution diagnostics written every cycle when the run has a monitor
#: (see :class:`latentda.ood_monitor.OODMonitor`): name -> (long_name, units)
OOD_SCALARS: dict[str, tuple[str, str]] = {
    "ood_residual": ("min over z of |R^-1/2 (y - H G(z))|^2 / m: misfit of the observations "
                     "to the closest state the prior can generate (about dof/m in "
                     "distribution)", "1"),
    "ood_score": ("chi-square upper-tail probability of m * ood_residual (small: the "
                  "observations are out of the prior's distribution)", "1"),
    "manifold_distance": ("RMS distance |x - G(E(x))| / sqrt(n) of the analysis mean from "
                          "the generator's range", "model units"),
}


#: per-component skill written every cycle: name -> long_name
COMPONENT_SCALARS: dict[str, str] = {
    "rmse_forecast_by_component": "RMSE of the forecast mean per state component",
    "rmse_analysis_by_component": "RMSE of the analysis mean per state component",
    "spread_forecast_by_component": "forecast ensemble spread per state component",
    "spread_analysis_by_component": "analysis ensemble spread per state component",
}


@dataclass
class CycleRecord:
    """What one analysis produced: scalars and fields of one cycle."""

    time: float
    scalars: dict[str, float]
    obs_valid: int
    rank_histogram: np.ndarray
    forecast: np.ndarray
    analysis: np.ndarray
    truth: np.ndarray | None
    obs_value: np.ndarray
    by_component: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Cycle:
    """An ensemble cycled through forecasts and analyses.

    Parameters
    ----------
    model : Dynamics
        The physical model; forecasts always run it on physical states.
    filter : EnsembleFilter
        The analysis method.
    operator : ObservationOperator
        Observation operator on physical states.
    ensemble : ndarray, shape (N, n)
        Initial ensemble of physical states.
    space : optional
        The space the filter works in (default: the model's state space).
    t0 : float
        Initial time.
    seed : int
        Seed of the per-cycle random streams.
    writer : optional
        A :class:`~latentda.io.RunWriter` (or any object with ``write(time, **values)``)
        that receives every cycle; see :meth:`output_values`.
    store_ensemble : bool
        Whether written records carry every member (else mean and std).
    blas_threads : int or None
        BLAS threads during :meth:`run` (default: 1 for N <= 256, else unchanged).
    max_rmse, max_spread : float, optional
        Divergence bounds on the analysis RMSE and spread; non-finite states always
        count as divergence. A diverged cycle raises :class:`DivergenceError` before
        anything of it is written.
    forecaster : optional
        A :class:`~latentda.parallel.Forecaster` that runs the forecasts over batches
        of members on a Dask scheduler (default: ``model.step`` in this thread).
    monitor : optional
        An out-of-distribution monitor (:class:`latentda.ood_monitor.OODMonitor`): called
        with the valid observations, their error covariance, the valid-mask and the
        analysis mean every analysis; its values (:data:`OOD_SCALARS` and
        ``ood_flag``) are written. Its trailing window (``ood.window``) is part of
        the checkpoint.
    identifiability : optional
        An :class:`~latentda.identifiability_monitor.IdentifiabilityMonitor`: the
        singular values of the whitened observed Jacobian and the Cramér–Rao bounds
        at the analysis code are written every analysis (``identifiability_sv``,
        ``crlb``, dim ``latent``).
    window : optional
        A :class:`~latentda.window.WindowReanalysis` (latent space, manifold mode): after
        each analysis the last observation times are re-analysed together through the
        model and the analysis members are shifted so that their mean is the window's
        state (``window_misfit``, ``window_times`` are written). Not part of the
        checkpoint: such runs cannot be resumed.
    bias : optional
        A :class:`~latentda.bias_monitor.BiasMonitor`: a CUSUM of the standardized
        innovation mean over the valid observations, every analysis (``bias_z``,
        ``bias_cusum``, ``bias_flag``); its state is part of the checkpoint.
    """

    def __init__(self, model: Dynamics, filter: EnsembleFilter, operator: ObservationOperator,
                 ensemble: np.ndarray, *, space: Any = None, t0: float = 0.0, seed: int = 0,
                 writer: Any = None, store_ensemble: bool = False,
                 blas_threads: int | None = -1, max_rmse: float | None = None,
                 max_spread: float | None = None, forecaster: Any = None,
                 monitor: Any = None, identifiability: Any = None, window: Any = None,
                 bias: Any = None) -> None:
        if not isinstance(model, Dynamics):
            raise ValueError(f"model must be a latentda Dynamics (got {type(model).__name__})")
        if not isinstance(filter, EnsembleFilter):
            raise ValueError(f"filter must be an EnsembleFilter (got {type(filter).__name__})")
        if operator.state_dim != model.state_dim:
            raise ValueError(f"operator.state_dim ({operator.state_dim}) must equal the model's "
                             f"state size ({model.state_dim})")
        #: the operator in torch, for filters that differentiate h (built once)
        self._operator_t = None
        if filter.needs_gradient:
            from latentda.autodiff import torch_operator
            from latentda.inference.latent import require_differentiable

            require_differentiable(operator, type(filter).__name__)
            self._operator_t = torch_operator(operator)
        self.model = model
        self.filter = filter
        self.operator = operator
        self.space = space if space is not None else StateSpace.for_model(model)
        E = check_ensemble("ensemble", ensemble, model.state_dim, allow_1d=False)
        if E.shape[0] < 2:
            raise ValueError(f"ensemble must have at least 2 members (got {E.shape[0]})")
        if not np.all(np.isfinite(E)):
            raise ValueError("ensemble must be finite (it contains NaN or inf)")
        self.E = E
        self.t = check_float("t0", t0)
        self.seed = check_int("seed", seed, min_value=0)
        self.cycle_index = 0
        self.writer = writer
        self.forecaster = forecaster
        self.monitor = monitor
        self.identifiability = identifiability
        if window is not None and (getattr(self.space, "latent_dim", None) is None
                                   or window.space is not self.space):
            raise ValueError("window must be a WindowReanalysis built on this run's latent "
                             "space (got one for another space, or a state-space run)")
        self.window = window
        self.bias = bias
        self.store_ensemble = bool(store_ensemble)
        self.last: CycleRecord | None = None
        self.max_rmse = None if max_rmse is None else check_float("max_rmse", max_rmse,
                                                                  positive=True)
        self.max_spread = None if max_spread is None else check_float("max_spread", max_spread,
                                                                      positive=True)
        self.blas_threads = (1 if E.shape[0] <= 256 else None) if blas_threads == -1 else (
            blas_threads)
        self._obs_loc = operator.locations(model.state_locations())
        self.components = model.components()
        #: normalized weights of the current ensemble (particle filters), None: equal
        self.weights: np.ndarray | None = None
        #: records waiting for their smoothed ensemble (smoothers only)
        self._pending: deque[CycleRecord] = deque()
        self._n_analyses = 0

    @property
    def smoother(self) -> bool:
        """Whether the filter is a fixed-lag smoother (records are written ``lag`` later)."""
        return hasattr(self.filter, "released") and hasattr(self.filter, "flush")

    def __repr__(self) -> str:
        return (f"Cycle({self.model!r}, {self.filter!r}, {self.space!r}, N={self.N}, "
                f"t={self.t:g}, cycle={self.cycle_index})")

    @property
    def N(self) -> int:
        """Ensemble size."""
        return self.E.shape[0]

    @property
    def ensemble(self) -> np.ndarray:
        """The current ensemble of physical states (a copy), shape (N, n)."""
        return self.E.copy()

    # ------------------------------------------------------------------ steps

    def forecast(self, until: float) -> np.ndarray:
        """Integrate the ensemble to time ``until`` (on the model's time grid).

        Returns
        -------
        ndarray, shape (N, n)
            The forecast ensemble (also kept as the current ensemble).
        """
        nsteps = self.model.nsteps_between(self.t, until)
        if self.forecaster is None:
            self.E = self.model.step(self.E, nsteps)
        else:
            self.E = self.forecaster.step(self.model, self.E, nsteps)
        self.t = float(until)
        return self.E

    @staticmethod
    def _summary(E: np.ndarray, w: np.ndarray | None,
                 truth: np.ndarray | None) -> dg.EnsembleSummary:
        """Ensemble statistics; a weighted ensemble uses its weighted mean and spread.

        CRPS and the rank histogram of a weighted ensemble are computed on its
        deterministic systematic resample (offset 1/2), which has the same distribution.
        """
        if w is None:
            return dg.ensemble_summary(E, truth)
        N = E.shape[0]
        idx = np.searchsorted(np.cumsum(w), (np.arange(N) + 0.5) / N)
        s = dg.ensemble_summary(E[np.minimum(idx, N - 1)], truth)
        mean = w @ E
        var = w @ (E - mean) ** 2 * (N / (N - 1.0))
        rmse = float("nan") if truth is None else dg.rmse(mean, truth)
        return dg.EnsembleSummary(mean, np.sqrt(var), float(np.sqrt(var.mean())), rmse,
                                  s.crps, s.ranks)

    @staticmethod
    def _weighted_mean(E: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        return E.mean(axis=0) if w is None else w @ E

    def _observation(self, y: np.ndarray, var: np.ndarray, valid: np.ndarray) -> Observation:
        op = self.operator
        sel = valid if not valid.all() else None

        def h_valid(X: np.ndarray) -> np.ndarray:
            HX = op(X)
            return HX if sel is None else HX[:, sel]

        loc = None if self._obs_loc is None else self._obs_loc[valid]
        R = np.diag(var[valid]) if var.ndim == 1 else var[np.ix_(valid, valid)]
        h_t = None
        if self.filter.needs_gradient:  # a differentiable h for gradient-based analyses
            import torch

            op_t = self._operator_t
            idx = None if sel is None else torch.as_tensor(np.flatnonzero(sel))

            def h_t(X: torch.Tensor) -> torch.Tensor:
                HX = op_t(X)
                return HX if idx is None else HX.index_select(1, idx)

        return Observation(y=y[valid], R=R, h=h_valid, locations=loc, h_torch=h_t)

    def analyse(self, y: np.ndarray, variances: np.ndarray,
                truth: np.ndarray | None = None) -> CycleRecord:
        """Assimilate observations at the current time.

        Parameters
        ----------
        y : ndarray, shape (m,)
            Observed values; NaN/inf entries are missing and ignored. With no valid
            value the step is forecast-only (the analysis equals the forecast).
        variances : ndarray, shape (m,) or (m, m)
            Observation-error variances (diagonal R), or a full covariance R.
        truth : ndarray, shape (n,), optional
            The true state, for skill scores (NaN scores without it).

        Returns
        -------
        CycleRecord
        """
        m = self.operator.obs_dim
        y = np.asarray(y, dtype=np.float64)
        var = np.asarray(variances, dtype=np.float64)
        if y.shape != (m,) or var.shape not in ((m,), (m, m)):
            raise ValueError(f"y must have shape ({m},) and variances ({m},) or ({m}, {m}) "
                             f"(got {y.shape}, {var.shape})")
        valid = np.isfinite(y)
        Ef = self.E
        if not np.all(np.isfinite(Ef)):
            raise DivergenceError(self.t, "the forecast ensemble is not finite (the model blew "
                                  "up)")
        rng = np.random.default_rng([self.seed, self.cycle_index])
        scalars = dict.fromkeys(SCALARS, float("nan"))
        w_f = w_a = self.weights
        analysed = bool(valid.any())
        latent = getattr(self.space, "latent_dim", None) is not None
        Zf = Za = None
        if analysed:
            obs = self._observation(y, var, valid)
            try:
                asm = self.space.assimilate(self.filter, Ef, obs, rng)
                res, Ea = asm.result, asm.E
                Zf, Za = asm.latent_forecast, asm.latent_analysis
                inn_rms, inn_chi2 = dg.innovation_statistics(asm.HE, obs.y, obs.R)
            except np.linalg.LinAlgError as err:  # overflowing or degenerate ensembles
                raise DivergenceError(self.t, f"the analysis failed ({err}); the ensemble is "
                                      f"degenerate (spread {dg.spread(Ef):.3g})") from err
            scalars["innovation_rms"] = inn_rms
            scalars["innovation_chi2"] = inn_chi2
            scalars["inflation"] = float(res.info.get("inflation", self.filter.inflation))
            scalars["jitter"] = float(res.info.get("jitter", np.nan))
            scalars["ess"] = float(res.info.get("ess", np.nan))
            scalars["temper_stages"] = float(res.info.get("temper_stages", np.nan))
            for key in ("map_iterations", "hessian_damping", "static_used", "accept_rate",
                        "mcmc_ess"):
                scalars[key] = float(res.info.get(key, np.nan))
            w_a = None if res.weights is None else np.asarray(res.weights, dtype=np.float64)
        else:
            Ea = Ef.copy()
        bias: dict[str, Any] = {}
        if self.bias is not None:  # the forecast's innovations, before anything moves Ea
            bias = self.bias(asm.HE, obs.y, obs.R) if analysed else self.bias.missing()
        win: dict[str, float] = {}
        if self.window is not None:
            if analysed:
                Ea, Za, win = self.window(self.t, obs, Zf, Za, Ea)
            else:
                win = self.window.missing()
        if not np.all(np.isfinite(Ea)):
            raise DivergenceError(self.t, "the analysis ensemble is not finite")
        if latent and Zf is None:
            Zf = self.space.codes(Ef)
        if latent and Za is None:
            Za = Zf
        ood: dict[str, Any] = {}
        if self.monitor is not None:
            R = np.diag(var[valid]) if var.ndim == 1 else var[np.ix_(valid, valid)]
            ood = self.monitor(y[valid], R, valid, self._weighted_mean(Ea, w_a)) if analysed \
                else self.monitor.missing()
        ident: dict[str, Any] = {}
        if self.identifiability is not None:
            if analysed:
                R = np.diag(var[valid]) if var.ndim == 1 else var[np.ix_(valid, valid)]
                code = None if Za is None else self._weighted_mean(Za, w_a)
                ident = self.identifiability(R, valid, self._weighted_mean(Ea, w_a), code)
            else:
                ident = self.identifiability.missing()
        if truth is not None:
            truth = np.asarray(truth, dtype=np.float64)
        fs = self._summary(Ef, w_f, truth)
        an = self._summary(Ea, w_a, truth)
        scalars.update(spread_forecast=fs.spread, spread_analysis=an.spread,
                       rmse_forecast=fs.rmse, rmse_analysis=an.rmse,
                       crps_forecast=fs.crps, crps_analysis=an.crps)
        ranks = fs.ranks
        if self.max_rmse is not None and an.rmse > self.max_rmse:
            raise DivergenceError(self.t, f"analysis RMSE {an.rmse:.4g} > max_rmse "
                                  f"{self.max_rmse:g}")
        if self.max_spread is not None and an.spread > self.max_spread:
            raise DivergenceError(self.t, f"analysis spread {an.spread:.4g} > max_spread "
                                  f"{self.max_spread:g}")
        self.E = Ea
        self.weights = w_a
        by_comp = self._by_component(Ef, Ea, truth, scalars, fs, an)
        rec = CycleRecord(time=self.t, scalars=scalars, obs_valid=int(valid.sum()),
                          rank_histogram=ranks, forecast=Ef, analysis=Ea, truth=truth,
                          obs_value=y, by_component=by_comp,
                          extra={"forecast_summary": fs, "analysis_summary": an,
                                 "latent_forecast": Zf, "latent_analysis": Za, "ood": ood,
                                 "identifiability": ident, "window": win, "bias": bias})
        self.last = rec
        self.cycle_index += 1
        if not self.smoother:
            if self.writer is not None:
                self.writer.write(rec.time, checkpoint=self.checkpoint(),
                                  **self.output_values(rec))
            return rec
        rec.extra["analysis_index"] = self._n_analyses if analysed else None
        self._pending.append(rec)
        if analysed:
            self._n_analyses += 1
            if self.filter.released is not None:
                self._release(self.filter.released)
        return rec

    def _release(self, smoothed: Any) -> None:
        """Attach a smoothed ensemble to its record; write every record that is complete."""
        while self._pending:
            rec = self._pending[0]
            idx = rec.extra.get("analysis_index")
            if idx is not None and idx > smoothed.index:
                break
            self._pending.popleft()
            if idx == smoothed.index:
                w = getattr(smoothed, "weights", None)
                Es = self.space.decode(smoothed.E)
                ss = self._summary(Es, None if w is None else np.asarray(w), rec.truth)
                rec.extra["smoothed_summary"] = ss
                rec.scalars["rmse_smoothed"] = ss.rmse
                rec.scalars["spread_smoothed"] = ss.spread
            if self.writer is not None:  # smoothed runs cannot be resumed: no checkpoint
                self.writer.write(rec.time, **self.output_values(rec))

    def finalize(self) -> None:
        """End of a run: release the smoother's window and write the waiting records."""
        if not self.smoother:
            return
        for s in self.filter.flush():
            self._release(s)
        while self._pending:  # records with no analysis after the last smoothed one
            rec = self._pending.popleft()
            if self.writer is not None:
                self.writer.write(rec.time, **self.output_values(rec))

    # ------------------------------------------------------------------ resume

    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a run needs to continue exactly from here: ensemble, time, filter and
        monitor state."""
        monitors = {name: mon.get_state() for name, mon in self._stateful_monitors().items()}
        return ({"ensemble": self.E},
                {"time": self.t, "cycle_index": self.cycle_index,
                 "filter_state": self.filter.get_state(), "monitor_state": monitors})

    def _stateful_monitors(self) -> dict[str, Any]:
        """The monitors that carry state from cycle to cycle (part of the checkpoint)."""
        out = {"ood": self.monitor, "bias": self.bias}
        return {k: m for k, m in out.items() if m is not None and hasattr(m, "get_state")}

    def restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint` (e.g. read back from a store).

        Random streams derive from the seed and the cycle index, so the continued
        run is bit-identical to an uninterrupted one.
        """
        E = check_ensemble("checkpoint ensemble", arrays["ensemble"], self.model.state_dim,
                           allow_1d=False)
        if E.shape[0] != self.N:
            raise ValueError(f"checkpoint ensemble has {E.shape[0]} members, this run {self.N}")
        self.E = E.copy()
        self.t = float(meta["time"])
        self.cycle_index = int(meta["cycle_index"])
        self.filter.set_state(meta.get("filter_state") or {})
        states = meta.get("monitor_state") or {}
        for name, mon in self._stateful_monitors().items():
            mon.set_state(states.get(name) or {})
        w = getattr(self.filter, "weights", None)
        self.weights = None if w is None else np.asarray(w, dtype=np.float64)

    def _by_component(self, Ef: np.ndarray, Ea: np.ndarray, truth: np.ndarray | None,
                      scalars: dict[str, float], fs: dg.EnsembleSummary,
                      an: dg.EnsembleSummary) -> dict[str, np.ndarray]:
        if len(self.components) == 1:  # one component: the whole-state scores
            return {k: np.array([scalars[k.removesuffix("_by_component")]])
                    for k in COMPONENT_SCALARS}
        out = {k: np.full(len(self.components), np.nan) for k in COMPONENT_SCALARS}
        for c, (_, idx) in enumerate(self.components):
            out["spread_forecast_by_component"][c] = float(np.sqrt(np.mean(fs.std[idx] ** 2)))
            out["spread_analysis_by_component"][c] = float(np.sqrt(np.mean(an.std[idx] ** 2)))
            if truth is not None:
                out["rmse_forecast_by_component"][c] = dg.rmse(fs.mean[idx], truth[idx])
                out["rmse_analysis_by_component"][c] = dg.rmse(an.mean[idx], truth[idx])
        return out

    # ------------------------------------------------------------------ output

    def output_values(self, rec: CycleRecord) -> dict[str, np.ndarray]:
        """The per-cycle values written to the store (see :func:`output_variables`)."""
        n = self.model.state_dim
        nan = np.full(n, np.nan)
        fs = rec.extra.get("forecast_summary") or dg.ensemble_summary(rec.forecast, rec.truth)
        an = rec.extra.get("analysis_summary") or dg.ensemble_summary(rec.analysis, rec.truth)
        out: dict[str, Any] = {
            "truth": rec.truth if rec.truth is not None else nan,
            "obs_value": rec.obs_value,
            "obs_valid": np.int32(rec.obs_valid),
            "obs_masked": np.int32(self.operator.obs_dim - rec.obs_valid),
            "forecast_mean": fs.mean,
            "analysis_mean": an.mean,
            "forecast_std": fs.std,
            "analysis_std": an.std,
            "rank_histogram": rec.rank_histogram,
            **{k: np.float64(v) for k, v in rec.scalars.items()},
            **rec.by_component,
        }
        if self.store_ensemble:
            out["forecast"] = rec.forecast
            out["analysis"] = rec.analysis
        Zf, Za = rec.extra.get("latent_forecast"), rec.extra.get("latent_analysis")
        if getattr(self.space, "latent_dim", None) is not None:
            k = self.space.latent_dim
            for name, Z in (("latent_forecast", Zf), ("latent_analysis", Za)):
                Z = np.full((self.N, k), np.nan) if Z is None else Z
                out[f"{name}_mean"] = Z.mean(axis=0)
                out[f"{name}_std"] = Z.std(axis=0, ddof=1)
                if self.store_ensemble:
                    out[name] = Z
        if self.monitor is not None:
            ood = rec.extra.get("ood") or self.monitor.missing()
            out.update({k: np.float64(ood[k]) for k in OOD_SCALARS})
            out["ood_flag"] = np.bool_(ood["ood_flag"])
        if self.identifiability is not None:
            out.update(rec.extra.get("identifiability") or self.identifiability.missing())
        if self.window is not None:
            win = rec.extra.get("window") or self.window.missing()
            out.update({k: np.float64(win[k]) for k in WINDOW_SCALARS})
        if self.bias is not None:
            bias = rec.extra.get("bias") or self.bias.missing()
            out.update({k: np.float64(bias[k]) for k in BIAS_SCALARS})
            out["bias_flag"] = np.bool_(bias["bias_flag"])
        if self.smoother:
            ss = rec.extra.get("smoothed_summary")
            out["smoothed_mean"] = nan if ss is None else ss.mean
            out["smoothed_std"] = nan if ss is None else ss.std
        return out

    # ------------------------------------------------------------------ running

    def _blas_limit(self) -> contextlib.AbstractContextManager:
        """One BLAS thread for ensemble-space linear algebra of small ensembles.

        The analysis works on N×N matrices; for N below a few hundred, threaded
        BLAS only adds synchronisation (measured: a 40×40 ``eigh`` took 4× longer
        with threads than without on a loaded 2-core machine).
        """
        if self.blas_threads is None:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self.blas_threads, user_api="blas")

    def iterate(self, stream: ObservationStream, start: int = 0,
                stop: int | None = None) -> Iterator[CycleRecord]:
        """Yield one record per analysis time of ``stream`` (forecast, then analyse)."""
        stop = len(stream) if stop is None else stop
        for c in range(start, stop):
            self.forecast(stream.times[c])
            truth = stream.truth[c] if stream.truth is not None else None
            yield self.analyse(stream.values[c], stream.error(c), truth)

    def run(self, stream: ObservationStream, *, progress: bool = False,
            callback: Callable[[CycleRecord], None] | None = None) -> dict[str, np.ndarray]:
        """Cycle through the analysis times of ``stream`` from the current cycle index.

        Returns
        -------
        dict
            Time series of every scalar diagnostic (name -> (K,) array) and ``time``.
        """
        series: dict[str, list] = {k: [] for k in (*SCALARS, *COMPONENT_SCALARS)}
        times: list[float] = []
        records: list[CycleRecord] = []
        it = self.iterate(stream, start=self.cycle_index)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(stream), initial=self.cycle_index, desc=f"{self.filter!r}",
                      unit="cycle", mininterval=0.5)
        with self._blas_limit():
            for rec in it:
                records.append(rec)
                if callback is not None:
                    callback(rec)
            self.finalize()
        for rec in records:  # after finalize: smoothed scores are attached
            times.append(rec.time)
            for k, v in rec.scalars.items():
                series[k].append(v)
            for k, v in rec.by_component.items():
                series[k].append(v)
        return {"time": np.asarray(times), **{k: np.asarray(v) for k, v in series.items()}}


def output_variables(store_ensemble: bool, smoother: bool = False, latent: bool = False,
                     ood: bool = False, identifiability: bool = False, window: bool = False,
                     bias: bool = False) -> list[tuple[str, tuple[str, ...], str, dict]]:
    """The per-cycle variables of the run dataset: (name, dims, dtype, attrs).

    ``latent``: the run analyses in a latent space (codes are written);
    ``ood``: it has an out-of-distribution monitor; ``identifiability``: it has an
    identifiability monitor (variables on the ``latent`` dimension); ``window``: it
    has a window reanalysis (:data:`latentda.window.WINDOW_SCALARS`); ``bias``: it has
    a bias monitor (:data:`latentda.bias_monitor.BIAS_SCALARS` and ``bias_flag``).
    """
    mu = "model units"
    out: list[tuple[str, tuple[str, ...], str, dict]] = [
        ("truth", ("state",), "float64", {"long_name": "true state (NaN: unknown)", "units": mu}),
        ("obs_value", ("obs",), "float64",
         {"long_name": "observed value (NaN: missing)", "units": mu}),
        ("obs_valid", (), "int32", {"long_name": "number of valid observations", "units": "1"}),
        ("obs_masked", (), "int32",
         {"long_name": "number of masked (NaN/inf) observations; all masked: forecast-only",
          "units": "1"}),
        ("forecast_mean", ("state",), "float64", {"long_name": "forecast ensemble mean",
                                                  "units": mu}),
        ("analysis_mean", ("state",), "float64", {"long_name": "analysis ensemble mean",
                                                  "units": mu}),
        ("forecast_std", ("state",), "float64",
         {"long_name": "forecast ensemble standard deviation", "units": mu}),
        ("analysis_std", ("state",), "float64",
         {"long_name": "analysis ensemble standard deviation", "units": mu}),
        ("rank_histogram", ("rank",), "int64",
         {"long_name": "rank of the truth among the forecast members (counts over variables)",
          "units": "1"}),
    ]
    out += [(k, (), "float64", {"long_name": ln, "units": u}) for k, (ln, u) in SCALARS.items()]
    out += [(k, ("component",), "float64", {"long_name": ln, "units": mu})
            for k, ln in COMPONENT_SCALARS.items()]
    if store_ensemble:
        out += [
            ("forecast", ("member", "state"), "float64",
             {"long_name": "forecast ensemble", "units": mu}),
            ("analysis", ("member", "state"), "float64",
             {"long_name": "analysis ensemble", "units": mu}),
        ]
    if latent:
        for stage in ("forecast", "analysis"):
            out += [
                (f"latent_{stage}_mean", ("latent",), "float64",
                 {"long_name": f"mean of the latent codes of the {stage} members",
                  "units": "latent units"}),
                (f"latent_{stage}_std", ("latent",), "float64",
                 {"long_name": f"standard deviation of the latent codes of the {stage} members",
                  "units": "latent units"}),
            ]
            if store_ensemble:
                out.append((f"latent_{stage}", ("member", "latent"), "float64",
                            {"long_name": f"latent codes of the {stage} members",
                             "units": "latent units"}))
    if ood:
        out += [(k, (), "float64", {"long_name": ln, "units": u})
                for k, (ln, u) in OOD_SCALARS.items()]
        out.append(("ood_flag", (), "bool",
                    {"long_name": "observations flagged out of distribution (ood_score below "
                                  "the level)", "units": "1"}))
    if window:
        out += [(k, (), "float64", {"long_name": ln, "units": u})
                for k, (ln, u) in WINDOW_SCALARS.items()]
    if bias:
        out += [(k, (), "float64", {"long_name": ln, "units": u})
                for k, (ln, u) in BIAS_SCALARS.items()]
        out.append(("bias_flag", (), "bool",
                    {"long_name": "forecast bias flagged (|bias_cusum| above the threshold)",
                     "units": "1"}))
    if identifiability:
        from latentda.identifiability_monitor import IDENTIFIABILITY_VARIABLES

        out += [(k, ("latent",), "float64", {"long_name": ln, "units": u})
                for k, (ln, u) in IDENTIFIABILITY_VARIABLES.items()]
    if smoother:
        out += [
            ("smoothed_mean", ("state",), "float64",
             {"long_name": "smoothed ensemble mean (fixed-lag smoother: analysed again with "
                           "the next lag observations; NaN where no analysis)", "units": mu}),
            ("smoothed_std", ("state",), "float64",
             {"long_name": "smoothed ensemble standard deviation", "units": mu}),
        ]
    return out
