"""The case-file schema: a validated description of one experiment.

A case is a YAML file. :func:`load_case` validates it completely before any
work starts; every problem is reported as a :class:`CaseError` that names the
field (``observations.k``) and says how to fix it. Unknown keys are errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from latentda.dynamics.base import Dynamics


class CaseError(ValueError):
    """An invalid case file or case field; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------- models


class Lorenz96Config(_Strict):
    """Lorenz-96 on a ring of ``n`` variables."""

    system: Literal["lorenz96"]
    n: int = Field(40, ge=4, description="number of variables (>= 4)")
    F: float = Field(8.0, description="forcing")
    dt: float = Field(0.05, gt=0, le=1.0, description="RK4 time step")


class ShallowWaterConfig(_Strict):
    """2-D rotating shallow water on a doubly periodic domain (C-grid)."""

    system: Literal["shallow_water"]
    nx: int = Field(64, ge=8, description="grid cells in x")
    ny: int = Field(64, ge=8, description="grid cells in y")
    Lx: float = Field(1.0e6, gt=0, description="domain length in x (m)")
    Ly: float = Field(1.0e6, gt=0, description="domain length in y (m)")
    g: float = Field(9.81, gt=0, description="gravity (m s-2)")
    H: float = Field(100.0, gt=0, description="mean depth (m)")
    f0: float = Field(1.0e-4, description="Coriolis parameter (s-1)")
    beta: float = Field(0.0, description="beta-plane gradient (m-1 s-1)")
    nu: float = Field(0.0, ge=0, description="Laplacian viscosity (m2 s-1)")
    nu4: float | None = Field(None, ge=0, description="biharmonic viscosity (default: grid-scaled)")
    drag: float = Field(0.0, ge=0, description="linear drag (s-1)")
    cfl: float = Field(0.5, gt=0, le=1, description="CFL number of the gravity-wave speed")
    dt: float | None = Field(None, gt=0, description="time step (s); default from cfl")
    init_family: Literal["vortices", "bumps"] = Field(
        "vortices", description="initial-condition family of truth and ensemble")


_Finite = Annotated[float, Field(allow_inf_nan=False)]


class LotkaVolterraConfig(_Strict):
    """Lotka–Volterra ODE, optionally with log-parameters as augmented state."""

    system: Literal["lotka_volterra"]
    alpha: float = Field(1.0, gt=0)
    beta: float = Field(0.1, gt=0)
    gamma: float = Field(1.5, gt=0)
    delta: float = Field(0.075, gt=0)
    dt: float = Field(0.01, gt=0)
    augmented: bool = Field(False, description="estimate log-parameters as augmented state")
    param_spread: float = Field(0.1, ge=0, description="std of initial log-parameter guesses")
    param_bias: _Finite | Annotated[list[_Finite], Field(min_length=4, max_length=4)] = Field(
        0.0, description="offset of the mean initial log-parameter guess from the truth (one "
                         "value, or 4: alpha, beta, gamma, delta)")


ModelConfig = Annotated[Lorenz96Config | ShallowWaterConfig | LotkaVolterraConfig,
                        Field(discriminator="system")]

# --------------------------------------------------------------------------- observations


class OperatorConfig(_Strict):
    """Which state variables are observed, and how.

    ``kind``: ``identity`` (all), ``every`` (every ``k``-th from ``offset``),
    ``indices`` (an explicit list), ``random_sites`` (``m`` fixed random sites
    drawn from the seed), ``strided_grid`` (shallow water: ``field`` on a grid of
    ``stride``), ``arctan`` / ``square`` (nonlinear, on ``indices`` or all).
    """

    kind: Literal["identity", "every", "indices", "random_sites", "strided_grid", "arctan",
                  "square"] = "identity"
    k: int | None = Field(None, ge=1, description="every: observe every k-th variable")
    offset: int = Field(0, ge=0, description="every: first observed variable")
    indices: list[int] | None = Field(None, description="indices/arctan/square: state indices")
    m: int | None = Field(None, ge=1, description="random_sites: number of sites")
    stride: int | None = Field(None, ge=1, description="strided_grid: grid stride")
    field: Literal["h", "u", "v"] = Field("h", description="strided_grid: observed field")


class ObservationsConfig(_Strict):
    """The observation network, its errors and schedule (or a file of observations)."""

    operator: OperatorConfig = OperatorConfig()
    error_variance: float | None = Field(1.0, gt=0, description="scalar R = variance * I")
    error_variances: list[float] | None = Field(None, description="diagonal R, one per obs")
    error_covariance: list[list[float]] | None = Field(
        None, description="full R (m x m), symmetric positive definite")
    every: int = Field(1, ge=1, description="model steps between analysis times")
    missing_fraction: float = Field(0.0, ge=0, le=1, description="random missing values")
    file: str | None = Field(None, description="user observations (netCDF/zarr) instead of a "
                                                "twin experiment")

    @model_validator(mode="after")
    def _one_error_spec(self) -> ObservationsConfig:
        if self.error_variances is not None and self.error_covariance is not None:
            raise ValueError("give error_variances or error_covariance, not both")
        if (self.error_variance is None and self.error_variances is None
                and self.error_covariance is None and self.file is None):
            raise ValueError("error_variance is required (or error_variances / "
                             "error_covariance, or a file of observations)")
        if self.error_variances is not None:
            if any(not (v > 0) for v in self.error_variances):
                raise ValueError("error_variances must all be > 0 (R must be positive definite)")
        if self.error_covariance is not None:
            from latentda.observations import GaussianNoise

            try:
                GaussianNoise.full(self.error_covariance)
            except ValueError as err:
                raise ValueError(f"error_covariance: {err}") from None
        return self


