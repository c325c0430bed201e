"""Smoothers: estimates of past states given later observations.

- :class:`EnKS`: fixed-lag ensemble Kalman smoother (ETKF or stochastic EnKF analysis;
  the same ensemble-space weight matrix updates the ensembles of the last ``lag``
  analyses);
- :class:`FixedLagParticleSmoother`: a particle filter that keeps particle paths over a
  lag buffer (path resampling);
- :func:`ffbsi`: forward-filtering backward-simulation of whole trajectories.

The two fixed-lag smoothers are filters (:class:`~latentda.filters.EnsembleFilter`):
``analyse`` returns the filter analysis, :attr:`released` the ensemble that left the
window (a :class:`SmoothedEnsemble`: the ensemble of analysis ``k - lag`` after analysis
``k``), :attr:`window` the ensembles still being updated and ``flush()`` the rest at the
end of a run.
"""

from __future__ import annotations

from latentda.smoothers.enks import EnKS, SmoothedEnsemble, analysis_weight_matrix
from latentda.smoothers.particle_smoothers import FixedLagParticleSmoother, ffbsi

__all__ = ["EnKS", "FixedLagParticleSmoother", "SmoothedEnsemble", "analysis_weight_matrix",
           "ffbsi"]
