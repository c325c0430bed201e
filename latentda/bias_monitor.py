"""Per-cycle monitoring of a forecast bias from the innovations (the ``bias_*`` variables).

A model error that changes every observed quantity's tendency the same way (e.g. the
Lorenz-96 forcing switching from 8 to 10 while the forecast model keeps 8) makes the
forecasts miss the observations in one common direction from the first cycle on,
long before the truth has left what a prior can generate (what ``ood_residual``
tests). :class:`BiasMonitor` standardizes the innovation mean over the valid
observations (each innovation in units of its observation-error standard deviation)
by its predicted standard deviation
(:func:`latentda.diagnostics.innovation_mean_z`) and accumulates it in a Page CUSUM
(upper, and by default lower) whose threshold is set from the CUSUM's stationary
law under ``N(0, 1)`` statistics at the per-cycle false-alarm ``level``
(:func:`latentda.diagnostics.cusum_threshold`): no calibration run is needed.
It does not reset after an alarm, so a persisting bias stays flagged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentda._validate import check_float
from latentda.diagnostics import cusum_threshold, innovation_mean_z

__all__ = ["BIAS_SCALARS", "BiasMonitor"]

#: the float variables a bias monitor writes every analysis: name -> (long_name, units)
BIAS_SCALARS: dict[str, tuple[str, str]] = {
    "bias_z": ("mean over the valid observations of the innovations in units of their "
               "observation-error standard deviations, divided by its predicted standard "
               "deviation (forecast ensemble and R); about N(0, 1) for an unbiased "
               "forecast (NaN: no observation)", "1"),
    "bias_cusum": ("CUSUM of bias_z: the upper CUSUM (observations above the forecasts) "
                   "when it is the larger, else minus the lower one; bias_flag when its "
                   "size exceeds the threshold (the attribute bias_threshold of the "
                   "dataset)", "1"),
}


class BiasMonitor:
    """CUSUM of the standardized innovation mean, every analysis.

    Parameters
    ----------
    drift : float
        The CUSUM's reference value ``k > 0`` in standard deviations of ``bias_z``:
        about half the shift of its mean to detect fastest. A shift ``delta > k`` is
        flagged about ``threshold / (delta - k)`` cycles after it starts.
    level : float
        Per-cycle false-alarm probability in distribution, in (0, 1): the long-run
        fraction of analyses of an unbiased, consistent forecast that are flagged.
    two_sided : bool
        Also flag forecasts that lie above the observations (a lower CUSUM of
        ``-bias_z``); each side gets ``level / 2``.

    Notes
    -----
    The law behind the threshold assumes ``bias_z ~ N(0, 1)``, independent from
    cycle to cycle: an ensemble whose spread is too small, or innovations correlated
    in time, raise the false-alarm rate above ``level``. Measured on
    ``cases/l96_ood.yaml`` (seeds 1-5, before the switch): see ``docs/latent.md``.
    A weighted forecast ensemble (a particle filter that did not resample) is used
    with equal weights, as in ``innovation_chi2``.
    """

    def __init__(self, *, drift: float = 0.5, level: float = 0.01,
                 two_sided: bool = True) -> None:
        self.drift = check_float("drift", drift, positive=True)
        self.level = check_float("level", level, positive=True, max_value=1.0)
        if self.level >= 1.0:
            raise ValueError(f"level must be < 1 (got {level})")
        self.two_sided = bool(two_sided)
        #: alarm threshold of the CUSUM (per side)
        self.threshold = cusum_threshold(self.drift, self.level, self.two_sided)
        self.upper = 0.0
        self.lower = 0.0

    def __repr__(self) -> str:
        return (f"BiasMonitor(drift={self.drift:g}, level={self.level:g}, "
                f"two_sided={self.two_sided}, threshold={self.threshold:.4g})")

    def _values(self, z: float) -> dict[str, float]:
        signed = self.upper if self.upper >= self.lower else -self.lower
        return {"bias_z": z, "bias_cusum": signed,
                "bias_flag": int(max(self.upper, self.lower) > self.threshold)}

    def missing(self) -> dict[str, float]:
        """The values of a cycle with no valid observation: the CUSUM carries over."""
        return self._values(float("nan"))

    def __call__(self, HE: np.ndarray, y: np.ndarray, R: np.ndarray) -> dict[str, float]:
        """Update with one analysis time's forecast and observations.

        Parameters
        ----------
        HE : ndarray, shape (N, m_valid)
            The forecast ensemble in observation space (valid observations).
        y : ndarray, shape (m_valid,)
            The valid observations.
        R : ndarray, shape (m_valid, m_valid)
            Their error covariance.
        """
        z = innovation_mean_z(HE, y, R)
        if np.isfinite(z):
            self.upper = max(0.0, self.upper + z - self.drift)
            if self.two_sided:
                self.lower = max(0.0, self.lower - z - self.drift)
        return self._values(z)

    def get_state(self) -> dict[str, Any]:
        """The CUSUM values (part of a run's checkpoint)."""
        return {"upper": self.upper, "lower": self.lower}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`get_state`."""
        self.upper = float(state.get("upper", 0.0))
        self.lower = float(state.get("lower", 0.0))
