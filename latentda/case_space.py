"""Build the analysis space, the prior and the OOD monitor of a case.

Kept apart from :mod:`latentda.experiment` so that torch is imported only by
cases that name a prior. Everything that can fail (a missing checkpoint, a prior
trained for another system or size, a latent size that does not match the case,
an observation operator the OOD residual cannot differentiate through, a
background covariance that cannot be formed) fails here, before any cycling.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentda import config as cfg
from latentda.dynamics.base import Dynamics
from latentda.filters import ETKF, LETKF, EnKF
from latentda.filters.base import Background, EnsembleFilter, Geometry
from latentda.observations import ObservationOperator
from latentda.spaces import LatentSpace, StateSpace

__all__ = ["SpaceSetup", "build_space", "checkpoint_hash"]

#: climatological states drawn for a state-space static background covariance
CLIMATOLOGY_STATES = 2000
#: largest state for a full state-space background covariance
MAX_BACKGROUND_STATE = 4096


@dataclass
class SpaceSetup:
    """The space a case analyses in, its prior, monitors and window (None when absent)."""

    space: StateSpace | LatentSpace
    prior: Any = None
    monitor: Any = None
    prior_hash: str = ""
    threads: int | None = None
    identifiability: Any = None
    window: Any = None
    bias: Any = None

    @contextlib.contextmanager
    def torch_threads(self) -> Iterator[None]:
        """Set torch's CPU threads to ``threads`` for the run (restored afterwards)."""
        if self.prior is None or self.threads is None:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (written to the run's attributes)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _state_filter(sc: cfg.StateFilterConfig) -> EnsembleFilter:
    if sc.method == "letkf":
        return LETKF(radius=sc.radius, inflation=sc.inflation, weight_stride=sc.weight_stride)
    if sc.method == "enkf":
        return EnKF(inflation=sc.inflation)
    return ETKF(inflation=sc.inflation)


def _state_background(case: cfg.Case, model: Dynamics) -> Background:
    n = model.state_dim
    if n > MAX_BACKGROUND_STATE:
        raise cfg.CaseError(f"filter.method hybrid_etkf in state space needs a full "
                            f"climatological covariance, not available for {n} variables (> "
                            f"{MAX_BACKGROUND_STATE}); analyse in a latent space instead")
    rng = np.random.default_rng([case.seed, 7])
    if isinstance(case.model, cfg.ShallowWaterConfig):
        X = model.sample_climatology(CLIMATOLOGY_STATES, rng, family=case.model.init_family,
                                     spinup_steps=case.spinup_steps)
    elif isinstance(case.model, cfg.LotkaVolterraConfig):
        X = model.random_state(CLIMATOLOGY_STATES, rng)
    else:
        X = model.climatology(CLIMATOLOGY_STATES, rng)
    return Background.from_covariance(np.cov(X, rowvar=False), case.filter.static_var)


def build_space(case: cfg.Case, model: Dynamics, operator: ObservationOperator) -> SpaceSetup:
    """The space, prior and OOD monitor of a validated case.

    Raises
    ------
    latentda.config.CaseError
        Naming the field, on anything that cannot be built.
    """
    prior = None
    digest = ""
    if case.prior is not None:
        from latentda.priors import load

        pc = case.prior
        system = case.model.system
        try:
            prior = load(pc.path, device=pc.device, state_dim=model.state_dim,
                         latent_dim=pc.latent_dim, system=system)
        except ValueError as err:
            raise cfg.CaseError(f"prior.path: {err}") from None
        digest = checkpoint_hash(pc.path)
    sp = case.space
    fc = case.filter
    static = fc.static_var if (fc.method == "hybrid_etkf" or (
        fc.method in ("laplace", "variable_laplace", "mcmc") and fc.blend > 0)) else None
    if sp.kind == "state":
        bg = _state_background(case, model) if static is not None else None
        space: StateSpace | LatentSpace = StateSpace.for_model(model, bg)
    else:
        loc = model.state_locations()
        geometry = None if loc is None else Geometry(loc, period=model.domain_period)
        sf = None if sp.state_filter is None else _state_filter(sp.state_filter)
        try:
            space = LatentSpace(prior, sp.mode, static_var=static,
                                residual_scale=sp.residual_scale, obs_fraction=sp.obs_fraction,
                                state_filter=sf, geometry=geometry)
        except ValueError as err:
            raise cfg.CaseError(f"space: {err}") from None
    monitor = None
    enabled = case.ood.enabled if case.ood.enabled is not None else prior is not None
    if enabled:
        from latentda.ood_monitor import OODMonitor

        oc = case.ood
        try:
            monitor = OODMonitor(prior, operator, level=oc.level, latent_prior=oc.latent_prior,
                                 steps=oc.steps, window=oc.window,
                                 include_prior_error=oc.include_prior_error,
                                 starts=oc.starts)
        except ValueError as err:
            raise cfg.CaseError(f"observations.operator: {err} (OOD diagnostics need it; set "
                                f"ood.enabled: false to run without them)") from None
    ident = None
    if case.identifiability.enabled:
        from latentda.identifiability_monitor import IdentifiabilityMonitor

        try:
            ident = IdentifiabilityMonitor(prior, operator, rtol=case.identifiability.rtol)
        except ValueError as err:
            raise cfg.CaseError(f"observations.operator: {err} (identifiability diagnostics "
                                f"need it)") from None
    window = None
    if case.window.length > 0:
        from latentda.window import WindowReanalysis

        try:
            wc = case.window
            window = WindowReanalysis(model, space, wc.length, background=wc.background,
                                      beta=wc.beta, static_var=wc.static_var,
                                      iterations=wc.iterations)
        except ValueError as err:
            raise cfg.CaseError(f"window: {err}") from None
    bias = None
    if case.bias.enabled:
        from latentda.bias_monitor import BiasMonitor

        bc = case.bias
        bias = BiasMonitor(drift=bc.drift, level=bc.level, two_sided=bc.two_sided)
    threads = None if case.prior is None else case.prior.threads
    return SpaceSetup(space, prior, monitor, digest, threads, ident, window, bias)
