"""Bayesian inference: parameters, latent codes and states.

- :mod:`~latentda.inference.gauss_newton`: damped Gauss–Newton MAP and the Laplace
  approximation of a Gaussian-prior inverse problem in whitened coordinates (the
  engine of every gradient-based analysis);
- :mod:`~latentda.inference.latent`: one observation vector through a generative
  prior: latent MAP (latent 3D-Var), latent Laplace, the variable-space
  (linearized-generator) Laplace analysis, latent MCMC, and MAP / MCMC directly in
  state space with a tractable (flow) prior density;
- :mod:`~latentda.inference.mcmc`: batched MALA and HMC with dual-averaging step
  sizes, preconditioning, effective sample size and split-R-hat;
- :mod:`~latentda.inference.identifiability`: local identifiability (singular
  values of the whitened observed Jacobian), Fisher information, Cramér–Rao
  bounds, posterior collapse of VAE priors;

- :mod:`~latentda.inference.lv_joint`: joint state–parameter estimation for the
  Lotka–Volterra ODE (augmented-state EnKF, Liu–West particle filter, coverage experiments);
- :mod:`~latentda.inference.smc_abc`: SMC-ABC with a Gaussian kernel (an SMC sampler with
  unbiased likelihood estimates) for simulators of summary statistics;
- :mod:`~latentda.inference.npe`: amortized neural posterior estimation with a conditional
  normalizing flow (imports torch, so it is loaded on first access).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["gauss_newton", "identifiability", "latent", "lv_joint", "mcmc", "npe", "smc_abc"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
