"""State-agnostic ensemble filters.

A filter sees an ensemble ``E`` of shape ``(N, d)`` and an :class:`Observation`
(``y``, ``R``, ``h(E) -> (N, m)``, optional locations); it never knows whether
``d`` counts physical variables or latent coordinates. Localizing filters also
take a :class:`Geometry`.

>>> import numpy as np
>>> from latentda.filters import ETKF, Observation
>>> rng = np.random.default_rng(0)
>>> E = rng.standard_normal((10, 3))
>>> obs = Observation(y=np.zeros(3), R=np.eye(3), h=lambda X: X)
>>> ETKF(inflation=1.02).analyse(E, obs, rng).E.shape
(10, 3)
"""

from __future__ import annotations

from latentda.filters.adaptive import AdaptiveETKF
from latentda.filters.base import (
    AnalysisResult,
    Background,
    EnsembleFilter,
    Geometry,
    Observation,
)
from latentda.filters.enkf import EnKF
from latentda.filters.enkf_n import EnKF_N
from latentda.filters.etkf import ETKF
from latentda.filters.gradient import LaplaceAnalysis, MCMCAnalysis, VariableLaplace
from latentda.filters.hybrid import HybridETKF
from latentda.filters.letkf import LETKF
from latentda.filters.localization import gaspari_cohn, periodic_distance
from latentda.filters.particle import ParticleFilter

#: filter classes by name (for configuration files)
FILTERS: dict[str, type[EnsembleFilter]] = {
    "EnKF": EnKF,
    "ETKF": ETKF,
    "HybridETKF": HybridETKF,
    "LETKF": LETKF,
    "EnKF_N": EnKF_N,
    "AdaptiveETKF": AdaptiveETKF,
    "ParticleFilter": ParticleFilter,
    "LaplaceAnalysis": LaplaceAnalysis,
    "VariableLaplace": VariableLaplace,
    "MCMCAnalysis": MCMCAnalysis,
}

__all__ = [
    "AnalysisResult",
    "Background",
    "EnsembleFilter",
    "Geometry",
    "Observation",
    "EnKF",
    "ETKF",
    "HybridETKF",
    "LETKF",
    "EnKF_N",
    "AdaptiveETKF",
    "ParticleFilter",
    "LaplaceAnalysis",
    "VariableLaplace",
    "MCMCAnalysis",
    "FILTERS",
    "gaspari_cohn",
    "periodic_distance",
]
