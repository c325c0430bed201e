"""Simulation-based-inference cases (``kind: sbi``): amortized NPE against a particle posterior.

A case file with ``kind: sbi`` describes one inference experiment on the
stochastic (Gillespie) Lotka–Volterra model with its 9 summary statistics
(:mod:`latentda.dynamics.lotka_volterra_ssa`), instead of a cycled filter:

1. an observation: the summaries of one oscillating run at the true log-rates
   ``model.log_theta``, plus the kernel noise ``scale * N(0, I)`` (``scale``: the
   natural within-run spread of each summary at the true rates);
2. the amortized neural posterior (:class:`~latentda.inference.npe.NeuralPosterior`,
   a conditional normalizing flow) trained on ``npe.n_train`` prior simulations
   ``(theta, s + scale * eta)`` — the Gaussian-kernel ABC posterior with
   ``epsilon = 1`` in units of ``scale``;
3. the particle posterior of the same model by SMC-ABC with unbiased kernel-likelihood
   estimates and a final importance stage (:func:`~latentda.inference.smc_abc.smc_abc`).

``latentda run cases/lv_sbi.yaml`` writes a dataset with both posteriors (samples,
weights, means, standard deviations), the observation and the timings, and prints
their agreement: ``(mean_npe - mean_particle) / std_particle`` per log-rate, and
the speed-up of a new observation (NPE sampling against a particle run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from latentda.config import CaseError, _Strict

__all__ = ["SBICase", "is_sbi", "parse_sbi_case", "print_sbi_summary", "run_sbi_case"]

PARAMS = ("log_alpha", "log_beta", "log_gamma", "log_delta")


class SSAModelConfig(_Strict):
    """The stochastic Lotka–Volterra model and the true log-rates."""

    system: Literal["lotka_volterra_ssa"] = "lotka_volterra_ssa"
    x0: int = Field(50, ge=1, description="initial predators")
    y0: int = Field(100, ge=1, description="initial prey")
    t_end: float = Field(30.0, gt=0, description="simulated time span")
    record_dt: float = Field(0.2, gt=0, description="recording interval")
    log_theta: list[float] | None = Field(None, description="true log-rates (log alpha, "
                                          "log beta, log gamma, log delta); default the "
                                          "model's reference rates")
    prior_half_width: float = Field(1.0, gt=0, description="the prior is uniform on "
                                    "log_theta +- prior_half_width per log-rate")

    @model_validator(mode="after")
    def _four_rates(self) -> SSAModelConfig:
        if self.log_theta is not None and len(self.log_theta) != 4:
            raise ValueError(f"model.log_theta needs 4 log-rates (got {len(self.log_theta)})")
        return self


class NPEConfig(_Strict):
    """The amortized neural posterior."""

    n_train: int = Field(50_000, ge=100, description="training simulations")
    hidden: int = Field(64, ge=4, description="width of the flow's networks")
    n_layers: int = Field(6, ge=1, description="coupling layers")
    max_epochs: int = Field(40, ge=1, description="training epochs (early stopping on a "
                            "validation split; no wall-clock limit, so runs reproduce)")
    n_samples: int = Field(20_000, ge=100, description="posterior samples drawn")


class ParticleConfig(_Strict):
    """The SMC-ABC particle posterior."""

    n_particles: int = Field(1000, ge=10, description="SMC particles")
    n_sims: int = Field(8, ge=1, description="simulations per likelihood estimate")
    n_importance: int = Field(4000, ge=0, description="draws of the final importance stage")
    importance_sims: int = Field(16, ge=1, description="simulations per likelihood estimate "
                                 "of the importance stage")


class SBIOutputConfig(_Strict):
    """Where to write."""

    path: str | None = Field(None, description="zarr store (default runs/<name>.zarr)")


class SBICase(_Strict):
    """A simulation-based-inference case (``kind: sbi``)."""

    kind: Literal["sbi"] = Field("sbi", description="marks an inference case")
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="case name (the file stem)")
    description: str = Field("", description="what the case shows (stored in the output)")
    seed: int = Field(0, ge=0, description="seed of the observation, the simulations, the "
                      "training and the particle sampler")
    model: SSAModelConfig = Field(SSAModelConfig(), description="the stochastic model and "
                                  "the prior")
    npe: NPEConfig = Field(NPEConfig(), description="the amortized neural posterior")
    particle: ParticleConfig = Field(ParticleConfig(), description="the SMC-ABC reference")
    output: SBIOutputConfig = Field(SBIOutputConfig(), description="where to write")
    expected: dict[str, float] = Field(default_factory=dict, description="numbers this case "
                                       "reaches (documentation)")

    def quick(self) -> SBICase:
        """A tiny version for smoke tests (seconds; its numbers mean nothing)."""
        return self.model_copy(update={
            "npe": self.npe.model_copy(update={"n_train": 600, "max_epochs": 2, "hidden": 16,
                                               "n_layers": 2, "n_samples": 200}),
            "particle": self.particle.model_copy(update={"n_particles": 50, "n_sims": 2,
                                                         "n_importance": 100,
                                                         "importance_sims": 2}),
        })


def is_sbi(data: Any) -> bool:
    """Whether a parsed YAML mapping is an SBI case."""
    return isinstance(data, dict) and data.get("kind") == "sbi"


def parse_sbi_case(data: dict[str, Any], source: str = "<dict>",
                   overrides: dict[str, Any] | None = None) -> SBICase:
    """Validate an SBI case; only ``seed`` can be overridden.

    Raises
    ------
    CaseError
        Naming the invalid field, or an override that does not apply.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    bad = sorted(set(given) - {"seed"})
    if bad:
        raise CaseError(f"{', '.join(bad)} does not apply to the sbi case {source} (it runs "
                        f"no cycles); only --seed can be overridden")
    try:
        return SBICase.model_validate({**data, **given})
    except ValueError as err:
        raise CaseError(f"invalid case {source}: {err}") from None