# --------------------------------------------------------------------------- ensemble, filter


class EnsembleConfig(_Strict):
    """How the initial ensemble is drawn."""

    size: int = Field(20, ge=2, description="number of members N (>= 2)")
    init: Literal["climatology", "perturbed_truth"] = Field(
        "climatology", description="independent climatological states, or truth + noise")
    perturbation_std: float = Field(1.0, gt=0, description="perturbed_truth: noise std")


_PF_METHODS = ("pf", "pf_smoother")
#: gradient-based analyses (Laplace, MCMC): they blend a static background like hybrid_etkf
_GRAD_METHODS = ("laplace", "variable_laplace", "mcmc")
#: fields that only some methods take: field -> methods
_METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "radius": ("letkf",), "weight_stride": ("letkf",), "prior_var": ("etkf_adaptive",),
    "scheme": _PF_METHODS, "ess_threshold": _PF_METHODS, "bandwidth": _PF_METHODS,
    "shrinkage": _PF_METHODS, "temper": _PF_METHODS, "temper_ess": _PF_METHODS,
    "lag": ("enks", "pf_smoother"), "analysis": ("enks",),
    "beta": ("hybrid_etkf", *_GRAD_METHODS), "static_var": ("hybrid_etkf", *_GRAD_METHODS),
    "iterations": ("laplace", "mcmc"), "starts": ("laplace", "mcmc"),
    "gate": ("laplace", "mcmc"), "hessian": _GRAD_METHODS,
    "sampler": ("mcmc",), "mcmc_steps": ("mcmc",), "n_leapfrog": ("mcmc",),
}


