"""Build and run a case: config → model, observations, ensemble, filter, store.

:func:`prepare` validates everything that can fail (paths, dimensions) and
builds every object before any cycling starts; :func:`run_case` cycles and
writes the store; :func:`summarize` reduces the diagnostics after burn-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentda import config as cfg
from latentda.case_space import SpaceSetup, build_space
from latentda.config import build_model
from latentda.cycle import Cycle, output_variables
from latentda.dynamics.base import Dynamics
from latentda.filters import ETKF, LETKF, EnKF, EnKF_N, HybridETKF
from latentda.filters.adaptive import AdaptiveETKF
from latentda.filters.base import EnsembleFilter
from latentda.io import RunWriter, VarSpec
from latentda.obs_stream import ObservationStream
from latentda.observations import (
    Arctan,
    GaussianNoise,
    Identity,
    ObservationOperator,
    ObsSchedule,
    Square,
    Subset,
)
from latentda.parallel import Forecaster
from latentda.twin import obs_coords, twin_experiment

#: seed streams derived from the case seed: one per purpose
_TRUTH, _ENSEMBLE, _SITES, _CYCLES = 0, 1, 2, 3


def build_operator(case: cfg.Case, n: int) -> ObservationOperator:
    """The observation operator of a case."""
    op = case.observations.operator
    if op.kind == "identity":
        return Identity(n)
    if op.kind == "every":
        return Subset.every(n, op.k, op.offset)
    if op.kind == "indices":
        return Subset(n, op.indices)
    if op.kind == "random_sites":
        rng = np.random.default_rng([case.seed, _SITES])
        return Subset.random_sites(n, op.m, rng)
    if op.kind == "strided_grid":
        mc = case.model
        return Subset.strided_grid(mc.nx, mc.ny, op.stride, n_fields=3,
                                   field="huv".index(op.field))
    if op.kind == "arctan":
        return Arctan(n, op.indices)
    return Square(n, op.indices)


def build_filter(fc: cfg.FilterConfig) -> EnsembleFilter:
    """The analysis method of a filter config."""
    if fc.method == "etkf":
        return ETKF(inflation=fc.inflation)
    if fc.method == "enkf":
        return EnKF(inflation=fc.inflation)
    if fc.method == "letkf":
        return LETKF(radius=fc.radius, inflation=fc.inflation, weight_stride=fc.weight_stride)
    if fc.method == "etkf_adaptive":
        return AdaptiveETKF(inflation=fc.inflation, prior_var=fc.prior_var)
    if fc.method == "hybrid_etkf":
        return HybridETKF(inflation=fc.inflation, beta=fc.blend)
    if fc.method in ("laplace", "variable_laplace", "mcmc"):
        from latentda.filters.gradient import LaplaceAnalysis, MCMCAnalysis, VariableLaplace

        kw = {"inflation": fc.inflation, "beta": fc.blend, "hessian": fc.hessian}
        if fc.method == "variable_laplace":
            return VariableLaplace(**kw)
        if fc.method == "laplace":
            return LaplaceAnalysis(iterations=fc.iterations, starts=fc.starts, gate=fc.gate,
                                   **kw)
        return MCMCAnalysis(iterations=fc.iterations, starts=fc.starts, gate=fc.gate,
                            sampler=fc.sampler,
                            steps=fc.mcmc_steps, n_leapfrog=fc.n_leapfrog, **kw)
    if fc.method in ("pf", "pf_smoother"):
        from latentda.filters.particle import ParticleFilter
        from latentda.smoothers import FixedLagParticleSmoother

        kw = {"scheme": fc.scheme, "ess_threshold": fc.ess_threshold,
              "bandwidth": fc.bandwidth, "shrinkage": fc.shrinkage, "temper": fc.temper,
              "temper_ess": fc.temper_ess, "inflation": fc.inflation}
        if fc.method == "pf":
            return ParticleFilter(**kw)
        return FixedLagParticleSmoother(lag=fc.lag, **kw)
    if fc.method == "enks":
        from latentda.smoothers import EnKS

        return EnKS(lag=fc.lag, method=fc.analysis, inflation=fc.inflation)
    return EnKF_N(inflation=fc.inflation)


def _initial_truth(case: cfg.Case, model: Dynamics, rng: np.random.Generator) -> np.ndarray:
    mc = case.model
    if isinstance(mc, cfg.ShallowWaterConfig):
        return model.sample_climatology(1, rng, family=mc.init_family,
                                        spinup_steps=case.spinup_steps)
    if isinstance(mc, cfg.LotkaVolterraConfig) and mc.augmented:
        x = model.random_state(1, rng)
        x[0, 2:] = model.true_log_params
        return x
    return model.climatology(1, rng, case.spinup_steps)


def _initial_ensemble(case: cfg.Case, model: Dynamics, truth0: np.ndarray | None,
                      rng: np.random.Generator) -> np.ndarray:
    ec, mc = case.ensemble, case.model
    N = ec.size
    if ec.init == "perturbed_truth":
        if truth0 is None:
            raise cfg.CaseError("ensemble.init: perturbed_truth needs a twin experiment (no "
                                "truth with observations.file); use climatology")
        return truth0[None, :] + ec.perturbation_std * rng.standard_normal((N, model.state_dim))
    if isinstance(mc, cfg.ShallowWaterConfig):
        # the same family and time since release as the truth
        return model.sample_climatology(N, rng, family=mc.init_family,
                                        spinup_steps=case.spinup_steps)
    if isinstance(mc, cfg.LotkaVolterraConfig):
        return model.random_state(N, rng)
    return model.climatology(N, rng)


def _check_times_on_grid(times: np.ndarray, model: Dynamics) -> None:
    """Observation times must lie after t=0 on the model's time grid (index named if not)."""
    steps = times / model.dt
    off = np.abs(steps - np.round(steps)) > 1e-6 * np.maximum(1.0, np.abs(steps))
    early = times <= 0
    bad = np.flatnonzero(off | early)
    if bad.size:
        i = int(bad[0])
        why = "is not after the start time 0" if early[i] else (
            f"is not a whole number of model steps (dt = {model.dt:g})")
        raise cfg.CaseError(f"observations: time {times[i]:g} (time index {i}) {why}; "
                            "observation times must be model-step multiples after 0")