def _observation(model: Any, log_theta: np.ndarray, rng: np.random.Generator,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Kernel scale and the noisy summaries of one oscillating run at ``log_theta``."""
    from latentda.dynamics.lotka_volterra_ssa import (
        oscillating,
        summary_scale,
        summary_statistics,
    )

    scale, n_ok = summary_scale(model, log_theta, rng, 2000)
    if n_ok < 100:
        raise CaseError(f"model.log_theta: only {n_ok} of 2000 runs keep both species alive; "
                        f"choose rates with sustained oscillations")
    while True:
        tr, cp, _ = model.simulate(log_theta, rng)
        if oscillating(tr, cp)[0]:
            return scale, summary_statistics(tr)[0] + scale * rng.standard_normal(9)


def run_sbi_case(case: SBICase, *, store: str | Path | None = None, overwrite: bool = False,
                 write: bool = True, progress: bool = False) -> tuple[dict[str, Any],
                                                                      Path | None]:
    """Run an SBI case: observation, NPE training and sampling, SMC-ABC, comparison.

    Returns
    -------
    (summary, store_path)
        ``summary`` holds per log-rate ``npe_mean_*``, ``particle_mean_*``,
        ``particle_std_*``, ``dmean_over_std_*``, and ``max_abs_dmean_over_std``,
        ``std_ratio`` (mean of NPE std / particle std), ``particle_ess``,
        ``particle_seconds``, ``npe_seconds`` (sampling a new observation),
        ``npe_train_seconds`` and ``speedup``.
    """
    import torch
    import xarray as xr

    from latentda.dynamics.lotka_volterra_ssa import TRUE_LOG_THETA, StochasticLotkaVolterra
    from latentda.inference.npe import NeuralPosterior
    from latentda.inference.smc_abc import BoxUniform, lv_summary_simulator, smc_abc

    path = Path(store) if store is not None else Path(case.output.path or
                                                      f"runs/{case.name}.zarr")
    if write and path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; use --overwrite to replace it")
    mc = case.model
    model = StochasticLotkaVolterra(x0=mc.x0, y0=mc.y0, t_end=mc.t_end, record_dt=mc.record_dt)
    theta = np.asarray(mc.log_theta if mc.log_theta is not None else TRUE_LOG_THETA, float)
    prior = BoxUniform(theta - mc.prior_half_width, theta + mc.prior_half_width)
    sim = lv_summary_simulator(model)
    rng = np.random.default_rng([case.seed, 1])
    scale, s_obs = _observation(model, theta, rng)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        th_tr = prior.sample(case.npe.n_train, rng)
        s_tr = sim(th_tr, rng)
        sim_seconds = time.perf_counter() - t0
        q = NeuralPosterior(4, 9, bounds=(prior.low, prior.high), n_layers=case.npe.n_layers,
                            hidden=case.npe.hidden, seed=case.seed)
        t0 = time.perf_counter()
        hist = q.fit(th_tr, s_tr, input_noise=scale, max_epochs=case.npe.max_epochs,
                     seed=case.seed, verbose=progress)
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        X = q.sample(s_obs, case.npe.n_samples, seed=case.seed)
        npe_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    pc = case.particle
    res = smc_abc(sim, prior, s_obs, epsilon=1.0, scale=scale, n_particles=pc.n_particles,
                  n_sims=pc.n_sims, final_moves=0, n_importance=pc.n_importance,
                  importance_sims=pc.importance_sims, rng=np.random.default_rng([case.seed, 2]))
    n_mean, n_std = X.mean(axis=0), X.std(axis=0, ddof=1)
    p_mean, p_std = res.mean, res.std
    d = (n_mean - p_mean) / p_std
    summary: dict[str, Any] = {}
    for j, name in enumerate(PARAMS):
        summary[f"npe_mean_{name}"] = float(n_mean[j])
        summary[f"particle_mean_{name}"] = float(p_mean[j])
        summary[f"particle_std_{name}"] = float(p_std[j])
        summary[f"dmean_over_std_{name}"] = float(d[j])
    summary.update(max_abs_dmean_over_std=float(np.max(np.abs(d))),
                   std_ratio=float(np.mean(n_std / p_std)), particle_ess=float(res.ess),
                   particle_mc_se_over_std=float(np.max(res.mean_se / p_std)),
                   particle_seconds=float(res.seconds), npe_seconds=float(npe_seconds),
                   npe_train_seconds=float(train_seconds), simulation_seconds=float(sim_seconds),
                   npe_epochs=float(hist["epochs"]),
                   speedup=float(res.seconds / max(npe_seconds, 1e-9)))
    if not write:
        return summary, None
    par = {"parameter": ("parameter", np.arange(4, dtype=np.int32),
                         {"long_name": "log-rate index", "units": "1",
                          "flag_values": [0, 1, 2, 3], "flag_meanings": " ".join(PARAMS)})}
    ds = xr.Dataset(
        {
            "theta_true": ("parameter", theta, {"long_name": "true log-rates", "units": "1"}),
            "s_obs": ("summary", s_obs, {"long_name": "observed summary statistics (with the "
                                                      "kernel noise)", "units": "1"}),
            "kernel_scale": ("summary", scale, {"long_name": "kernel / noise scale of each "
                                                             "summary", "units": "1"}),
            "npe_samples": (("sample", "parameter"), X,
                            {"long_name": "samples of the amortized neural posterior",
                             "units": "1"}),
            "particle_samples": (("particle", "parameter"), res.theta,
                                 {"long_name": "particles of the SMC-ABC posterior",
                                  "units": "1"}),
            "particle_weights": ("particle", res._w(),
                                 {"long_name": "normalized particle weights", "units": "1"}),
            "npe_mean": ("parameter", n_mean, {"long_name": "NPE posterior mean", "units": "1"}),
            "particle_mean": ("parameter", p_mean, {"long_name": "particle posterior mean",
                                                    "units": "1"}),
            "particle_std": ("parameter", p_std, {"long_name": "particle posterior std",
                                                  "units": "1"}),
            "dmean_over_std": ("parameter", d, {"long_name": "(NPE mean - particle mean) / "
                                                             "particle std", "units": "1"}),
        },
        coords=par,
        attrs={"case_name": case.name, "case_description": case.description,
               "case_config": case.model_dump_json(), "seed": case.seed, "kind": "sbi",
               **{k: v for k, v in summary.items() if not k.endswith(PARAMS)}},
    )
    from latentda.io import _quiet_zarr

    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_zarr():
        ds.to_zarr(path, mode="w", consolidated=True)
    return summary, path


def print_sbi_summary(case: SBICase, summary: dict[str, Any], store: Path | None) -> None:
    """The console summary of an SBI run."""
    print(f"\n{case.name}: amortized NPE against the SMC-ABC particle posterior")
    print(f"  {'':10s} {'NPE mean':>10s} {'particle':>10s} {'std':>8s} {'dmean/std':>10s}")
    for name in PARAMS:
        print(f"  {name:10s} {summary[f'npe_mean_{name}']:10.4f} "
              f"{summary[f'particle_mean_{name}']:10.4f} "
              f"{summary[f'particle_std_{name}']:8.4f} "
              f"{summary[f'dmean_over_std_{name}']:10.3f}")
    print(f"  max |dmean|/std {summary['max_abs_dmean_over_std']:.3f}; NPE std / particle "
          f"std {summary['std_ratio']:.2f}; particle ESS {summary['particle_ess']:.0f} (MC se "
          f"/ std {summary['particle_mc_se_over_std']:.3f})")
    print(f"  a new observation: particle {summary['particle_seconds']:.1f} s, NPE "
          f"{1e3 * summary['npe_seconds']:.1f} ms ({summary['speedup']:.0f}x); NPE training "
          f"{summary['npe_train_seconds']:.0f} s on {summary['simulation_seconds']:.0f} s of "
          f"simulations")
    for k, v in case.expected.items():
        if k in summary:
            print(f"  expected {k} ≈ {v}  (got {summary[k]:.4g})")
    if store is not None:
        print(f"  store: {store}  (xr.open_zarr('{store}'))")