class FilterConfig(_Strict):
    """The analysis method and its hyperparameters."""

    method: Literal["etkf", "enkf", "letkf", "enkf_n", "etkf_adaptive", "hybrid_etkf", "pf",
                    "pf_smoother", "enks", "laplace", "variable_laplace", "mcmc"] = Field(
        "etkf", description="analysis method: ensemble Kalman filters, the hybrid ETKF "
        "(ensemble covariance blended with a static background), the particle filter (pf), "
        "the fixed-lag particle smoother (pf_smoother), the fixed-lag EnKS (enks), the "
        "iterated Gauss-Newton MAP with a Laplace-approximation ensemble (laplace), the same "
        "linearized once at the forecast mean (variable_laplace), or MALA/HMC chains started "
        "from the Laplace draws (mcmc)")
    inflation: float = Field(1.0, ge=1.0, description="multiplicative inflation (>= 1)")
    radius: float | None = Field(None, gt=0, description="letkf: Gaspari-Cohn half-width")
    prior_var: float = Field(0.04**2, gt=0, description="etkf_adaptive: variance of the "
                                                          "inflation prior per cycle")
    weight_stride: int | None = Field(
        None, ge=1, description="letkf: compute the local weights on every weight_stride-th "
                                "distinct location per axis and interpolate them (None/1: exact)")
    scheme: Literal["systematic", "stratified", "residual", "multinomial"] = Field(
        "systematic", description="pf: resampling scheme")
    ess_threshold: float = Field(0.5, gt=0, le=1, description="pf: resample when ESS/N is "
                                                              "below this (1: always)")
    bandwidth: float = Field(0.0, ge=0, description="pf: regularization jitter, a multiple "
                                                    "of the weighted ensemble covariance's root")
    shrinkage: float | None = Field(None, gt=0, le=1, description="pf: Liu-West shrinkage a "
                                    "(parameter estimation); excludes bandwidth")
    temper: bool = Field(False, description="pf: adaptive likelihood tempering")
    temper_ess: float = Field(0.5, gt=0, lt=1, description="pf: target ESS fraction of each "
                                                           "tempering stage")
    beta: float | None = Field(None, ge=0, le=1, description="hybrid_etkf, laplace, "
                               "variable_laplace, mcmc: weight of the static background "
                               "covariance in [0, 1] (default 0.5 for hybrid_etkf, 0 for the "
                               "others; < 1 for laplace and mcmc; 0 needs no static_var)")
    static_var: float | None = Field(None, gt=0, description="hybrid_etkf, laplace, "
                                     "variable_laplace, mcmc: scale s of the static "
                                     "background: s I on latent codes, s times the "
                                     "climatological covariance in state space")
    iterations: int = Field(10, ge=1, description="laplace, mcmc: Gauss-Newton iterations of "
                            "the MAP")
    starts: int = Field(0, ge=0, description="laplace, mcmc: prior draws at which the MAP "
                        "cost is evaluated; a second search starts from the lowest when it "
                        "beats the prior mean, and the lower MAP is kept (0: the prior mean "
                        "only; a global search for multimodal posteriors)")
    gate: float = Field(0.0, ge=0, lt=1, description="laplace, mcmc: with beta > 0, run the "
                        "analysis with the ensemble covariance alone first and keep it when "
                        "its misfit's chi-square tail probability is >= gate; the static "
                        "background (and starts) only when the ensemble has lost the truth "
                        "(0: always the hybrid analysis)")
    hessian: Literal["gauss_newton", "exact"] = Field(
        "gauss_newton", description="laplace, variable_laplace, mcmc: Hessian of the Laplace "
        "approximation (exact: autograd, damped when indefinite)")
    sampler: Literal["mala", "hmc"] = Field("mala", description="mcmc: the sampler")
    mcmc_steps: int = Field(40, ge=2, description="mcmc: iterations per chain (half of them "
                            "adapt the step size)")
    n_leapfrog: int = Field(5, ge=1, description="mcmc: leapfrog steps of HMC")
    lag: int = Field(5, ge=0, description="enks, pf_smoother: analyses that update each "
                                          "smoothed ensemble")
    analysis: Literal["etkf", "enkf"] = Field("etkf", description="enks: the analysis whose "
                                              "transform the smoother applies")

    @property
    def blend(self) -> float:
        """The effective ``beta``: as set, else 0.5 for hybrid_etkf and 0 otherwise."""
        if self.beta is not None:
            return float(self.beta)
        return 0.5 if self.method == "hybrid_etkf" else 0.0

    @model_validator(mode="after")
    def _fields_of_the_method(self) -> FilterConfig:
        if self.method == "letkf" and self.radius is None:
            raise ValueError("radius is required for method letkf (localization half-width "
                             "in the model's length units, > 0)")
        if self.method == "hybrid_etkf" and self.static_var is None:
            raise ValueError("static_var is required for method hybrid_etkf (scale of the "
                             "static background covariance, > 0; e.g. 0.005 for latent codes)")
        if self.method in _GRAD_METHODS:
            if self.blend >= 1.0:
                raise ValueError(f"beta must be < 1 for method {self.method} (the ensemble "
                                 f"covariance keeps a share)")
            if self.gate > 0 and self.blend == 0:
                raise ValueError(f"gate needs beta > 0 for method {self.method} (a static "
                                 f"background to fall back on)")
            if self.blend > 0 and self.static_var is None:
                raise ValueError(f"static_var is required for method {self.method} with beta "
                                 f"> 0 (scale of the static background covariance), or set "
                                 f"beta: 0 to use the ensemble covariance alone")
        for name in sorted(self.model_fields_set):
            methods = _METHOD_FIELDS.get(name)
            if methods is not None and self.method not in methods:
                raise ValueError(f"{name} only applies to method {' or '.join(methods)} "
                                 f"(method is {self.method}); remove it")
        if self.shrinkage is not None and self.bandwidth > 0:
            raise ValueError("set either bandwidth (regularized PF) or shrinkage (Liu-West), "
                             "not both")
        return self


class CasePriorConfig(_Strict):
    """The generative prior of a latent-space run (or of its OOD diagnostics)."""

    path: str = Field(..., description="prior checkpoint (.pt), e.g. models/l96_vae_k32.pt; "
                                       "a relative path is read from the working directory, "
                                       "else next to the case file or one level up")
    device: str = Field("auto", description="torch device: auto (cuda when available), cpu, "
                                            "cuda[:i]")
    latent_dim: int | None = Field(None, ge=1, description="expected latent size k (checked "
                                                           "against the checkpoint)")
    threads: int | None = Field(1, ge=1, description="torch CPU threads during the run "
                                "(None: torch's default). One is fastest for small networks "
                                "on a shared machine; measured 10-50x slower with 2 threads "
                                "under load")


class StateFilterConfig(_Strict):
    """The state-space filter of the hybrid correction step."""

    method: Literal["letkf", "etkf", "enkf"] = Field("letkf", description="state-space filter")
    radius: float | None = Field(None, gt=0, description="letkf: Gaspari-Cohn half-width")
    inflation: float = Field(1.0, ge=1.0, description="multiplicative inflation (>= 1)")
    weight_stride: int | None = Field(None, ge=1, description="letkf: local weights on every "
                                      "weight_stride-th location per axis, interpolated")

    @model_validator(mode="after")
    def _radius(self) -> StateFilterConfig:
        if self.method != "letkf" and self.weight_stride is not None:
            raise ValueError("weight_stride only applies to letkf; remove it")
        if self.method == "letkf" and self.radius is None:
            raise ValueError("radius is required for state_filter.method letkf")
        if self.method != "letkf" and self.radius is not None:
            raise ValueError(f"radius only applies to letkf (method is {self.method}); "
                             "remove it")
        return self