def default_store(case: cfg.Case) -> Path:
    """``runs/<name>.zarr`` unless the case names a path."""
    return Path(case.output.path) if case.output.path else Path("runs") / f"{case.name}.zarr"


@dataclass
class Prepared:
    """Everything a run needs, built and checked."""

    case: cfg.Case
    model: Dynamics
    operator: ObservationOperator
    stream: ObservationStream
    ensemble: np.ndarray
    filter: EnsembleFilter
    store: Path | None
    setup: SpaceSetup | None = None


def prepare(case: cfg.Case, *, store: str | os.PathLike | None = None, overwrite: bool = False,
            write: bool = True) -> Prepared:
    """Build the objects of a case; refuse an existing store before any work.

    Raises
    ------
    FileExistsError
        If the store exists and ``overwrite`` is False.
    latentda.config.CaseError
        On anything in the case that cannot be built.
    """
    path = Path(store) if store is not None else default_store(case)
    if write and path.exists() and not overwrite:
        raise FileExistsError(f"output store {path} already exists; pass --overwrite to "
                              "replace it, or --out to write elsewhere")
    model = build_model(case.model)
    n = model.state_dim
    setup = None
    if case.observations.file is not None:
        stream = ObservationStream.from_file(case.observations.file, n)
        operator = stream.operator
        truth0 = None
    else:
        operator = build_operator(case, n)
        setup = build_space(case, model, operator)  # fails before the truth is simulated
        ev, ec = case.observations.error_variances, case.observations.error_covariance
        if ec is not None:
            noise = GaussianNoise.full(ec)
        elif ev is not None:
            noise = GaussianNoise.diagonal(ev)
        else:
            noise = GaussianNoise.scalar(case.observations.error_variance, operator.obs_dim)
        truth_rng = np.random.default_rng([case.seed, _TRUTH])
        x0 = _initial_truth(case, model, truth_rng)
        ds = _twin(case, model, operator, noise, truth_rng, x0)
        if not np.all(np.isfinite(ds["truth"].values)):
            bad = int(np.argmax(~np.isfinite(ds["truth"].values).all(axis=1)))
            raise cfg.CaseError(f"model: the truth simulation is not finite from analysis time "
                                f"{float(ds['time'][bad]):g} (the model is unstable); reduce "
                                "model.dt (or check the model parameters)")
        stream = ObservationStream.from_twin(ds, operator)
        if not noise.is_diagonal:
            stream.R = noise.cov
        truth0 = stream.initial_truth
    if len(stream) > case.cycles:
        stream = ObservationStream(stream.times[:case.cycles], stream.values[:case.cycles],
                                   stream.variances[:case.cycles], stream.operator,
                                   None if stream.truth is None else stream.truth[:case.cycles],
                                   stream.initial_truth)
    _check_times_on_grid(stream.times, model)
    if setup is None:
        setup = build_space(case, model, operator)
    ens_rng = np.random.default_rng([case.seed, _ENSEMBLE])
    E0 = _initial_ensemble(case, model, truth0, ens_rng)
    return Prepared(case, model, operator, stream, E0, build_filter(case.filter),
                    path if write else None, setup)


