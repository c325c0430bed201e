"""Generative priors on a torch device (one module per family; see ``prior_base``)."""

from latentda.priors.linear import LinearGaussianPrior
from latentda.priors.prior_base import FAMILIES, Prior, load, resolve_device, save

__all__ = ["FAMILIES", "LinearGaussianPrior", "Prior", "load", "resolve_device", "save"]