class SpaceConfig(_Strict):
    """Where the filter analyses: physical state space or a prior's latent space."""

    kind: Literal["state", "latent"] = Field("state", description="state or latent (needs "
                                                                   "`prior:`)")
    mode: Literal["manifold", "noisy_manifold", "hybrid"] = Field(
        "noisy_manifold", description="latent: off-manifold treatment. manifold: pure latent "
        "(residual dropped); noisy_manifold: x = G(z) + eta analysed as [z, eta]; hybrid: "
        "latent step, then a state-space correction by state_filter")
    residual_scale: float = Field(0.25, ge=0, description="noisy_manifold: weight of the "
                                  "prior's residual covariance in the static background")
    obs_fraction: float = Field(0.5, gt=0, lt=1, description="hybrid: share of the "
                                "observation precision given to the latent step")
    state_filter: StateFilterConfig | None = Field(None, description="hybrid: the state-space "
                                                                     "correction filter")

    @model_validator(mode="after")
    def _mode_fields(self) -> SpaceConfig:
        if self.kind == "state" and self.model_fields_set - {"kind"}:
            raise ValueError(f"{', '.join(sorted(self.model_fields_set - {'kind'}))} only "
                             f"apply to kind latent; remove them")
        if self.kind == "latent":
            if self.mode == "hybrid" and self.state_filter is None:
                raise ValueError("mode hybrid needs state_filter (e.g. {method: letkf, "
                                 "radius: 5})")
            if self.mode != "hybrid" and ({"state_filter", "obs_fraction"}
                                          & self.model_fields_set):
                raise ValueError("state_filter and obs_fraction only apply to mode hybrid; "
                                 "remove them")
            if self.mode != "noisy_manifold" and "residual_scale" in self.model_fields_set:
                raise ValueError("residual_scale only applies to mode noisy_manifold; "
                                 "remove it")
        return self


class OODConfig(_Strict):
    """Out-of-distribution diagnostics of the observations against the prior."""

    enabled: bool | None = Field(None, description="write ood_residual, ood_score, ood_flag "
                                 "and manifold_distance (default: when a prior is given)")
    level: float = Field(0.01, gt=0, lt=1, description="flag when the chi-square score is "
                                                        "below this")
    latent_prior: bool = Field(True, description="add the latent prior term |z|^2 (dof m; "
                               "without it dof m - k, and m > k is needed)")
    window: int = Field(1, ge=1, description="ood_score and ood_flag test the sum of m * "
                        "ood_residual over the last `window` analyses (chi-square with the "
                        "summed dof): more power, at most window - 1 cycles of delay")
    steps: int = Field(20, ge=1, description="iteration budget of the minimisation "
                                             "(Levenberg-Marquardt steps)")
    include_prior_error: bool = Field(False, description="add the prior's residual "
                                      "covariance seen through H to R (for priors that do not "
                                      "represent the states to within the observation error)")
    starts: int = Field(0, ge=0, description="global search: the lowest-objective of `starts` "
                        "fixed prior draws is a second start of the minimisation, the smaller "
                        "residual is kept (for multimodal priors; 0: the warm start at the "
                        "analysis mean's code only)")


class IdentifiabilityConfig(_Strict):
    """Local identifiability of the latent code from the observations, every analysis."""

    enabled: bool = Field(False, description="write identifiability_sv (singular values of "
                          "R^-1/2 H dG/dz at the analysis code) and crlb (Cramer-Rao bounds) "
                          "on the latent dimension; needs a prior")
    rtol: float = Field(1e-6, gt=0, lt=1, description="singular values below rtol times the "
                        "largest count as zero (crlb inf)")


class WindowConfig(_Strict):
    """Window reanalysis: the last observation times analysed again together, in latent space."""

    length: int = Field(0, ge=0, description="after each analysis, analyse the last `length` "
                        "observation times again together, through the model (a strong-"
                        "constraint 4D-Var of the latent code at the first of them) and move "
                        "the analysis mean to its state; 0: off. Needs space.kind latent in "
                        "mode manifold")
    background: Literal["prior", "forecast"] = Field(
        "prior", description="background of the window's code: the prior's N(0, I) "
        "(nothing counted twice; what came before the window is forgotten), or the forecast "
        "codes at the window's first time (an iterative ensemble smoother)")
    beta: float = Field(0.0, ge=0, lt=1, description="background forecast: weight of a "
                        "static part static_var * I")
    static_var: float | None = Field(None, gt=0, description="variance of that static part "
                                     "(required when beta > 0)")
    iterations: int = Field(20, ge=1, description="Gauss-Newton budget of each start of the "
                            "window minimisation")

    @model_validator(mode="after")
    def _static(self) -> WindowConfig:
        if self.beta > 0 and self.background != "forecast":
            raise ValueError("window.beta > 0 mixes a static part into the forecast "
                             "background: set window.background: forecast (or beta: 0)")
        if self.beta > 0 and self.static_var is None:
            raise ValueError("window.beta > 0 needs window.static_var (the variance of the "
                             "static part of the background)")
        return self