def _twin(case: cfg.Case, model: Dynamics, operator: ObservationOperator,
          noise: GaussianNoise, rng: np.random.Generator, x0: np.ndarray) -> Any:
    """The twin experiment of a case; with ``truth_shift`` the truth changes at its cycle.

    Observations of both segments share one schedule; the second segment continues
    the truth from the last state of the first, run by a model with the shifted
    parameters (and, for shallow water, with a balanced vortex added).
    """
    import xarray as xr

    kw = {"schedule": ObsSchedule(every=case.observations.every),
          "missing_fraction": case.observations.missing_fraction}
    ts = case.truth_shift
    if ts is None:
        return twin_experiment(model, operator, noise, n_cycles=case.cycles, seed=rng,
                               initial_state=x0, **kw)
    r1, r2, rv = rng.spawn(3)
    first = twin_experiment(model, operator, noise, n_cycles=ts.cycle, seed=r1,
                            initial_state=x0, **kw)
    shifted = build_model(case.model.model_copy(update=ts.parameters)) if ts.parameters \
        else model
    x = first["truth"].values[-1].copy()
    if ts.vortex is not None:
        w = float(ts.vortex["width"])
        vort = model.random_vortices(1, rv, n_vortices=1, amplitude=float(ts.vortex["amplitude"]),
                                     width=(w, w))[0]
        x += vort - model.pack(np.full((model.ny, model.nx), model.H),
                               np.zeros((model.ny, model.nx)), np.zeros((model.ny, model.nx)))[0]
    # the second segment starts from the truth at the last time of the first
    second = twin_experiment(shifted, operator, noise, n_cycles=case.cycles - ts.cycle,
                             seed=r2, initial_state=x, **kw)
    t_end = float(first["time"].values[-1])
    second = second.assign_coords(time=second["time"].values + t_end)
    out = xr.concat([first[["truth", "obs_value"]], second[["truth", "obs_value"]]], dim="time")
    for name in ("obs_error_var", "initial_truth"):
        out[name] = first[name]
    out.attrs = {**first.attrs, "truth_shift_cycle": ts.cycle}
    return out


