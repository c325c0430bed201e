"""The fixed-lag ensemble Kalman smoother (EnKS).

Convention
----------
Ensembles are members first, ``E`` of shape ``(N, d)``. Every ensemble Kalman analysis
used here makes each analysis member an affine combination of the forecast members::

    E_a = X5.T @ E_f          (members first)
    A_a = A_f @ X5            (Evensen's layout, members as columns: A = E.T)

``X5`` (shape ``(N, N)``) is the *right-multiplying* ensemble-space weight matrix of
Evensen (2003, 2009); it includes the mean update, and its columns sum to 1 (``1^T X5
= 1^T``) so the combinations are affine. The smoother applies the same ``X5`` to the
ensembles of the previous ``lag`` analysis times, which works because member ``i`` of a
past ensemble is the ancestor (through the forecasts) of member ``i`` of the current
forecast: ``E_s(j) <- X5.T @ E_s(j)``. Post-analysis inflation is applied to the
current analysis only, after ``X5`` (as in DAPPER's EnKS), and is not part of ``X5``.

Window
------
Analyses are numbered ``k = 0, 1, ...`` since the start or :meth:`EnKS.reset`. Analysis
``k`` updates the ensembles of analyses ``k - lag, ..., k - 1`` and adds its own; the
ensemble of analysis ``k - lag`` has then assimilated its ``lag`` later observations and
leaves the window as :attr:`EnKS.released` (an estimate of ``p(x_{k-lag} | y_{0:k})``).
After analysis ``k`` the window holds analyses ``k - lag + 1, ..., k`` (the newest is
the filter analysis; ``lag = 0``: the window is empty and the filter analysis is
released at once). :meth:`EnKS.flush` returns what is left at the end of a run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from latentda._validate import check_int
from latentda.filters.base import (
    EnsembleFilter,
    Geometry,
    Observation,
    batched_transforms,
    whitened_innovations,
)
from latentda.filters.enkf import perturbed_obs_update

__all__ = ["EnKS", "SmoothedEnsemble", "analysis_weight_matrix"]

METHODS = ("etkf", "enkf")


class SmoothedEnsemble(NamedTuple):
    """A (smoothed) ensemble of one analysis time.

    Attributes
    ----------
    index : int
        Number of the analysis (0-based) it belongs to.
    E : ndarray, shape (N, d)
        The ensemble, members first.
    weights : ndarray, shape (N,) or None
        Normalized member weights (particle smoothers); ``None``: equal weights.
    """

    index: int
    E: np.ndarray
    weights: np.ndarray | None = None


def analysis_weight_matrix(HE: np.ndarray, obs: Observation, method: str = "etkf",
                           Z: np.ndarray | None = None) -> np.ndarray:
    """The right-multiplying weight matrix ``X5`` of one ensemble Kalman analysis.

    ``E_a = X5.T @ E_f`` for any forecast ensemble ``E_f`` whose observed values are
    ``HE`` (without post-analysis inflation).

    Parameters
    ----------
    HE : ndarray, shape (N, m)
        Forecast ensemble in observation space.
    obs : Observation
    method : {"etkf", "enkf"}
        ``"etkf"``: the symmetric square-root transform of
        :class:`~latentda.filters.ETKF`; ``"enkf"``: the perturbed-observation update of
        :class:`~latentda.filters.EnKF` with whitened perturbations ``Z``.
    Z : ndarray, shape (N, m), optional
        Whitened observation perturbations (required for ``"enkf"``).

    Returns
    -------
    ndarray, shape (N, N)
        ``X5`` with columns summing to 1.
    """
    N = HE.shape[0]
    eye = np.eye(N)
    if method == "etkf":
        Yw, dyw = whitened_innovations(HE, obs)
        M = batched_transforms(Yw[None], dyw[None], N - 1.0, 1.0)[0]  # E_a = xbar + M A
        G = M - M.sum(axis=1, keepdims=True) / N + 1.0 / N  # M (I - J/N) + J/N
    elif method == "enkf":
        if Z is None or Z.shape != HE.shape:
            raise ValueError(f"Z must have shape {HE.shape} for method 'enkf'")
        G = perturbed_obs_update(eye, HE, obs, Z, form="ens")  # linear in E: E = I gives G
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    return np.ascontiguousarray(G.T)


def parse_window_state(state: dict[str, Any], lag: int,
                       ) -> tuple[int, list[int], list[np.ndarray]]:
    """Validate a smoother window from ``get_state``: (count, window indices, ensembles)."""
    count = check_int("state['count']", state["count"], min_value=0)
    idx = [check_int("state['window_index']", i, min_value=0) for i in state["window_index"]]
    ens = [np.asarray(e, dtype=np.float64) for e in state["window"]]
    if len(idx) != len(ens) or len(ens) > lag:
        raise ValueError(f"state['window'] must hold at most lag = {lag} "
                         f"ensembles with one index each (got {len(ens)} and {len(idx)})")
    if any(e.ndim != 2 or e.shape != ens[0].shape for e in ens):
        raise ValueError("state['window'] ensembles must all have the same shape (N, d)")
    return count, idx, ens


@dataclass
class EnKS(EnsembleFilter):
    """Fixed-lag ensemble Kalman smoother (Evensen & van Leeuwen 2000; Evensen 2003).

    Used like a filter (its :meth:`analyse` returns the filter analysis), it also
    smooths the ensembles of the previous ``lag`` analyses with each new analysis's
    weight matrix ``X5`` (see the module docstring for the convention).

    Parameters
    ----------
    lag : int
        Number of later analyses that update each ensemble (>= 0; 0 is the filter).
    method : {"etkf", "enkf"}
        The analysis: ETKF (deterministic square root) or stochastic EnKF.
    center_perturbations : bool
        For ``"enkf"``: centre the observation perturbations over the members.
    inflation : float
        Post-analysis inflation of the current analysis (>= 1).

    Attributes
    ----------
    transform : ndarray, shape (N, N) or None
        ``X5`` of the last analysis (``E_a = X5.T @ E_f`` before inflation).
    released : SmoothedEnsemble or None
        The ensemble that left the window at the last analysis ``k``: that of analysis
        ``k - lag``, smoothed with the ``lag`` later analyses (None while ``k < lag``).
    """

    lag: int = 5
    method: str = "etkf"
    center_perturbations: bool = True

    def __post_init__(self) -> None:
        self._window: deque[SmoothedEnsemble] = deque()
        self._count = 0
        self.transform: np.ndarray | None = None
        self.released: SmoothedEnsemble | None = None
        super().__post_init__()

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """The stochastic EnKF flavour draws observation perturbations (needs an rng)."""
        return self.method == "enkf"

    def _validate_params(self) -> None:
        super()._validate_params()
        self.lag = check_int("lag", self.lag, min_value=0)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} "
                             f"(got {self.method!r})")
        if not isinstance(self.center_perturbations, bool | np.bool_):
            raise ValueError(f"center_perturbations must be True or False "
                             f"(got {self.center_perturbations!r})")

    def _check_call(self, E: np.ndarray, obs: Observation, geometry: Geometry | None) -> None:
        super()._check_call(E, obs, geometry)
        if self._window and self._window[-1].E.shape != E.shape:
            raise ValueError(f"E has shape {E.shape} but the smoother window holds ensembles "
                             f"of shape {self._window[-1].E.shape}; call reset() or flush() "
                             "when the ensemble changes size")

    def _analyse(self, E: np.ndarray, HE: np.ndarray, obs: Observation,
                 rng: np.random.Generator | None, geometry: Geometry | None,
                 ) -> tuple[np.ndarray, dict[str, float]]:
        Z = None
        if self.method == "enkf":
            assert rng is not None
            Z = rng.standard_normal(HE.shape)
            if self.center_perturbations:
                Z -= Z.mean(axis=0)
        X5 = analysis_weight_matrix(HE, obs, self.method, Z)
        G = X5.T
        Ea = G @ E
        smoothed = [SmoothedEnsemble(s.index, G @ s.E) for s in self._window]
        if self.inflation != 1.0:
            mu = Ea.mean(axis=0)
            Ea = mu + self.inflation * (Ea - mu)
        # commit
        smoothed.append(SmoothedEnsemble(self._count, Ea.copy()))
        released = smoothed.pop(0) if len(smoothed) > self.lag else None
        self._window = deque(smoothed)
        self._count += 1
        self.transform = X5
        self.released = released
        return Ea, {"inflation": self.inflation, "window": float(len(smoothed))}

    # ------------------------------------------------------------------ window access

    @property
    def window(self) -> list[SmoothedEnsemble]:
        """The current window, oldest first (copies): analyses ``k - lag + 1, ..., k``."""
        return [SmoothedEnsemble(s.index, s.E.copy()) for s in self._window]

    def flush(self) -> list[SmoothedEnsemble]:
        """Return the window (oldest first) and empty it, e.g. at the end of a run."""
        out = list(self._window)
        self._window.clear()
        return out

    def reset(self) -> None:
        """Forget the window and restart the analysis count at 0."""
        self._window.clear()
        self._count = 0
        self.transform = None
        self.released = None

    def get_state(self) -> dict[str, Any]:
        """Analysis count and window (indices and ensembles as nested lists)."""
        return {"count": self._count,
                "window_index": [s.index for s in self._window],
                "window": [s.E.tolist() for s in self._window]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (``{}`` resets)."""
        if not state:
            self.reset()
            return
        count, idx, ens = parse_window_state(state, self.lag)
        self._count = count
        self._window = deque(SmoothedEnsemble(i, e) for i, e in zip(idx, ens, strict=True))
        self.transform = None
        self.released = None