class BiasConfig(_Strict):
    """A CUSUM of the standardized innovation mean: forecast bias, every analysis."""

    enabled: bool = Field(False, description="write bias_z (the mean over the valid "
                          "observations of the innovations in units of their error "
                          "standard deviations, over its predicted standard deviation), "
                          "bias_cusum and bias_flag; needs no prior (any space)")
    drift: float = Field(0.5, gt=0, description="the CUSUM's reference value k, in standard "
                         "deviations of bias_z: about half the shift to detect fastest")
    level: float = Field(0.01, gt=0, lt=1, description="per-cycle false-alarm probability "
                         "of an unbiased, consistent forecast (sets the threshold from the "
                         "CUSUM's stationary law; no calibration run)")
    two_sided: bool = Field(True, description="also flag forecasts above the observations "
                            "(each side gets level / 2)")


class TruthShiftConfig(_Strict):
    """A change of the truth during a twin experiment (out-of-distribution studies)."""

    cycle: int = Field(..., ge=1, description="first analysis cycle after the change")
    parameters: dict[str, float] = Field(default_factory=dict, description="model parameters "
                                         "of the truth from then on (e.g. {F: 10.0}); the "
                                         "forecast model keeps the case's")
    vortex: dict[str, float] | None = Field(None, description="shallow water: add a balanced "
                                            "vortex to the truth at the change: {amplitude "
                                            "(m), width (m)}, at a seeded random position")


class OutputConfig(_Strict):
    """Where and what to write."""

    path: str | None = Field(None, description="zarr store (default runs/<name>.zarr)")
    store_ensemble: bool = Field(False, description="write every member (else mean and std)")
    block: int = Field(100, ge=1, description="cycles per flushed block")


class DivergenceConfig(_Strict):
    """When a run counts as diverged and stops (non-finite states always do)."""

    max_rmse: float | None = Field(None, gt=0, description="stop if the analysis RMSE exceeds "
                                                            "this")
    max_spread: float | None = Field(None, gt=0, description="stop if the analysis spread "
                                                              "exceeds this")


class ParallelConfig(_Strict):
    """Where the ensemble forecasts run (batches of members over a Dask scheduler).

    ``scheduler``: ``auto`` (synchronous for small forecasts, threads otherwise),
    ``synchronous``, ``threads``, ``processes`` (a local cluster of ``n_workers``
    processes), ``distributed`` (the cluster at ``DASK_SCHEDULER_ADDRESS``), an
    address ``tcp://host:8786`` or a scheduler file ``*.json``. Results are
    bit-identical whatever the choice.
    """

    scheduler: str = Field("auto", description="auto, synchronous, threads, processes, "
                                               "distributed, tcp://host:port or a scheduler "
                                               "file *.json")
    n_workers: int | None = Field(None, ge=1, description="threads or worker processes "
                                                          "(default: the usable cores)")
    batch_size: int | None = Field(None, ge=1, description="members per task (default: two "
                                                           "batches per worker)")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        from latentda.parallel import check_scheduler

        return check_scheduler(v, "scheduler")

    @model_validator(mode="after")
    def _workers_for_local(self) -> ParallelConfig:
        if self.n_workers is not None and self.scheduler not in ("auto", "threads",
                                                                 "processes"):
            raise ValueError(f"n_workers applies to the auto, threads and processes "
                             f"schedulers (scheduler is {self.scheduler!r}); remove it")
        return self