def make_writer(p: Prepared, overwrite: bool, *, resume: bool = False,
                break_lock: bool = False) -> RunWriter:
    """The store writer of a prepared run, with coordinates and global attributes."""
    case, model = p.case, p.model
    smoother = hasattr(p.filter, "released") and hasattr(p.filter, "flush")
    setup = p.setup or SpaceSetup(space=None)
    k = getattr(setup.space, "latent_dim", None)
    ident = setup.identifiability is not None
    variables = [VarSpec(name, dims, dtype, attrs) for name, dims, dtype, attrs
                 in output_variables(case.output.store_ensemble, smoother, latent=k is not None,
                                     ood=setup.monitor is not None, identifiability=ident,
                                     window=setup.window is not None,
                                     bias=setup.bias is not None)]
    if k is None and ident:
        k = setup.prior.latent_dim
    coords: dict[str, Any] = {
        "state": ("state", np.arange(model.state_dim, dtype=np.int32),
                  {"long_name": "state variable index", "units": "1"}),
        **model.state_coords(),
        **obs_coords(model, p.operator),
        "component": ("component", np.arange(len(model.components()), dtype=np.int32), {
            "long_name": "state component (variables sharing units)", "units": "1",
            "flag_values": list(range(len(model.components()))),
            "flag_meanings": " ".join(nm for nm, _ in model.components())}),
    }
    if k is not None:
        coords["latent"] = ("latent", np.arange(k, dtype=np.int32),
                            {"long_name": "latent coordinate index", "units": "1"})
    if np.array_equal(p.stream.variances, np.broadcast_to(p.stream.variances[0],
                                                          p.stream.variances.shape)):
        coords["obs_error_var"] = ("obs", p.stream.variances[0], {
            "long_name": "observation error variance", "units": "model units squared"})
    attrs = {
        "case_name": case.name,
        "case_description": case.description,
        "case_config": case.model_dump_json(),
        "seed": case.seed,
        "system": model.name,
        "model": repr(model),
        "filter": repr(p.filter),
        "space": "state" if setup.space is None else repr(setup.space),
        "prior_checkpoint": "" if case.prior is None else case.prior.path,
        "prior_checkpoint_sha256": setup.prior_hash,
        "ood_monitor": "" if setup.monitor is None else repr(setup.monitor),
        "identifiability_monitor": "" if not ident else repr(setup.identifiability),
        "bias_monitor": "" if setup.bias is None else repr(setup.bias),
        "ensemble_size": int(p.ensemble.shape[0]),
        "burn_in_cycles": case.burn_in,
        "has_truth": int(p.stream.has_truth),
    }
    if setup.bias is not None:
        attrs["bias_threshold"] = setup.bias.threshold
    time_attrs = {"units": "model time units", "long_name": "analysis time",
                  "standard_name": "time", "axis": "T"}
    return RunWriter(p.store, variables=variables, coords=coords,
                     sizes={"member": p.ensemble.shape[0], "rank": p.ensemble.shape[0] + 1,
                            "obs": p.operator.obs_dim},
                     attrs=attrs, time_attrs=time_attrs, block=case.output.block,
                     overwrite=overwrite and not resume, resume=resume, break_lock=break_lock)


def summarize(series: dict[str, np.ndarray], burn_in: int) -> dict[str, Any]:
    """Time means of the diagnostics after ``burn_in`` cycles.

    Scalars map to floats; per-component series (``*_by_component``) to lists.
    """
    out: dict[str, Any] = {}
    for k, v in series.items():
        if k == "time":
            continue
        tail = np.asarray(v[burn_in:], dtype=np.float64)
        if tail.ndim == 2:  # per component: one mean per column
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[k] = np.nanmean(tail, axis=0).tolist()
            continue
        out[k] = float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")
    if np.isfinite(out.get("rmse_analysis", np.nan)) and out["rmse_analysis"] > 0:
        out["spread_rmse_ratio"] = out["spread_analysis"] / out["rmse_analysis"]
    out["cycles_averaged"] = float(max(0, len(series.get("time", [])) - burn_in))
    return out


def _comparable(config_json: str) -> dict[str, Any]:
    """A case config without the fields a resumed run may change (length, output)."""
    d = json.loads(config_json)
    for key in ("cycles", "output", "expected", "description", "parallel"):
        d.pop(key, None)
    return d


def summarize_store(path: str | os.PathLike, burn_in: int) -> dict[str, Any]:
    """:func:`summarize` over every cycle in a store (also the cycles of earlier runs)."""
    from latentda.cycle import COMPONENT_SCALARS, SCALARS
    from latentda.io import open_run

    with open_run(path) as ds:
        series = {"time": ds["time"].values}
        for k in (*SCALARS, *COMPONENT_SCALARS):
            series[k] = ds[k].values
    return summarize(series, burn_in)


