"""Generative priors on a torch device (one module per family; see ``prior_base``)."""

from latentda.priors import training
from latentda.priors.flow import RealNVPPrior
from latentda.priors.linear import LinearGaussianPrior
from latentda.priors.prior_base import FAMILIES, Prior, load, resolve_device, save
from latentda.priors.vae import VAEPrior
from latentda.priors.wgan import WGANPrior

__all__ = ["FAMILIES", "LinearGaussianPrior", "Prior", "RealNVPPrior", "VAEPrior", "WGANPrior",
           "load", "resolve_device", "save", "training"]