class Case(_Strict):
    """One experiment: model, observations, ensemble, filter, length and output."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="case name (the file stem); letters, digits, _ . -")
    description: str = Field("", description="what the case shows (stored in the output)")
    seed: int = Field(0, ge=0, description="seed of truth, observations, ensemble and filter")
    model: ModelConfig = Field(..., description="the dynamical system (`system:` picks it)")
    observations: ObservationsConfig = Field(ObservationsConfig(),
                                             description="observation network")
    ensemble: EnsembleConfig = Field(EnsembleConfig(), description="initial ensemble")
    filter: FilterConfig = Field(FilterConfig(), description="analysis method")
    cycles: int = Field(..., ge=1, description="number of analysis cycles")
    burn_in: int = Field(0, ge=0, description="cycles left out of the summary")
    spinup_steps: int | None = Field(None, ge=0, description="truth spin-up (model default); "
                                      "shallow water: also the climatological ensemble's")
    output: OutputConfig = Field(OutputConfig(), description="store and what it holds")
    divergence: DivergenceConfig = Field(DivergenceConfig(),
                                         description="bounds that stop a diverged run")
    parallel: ParallelConfig = Field(ParallelConfig(),
                                     description="where the ensemble forecasts run")
    prior: CasePriorConfig | None = Field(None, description="generative prior (latent "
                                          "spaces, OOD diagnostics)")
    space: SpaceConfig = Field(SpaceConfig(), description="state or latent analysis")
    ood: OODConfig = Field(OODConfig(), description="out-of-distribution diagnostics")
    identifiability: IdentifiabilityConfig = Field(
        IdentifiabilityConfig(), description="identifiability and Cramer-Rao diagnostics of "
        "the latent code")
    window: WindowConfig = Field(WindowConfig(), description="window reanalysis of the "
                                 "latent analysis (off by default)")
    bias: BiasConfig = Field(BiasConfig(), description="forecast-bias monitor from the "
                             "innovations (off by default)")
    truth_shift: TruthShiftConfig | None = Field(None, description="a change of the truth "
                                                 "half way (OOD studies)")
    expected: dict[str, float] = Field(default_factory=dict,
                                       description="numbers this case reaches (documentation)")
    expected_tolerance: float = Field(0.05, gt=0.0, lt=1.0,
                                      description="relative tolerance of the expected numbers "
                                      "(the slow tests' check); widen it only for a case "
                                      "whose result is measured to be round-off sensitive")

    @model_validator(mode="after")
    def _cross_checks(self) -> Case:
        op, model = self.observations.operator, self.model
        n = state_dim(model)
        if self.burn_in >= self.cycles:
            raise ValueError(f"burn_in ({self.burn_in}) must be < cycles ({self.cycles})")
        if op.kind == "every" and op.k is None:
            raise ValueError("observations.operator.k is required for kind 'every'")
        if op.kind == "every" and op.k is not None and (op.k > n or op.offset >= op.k):
            raise ValueError(f"observations.operator: need k <= {n} and offset < k")
        if op.kind == "indices" and not op.indices:
            raise ValueError("observations.operator.indices is required for kind 'indices'")
        if op.indices is not None:
            bad = [i for i in op.indices if not 0 <= i < n]
            if bad:
                raise ValueError(f"observations.operator.indices: {bad[0]} is out of range "
                                 f"[0, {n}) for this model")
            if len(set(op.indices)) != len(op.indices):
                raise ValueError("observations.operator.indices must be distinct")
        if op.kind == "random_sites" and (op.m is None or op.m > n):
            raise ValueError(f"observations.operator.m is required for random_sites and must "
                             f"be <= {n}")
        if op.kind == "strided_grid":
            if not isinstance(model, ShallowWaterConfig):
                raise ValueError("observations.operator.kind 'strided_grid' needs the "
                                 "shallow_water model; use 'every' for 1-D systems")
            if op.stride is None or op.stride > min(model.nx, model.ny):
                raise ValueError("observations.operator.stride is required for strided_grid "
                                 "and must not exceed the grid size")
        m = obs_dim(self)
        ev = self.observations.error_variances
        if ev is not None and len(ev) != m:
            raise ValueError(f"observations.error_variances has {len(ev)} entries but there "
                             f"are {m} observations")
        ec = self.observations.error_covariance
        if ec is not None and len(ec) != m:
            raise ValueError(f"observations.error_covariance is {len(ec)}x{len(ec)} but there "
                             f"are {m} observations")
        sp = self.space
        if sp.kind == "latent" and self.prior is None:
            raise ValueError("space.kind latent needs a prior: add `prior: {path: "
                             "models/NAME.pt}`")
        if self.ood.enabled and self.prior is None:
            raise ValueError("ood.enabled needs a prior: add `prior: {path: models/NAME.pt}`")
        if self.identifiability.enabled and self.prior is None:
            raise ValueError("identifiability.enabled needs a prior: add `prior: {path: "
                             "models/NAME.pt}`")
        if sp.kind == "latent" and self.filter.method == "letkf":
            raise ValueError("filter.method letkf cannot run on latent codes (they have no "
                             "locations); use space.mode hybrid with state_filter letkf")
        if (sp.kind == "latent" and sp.mode == "hybrid"
                and self.filter.method in ("enks", "pf_smoother")):
            raise ValueError("smoothers cannot run in space.mode hybrid (the state correction "
                             "step is not smoothed); use mode noisy_manifold or manifold")
        if self.window.length > 0:
            if sp.kind != "latent" or sp.mode != "manifold":
                raise ValueError("window.length > 0 needs space.kind latent with space.mode "
                                 "manifold (the analysis ensemble is G(z) of its codes); set "
                                 "window.length: 0 or analyse in a latent manifold space")
            if self.filter.method in ("pf", "pf_smoother", "enks"):
                raise ValueError(f"window.length > 0 cannot follow filter.method "
                                 f"{self.filter.method} (weighted or smoothed members); use an "
                                 "ensemble Kalman, Laplace or MCMC analysis")
        if (sp.state_filter is not None and sp.state_filter.method == "letkf"
                and isinstance(model, LotkaVolterraConfig)):
            raise ValueError("space.state_filter letkf needs a spatial model")
        ts = self.truth_shift
        if ts is not None:
            if self.observations.file is not None:
                raise ValueError("truth_shift needs a twin experiment (no observations.file)")
            if ts.cycle >= self.cycles:
                raise ValueError(f"truth_shift.cycle ({ts.cycle}) must be < cycles "
                                 f"({self.cycles})")
            if ts.vortex is not None and not isinstance(model, ShallowWaterConfig):
                raise ValueError("truth_shift.vortex needs the shallow_water model")
            if ts.vortex is not None and set(ts.vortex) != {"amplitude", "width"}:
                raise ValueError("truth_shift.vortex needs exactly amplitude and width")
            bad = sorted(set(ts.parameters) - set(type(model).model_fields) - {"system"})
            if bad or "system" in ts.parameters:
                raise ValueError(f"truth_shift.parameters: {bad or ['system']} are not "
                                 f"parameters of the {model.system} model")
        if self.filter.method == "letkf" and isinstance(model, LotkaVolterraConfig):
            raise ValueError("filter.method letkf needs a spatial model; Lotka-Volterra has no "
                             "geometry: use etkf, enkf or enkf_n")
        return self


def build_model(model: ModelConfig) -> Dynamics:
    """The dynamical system of a model config."""
    if isinstance(model, Lorenz96Config):
        from latentda.dynamics.lorenz96 import Lorenz96

        return Lorenz96(n=model.n, F=model.F, dt=model.dt)
    if isinstance(model, ShallowWaterConfig):
        from latentda.dynamics.shallow_water import ShallowWater2D

        return ShallowWater2D(**model.model_dump(exclude={"system", "init_family"}))
    from latentda.dynamics.lotka_volterra import LotkaVolterra

    return LotkaVolterra(alpha=model.alpha, beta=model.beta, gamma=model.gamma,
                         delta=model.delta, dt=model.dt, augmented=model.augmented,
                         param_spread=model.param_spread, param_bias=model.param_bias)


def state_dim(model: ModelConfig) -> int:
    """State size ``n`` of a model config."""
    if isinstance(model, Lorenz96Config):
        return model.n
    if isinstance(model, ShallowWaterConfig):
        return 3 * model.nx * model.ny
    return 6 if model.augmented else 2


def obs_dim(case: Case) -> int:
    """Number of observations per analysis time for a case's operator."""
    op = case.observations.operator
    n = state_dim(case.model)
    if op.kind == "identity":
        return n
    if op.kind == "every":
        return len(range(op.offset, n, op.k or 1))
    if op.kind == "random_sites":
        return op.m or 0
    if op.kind == "strided_grid":
        m = case.model
        s = op.stride or 1
        return len(range(0, m.ny, s)) * len(range(0, m.nx, s))
    return len(op.indices) if op.indices else n