def run_case(case: cfg.Case, *, store: str | os.PathLike | None = None, overwrite: bool = False,
             write: bool = True, progress: bool = False, resume: bool = False,
             break_lock: bool = False) -> tuple[dict[str, Any], Path | None]:
    """Run a validated case end to end.

    Parameters
    ----------
    resume : bool
        Continue an existing store from its last complete block (its checkpoint);
        the result equals an uninterrupted run. The case may ask for more cycles.
    break_lock : bool
        Take over a store whose lock was left by a killed run.

    Returns
    -------
    (summary, store_path)
        The time-mean diagnostics after burn-in and the store written (None if
        ``write`` is False).

    Raises
    ------
    latentda.cycle.DivergenceError
        When the filter diverged; the store keeps every cycle before it and its
        ``status`` says when and why.
    """
    from latentda.cycle import DivergenceError
    from latentda.io import read_checkpoint

    if getattr(case, "kind", None) == "sbi":  # a simulation-based-inference case
        from latentda.sbi_case import run_sbi_case

        if resume:
            raise ValueError("--resume does not apply to an sbi case (it runs no cycles)")
        return run_sbi_case(case, store=store, overwrite=overwrite, write=write,
                            progress=progress)
    if resume and not write:
        raise ValueError("resume needs a store to continue (write=True)")
    if resume and case.window.length > 0:
        raise ValueError("--resume is not available with window.length > 0 (the window's "
                         "observations are not part of the checkpoint); rerun with "
                         "--overwrite")
    forecaster = Forecaster.from_config(case.parallel)  # validates; starts nothing yet
    p = prepare(case, store=store, overwrite=overwrite or resume, write=write)
    if resume and hasattr(p.filter, "released"):
        raise ValueError(f"--resume is not available for the smoother {case.filter.method} "
                         "(its records are written lag cycles late); rerun with --overwrite")
    if resume:
        from latentda.io import open_run

        if not p.store.exists():
            raise FileNotFoundError(f"cannot resume: no store at {p.store}; run without "
                                    "--resume to start it")
        with open_run(p.store) as ds:
            stored = ds.attrs.get("case_config", "{}")
        if _comparable(stored) != _comparable(case.model_dump_json()):
            raise ValueError(f"cannot resume {p.store}: it was written by a different case "
                             "configuration; use --overwrite to start again")
    writer = make_writer(p, overwrite, resume=resume, break_lock=break_lock) if write else None
    cyc = Cycle(p.model, p.filter, p.operator, p.ensemble,
                seed=int(np.random.SeedSequence([case.seed, _CYCLES]).generate_state(1)[0]),
                writer=writer, store_ensemble=case.output.store_ensemble,
                max_rmse=case.divergence.max_rmse, max_spread=case.divergence.max_spread,
                forecaster=forecaster,
                space=None if p.setup is None else p.setup.space,
                monitor=None if p.setup is None else p.setup.monitor,
                identifiability=None if p.setup is None else p.setup.identifiability,
                window=None if p.setup is None else p.setup.window,
                bias=None if p.setup is None else p.setup.bias)
    try:
        forecaster.start()  # a cluster that cannot be reached fails before any cycle
        if resume and writer.n_written > 0:
            n, arrays, meta = read_checkpoint(p.store)
            if n != writer.n_written:
                raise ValueError(f"cannot resume {p.store}: its checkpoint follows cycle {n} but "
                                 f"{writer.n_written} cycles are stored")
            cyc.restore(arrays, meta)
        threads = p.setup.torch_threads() if p.setup is not None else contextlib.nullcontext()
        with threads:
            series = cyc.run(p.stream, progress=progress)
    except DivergenceError as exc:
        if writer is not None:
            writer.close(status=str(exc))
        raise
    except BaseException as exc:
        if writer is not None:
            writer.close(status=f"failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        forecaster.close()  # shuts down a cluster started for this run, never a connected one
    if writer is not None:
        writer.close(status="complete")
        summary = summarize_store(p.store, case.burn_in)
    else:
        summary = summarize(series, case.burn_in)
    for c, (name, _) in enumerate(p.model.components()):
        if len(p.model.components()) > 1:
            summary[f"rmse_analysis_{name}"] = summary["rmse_analysis_by_component"][c]
            summary[f"spread_analysis_{name}"] = summary["spread_analysis_by_component"][c]
    return summary, p.store