_SYSTEMS = ("lorenz96", "shallow_water", "lotka_volterra")


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid case {source}:"]
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-after")]
        if len(parts) > 1 and parts[0] == "model" and parts[1] in _SYSTEMS:
            parts.pop(1)
        loc = ".".join(parts)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see docs/cases.md)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {loc or '(case)'}: {msg}")
    return "\n".join(lines)


def parse_case(data: Any, source: str = "<dict>") -> Case:
    """Validate a case given as a mapping.

    Raises
    ------
    CaseError
        Naming every invalid field.
    """
    if not isinstance(data, dict):
        raise CaseError(f"invalid case {source}: the file must hold a mapping of fields "
                        f"(got {type(data).__name__})")
    try:
        return Case.model_validate(data)
    except ValidationError as err:
        raise CaseError(_format_errors(err, source)) from None


def load_case(path: str | os.PathLike, **overrides: Any) -> Case:
    """Read and validate a YAML case file; ``overrides`` replace top-level fields.

    Overriding ``cycles`` below the case's ``burn_in`` (a quick try of a long case)
    shortens the burn-in to a tenth of the cycles, and moves a ``truth_shift`` that
    would fall after the end to half the cycles.

    Raises
    ------
    CaseError
        If the file is missing, is not YAML, or any field is invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise CaseError(f"case file {p} does not exist; `latentda cases` lists the cases")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise CaseError(f"case file {p} is not valid YAML: {err}") from None
    if isinstance(data, dict) and data.get("kind") == "sbi":  # an inference, not a cycled run
        from latentda.sbi_case import parse_sbi_case

        return parse_sbi_case(data, str(p), overrides)
    if isinstance(data, dict):
        given = {k: v for k, v in overrides.items() if v is not None}
        data = {**data, **given}
        burn_in = data.get("burn_in", 0)
        if ("cycles" in given and "burn_in" not in given and isinstance(burn_in, int)
                and isinstance(given["cycles"], int) and burn_in >= given["cycles"]):
            data["burn_in"] = given["cycles"] // 10  # a shortened run keeps a 10 % burn-in
        shift = data.get("truth_shift")
        if ("cycles" in given and "truth_shift" not in given and isinstance(shift, dict)
                and isinstance(shift.get("cycle"), int) and isinstance(given["cycles"], int)
                and shift["cycle"] >= given["cycles"] > 1):
            data["truth_shift"] = {**shift, "cycle": given["cycles"] // 2}  # still half way
    prior = data.get("prior")
    if isinstance(prior, dict) and isinstance(prior.get("path"), str):
        data["prior"] = {**prior, "path": _find_relative(prior["path"], Path(p))}
    return parse_case(data, str(p))


def _find_relative(path: str, case_file: Path) -> str:
    """A relative path as given if it exists from the working directory, else found
    next to the case file or one level up (``cases/x.yaml`` naming ``models/y.pt``)."""
    q = Path(path)
    if q.is_absolute() or q.exists():
        return path
    for base in (case_file.parent, case_file.parent.parent):
        if (base / q).exists():
            return str((base / q).resolve())
    return path


def with_parallel(case: Case, **overrides: Any) -> Case:
    """``case`` with fields of its ``parallel`` section replaced (None values are ignored).

    Raises
    ------
    CaseError
        Naming ``parallel.<field>`` when an override is invalid.
    """
    over = {k: v for k, v in overrides.items() if v is not None}
    if not over:
        return case
    try:
        pc = ParallelConfig.model_validate({**case.parallel.model_dump(), **over})
    except ValidationError as err:
        msg = _format_errors(err, "options").replace("\n  ", "\n  parallel.")
        raise CaseError(msg) from None
    return case.model_copy(update={"parallel": pc})


def case_description(path: str | os.PathLike) -> str:
    """The first comment line of a case file (what the case shows)."""
    for line in Path(path).read_text().splitlines():
        s = line.strip()
        if s.startswith("#"):
            return s.lstrip("#").strip()
        if s:
            break
    return ""


_REFERENCE_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("case (top level)", Case),
    ("model: lorenz96", Lorenz96Config),
    ("model: shallow_water", ShallowWaterConfig),
    ("model: lotka_volterra", LotkaVolterraConfig),
    ("observations", ObservationsConfig),
    ("observations.operator", OperatorConfig),
    ("ensemble", EnsembleConfig),
    ("filter", FilterConfig),
    ("prior", CasePriorConfig),
    ("space", SpaceConfig),
    ("space.state_filter", StateFilterConfig),
    ("ood", OODConfig),
    ("identifiability", IdentifiabilityConfig),
    ("window", WindowConfig),
    ("bias", BiasConfig),
    ("truth_shift", TruthShiftConfig),
    ("output", OutputConfig),
    ("divergence", DivergenceConfig),
    ("parallel", ParallelConfig),
]


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    for prefix in ("<class '", "'>"):
        text = text.replace(prefix, "")
    return text.replace("latentda.config.", "").replace("|", "or")


def case_reference_markdown() -> str:
    """The case-file reference (``docs/cases.md``), generated from this schema."""
    lines = [
        "# Case-file reference",
        "",
        "Generated from the pydantic schema in `latentda/config.py` by",
        "`python -c \"from latentda.config import write_case_reference; "
        "write_case_reference()\"`; do not edit by hand.",
        "",
        "A case is a YAML file. Unknown keys are errors; every invalid field is reported",
        "with its dotted name (`observations.operator.k`) before any work starts.",
        "`latentda cases` lists the shipped cases with their first comment line.",
    ]
    from latentda import sbi_case as sbi

    sections = [*_REFERENCE_SECTIONS,
                ("sbi case (kind: sbi, top level)", sbi.SBICase),
                ("sbi: model", sbi.SSAModelConfig), ("sbi: npe", sbi.NPEConfig),
                ("sbi: particle", sbi.ParticleConfig)]
    for title, model in sections:
        if model is sbi.SBICase:
            lines += ["", "A case with `kind: sbi` is a simulation-based inference "
                      "(`latentda/sbi_case.py`), not a cycled run: `latentda run` trains the "
                      "amortized posterior, runs the particle reference and writes both."]
        lines += ["", f"## {title}", "", (model.__doc__ or "").strip().splitlines()[0], "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, f in model.model_fields.items():
            default = "required" if f.is_required() else repr(
                f.default_factory() if f.default_factory else f.default)
            if name in ("model", "observations", "ensemble", "filter", "output", "divergence",
                        "parallel") and model is Case:
                default = "see below" if name != "model" else "required"
            typ = _type_name(f.annotation)
            if len(typ) > 60:
                typ = "see below"
            desc = (f.description or "").replace("|", "/")
            lines.append(f"| `{name}` | {typ} | {default} | {desc} |")
    return "\n".join(lines) + "\n"


def write_case_reference(path: str | os.PathLike = "docs/cases.md") -> Path:
    """Write the generated case-file reference."""
    p = Path(path)
    p.write_text(case_reference_markdown())
    return p
