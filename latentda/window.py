"""Window reanalysis: a 4-D variational analysis in the latent space of a prior.

A filter analyses one observation time at a time and carries what earlier times told
it in its forecast ensemble. When the latent posterior is far from Gaussian (a code
that moves nonlinearly from one time to the next), one Gaussian step per time loses
information. :class:`WindowReanalysis` goes back to the observations themselves: after
the filter's analysis at time ``t_k`` it analyses the last ``length`` observation times
``t_s, ..., t_k`` together, with the model in the loop. The control is the code at
``t_s``, ``z = zbar + S w``, and the cost is::

    J(w) = 1/2 ||w||^2 + 1/2 sum_{l=s..k} ||R_l^{-1/2} (y_l - H_l M_{s->l}(G(zbar + S w)))||^2

(``M`` the run's forecast model): a strong-constraint 4D-Var of the latent code. The
background is, by default (``background="prior"``), the prior's own ``N(0, I)``
(``zbar = 0``, ``S = I``): nothing observed is counted twice, and what came before the
window is forgotten. With ``background="forecast"`` it is the run's forecast codes at
``t_s`` (they hold every observation before ``t_s`` and none in the window), as in the
iterative ensemble Kalman smoother (Bocquet & Sakov 2014), with an optional static part::

    S = [sqrt((1 - beta) / (N - 1)) A^T, sqrt(beta * static_var) I_k]

``J`` is minimised by damped Gauss–Newton
(:func:`latentda.inference.gauss_newton.gauss_newton`, central-difference Jacobians
through the model) from up to three starts: the background mean, the run's analysis
code at ``t_s`` and the previous window's solution carried to ``t_s`` by the model; the
lowest minimum is kept. Its state at ``t_k``, ``x_w = M_{s->k}(G(z*))``, becomes the
analysis mean: the filter's analysis members are shifted in state space so that their
mean is ``x_w`` (their spread is the filter's). Members drawn from the window's Laplace
approximation were measured worse (their mean smears the wave fields; docs/latent.md).

The window needs a latent space in ``manifold`` mode and a deterministic model. Each
Gauss–Newton iteration costs ``2 r`` runs of the model across the window (``r = k`` for
the prior background, ``N`` or ``N + k`` for the forecast one); they run in this
process, batched, not through a run's Dask forecaster.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentda._validate import check_float, check_int
from latentda.dynamics.base import Dynamics
from latentda.filters.base import Observation

__all__ = ["BACKGROUNDS", "WINDOW_SCALARS", "WindowReanalysis"]

BACKGROUNDS = ("prior", "forecast")

#: name -> (long_name, units) of the per-cycle window diagnostics
WINDOW_SCALARS: dict[str, tuple[str, str]] = {
    "window_misfit": ("observation misfit of the window reanalysis per observation, "
                      "sum_l |R^-1/2 (y_l - H M G(z*))|^2 / m over the window (about 1 when "
                      "consistent; NaN without a window)", "1"),
    "window_times": ("observation times in the window reanalysis (NaN without a window)",
                     "1"),
}


@dataclass
class _Entry:
    time: float
    obs: Observation
    forecast: np.ndarray  # the run's forecast codes at this time, (N, k)
    code: np.ndarray      # the run's final analysis code (mean) at this time


class WindowReanalysis:
    """Re-analyse the last ``length`` observation times together in the latent space.

    Parameters
    ----------
    model : Dynamics
        The forecast model (run across the window on decoded states).
    space : LatentSpace
        The run's latent space, in ``manifold`` mode.
    length : int
        Observation times per window, the current one included (>= 1).
    background : {"prior", "forecast"}
        The prior's ``N(0, I)``, or the forecast codes at the window's first time.
    beta : float
        ``background="forecast"``: weight of a static part ``static_var * I``, in [0, 1).
    static_var : float, optional
        Its variance (required when ``beta > 0``).
    iterations : int
        Gauss–Newton budget per start (>= 1).
    tol : float
        Gradient tolerance of the minimisation, relative to ``1 + ||w||``.
    """

    def __init__(self, model: Dynamics, space: Any, length: int, *, beta: float = 0.0,
                 static_var: float | None = None, iterations: int = 20, tol: float = 1e-6,
                 background: str = "prior") -> None:
        if not isinstance(model, Dynamics):
            raise ValueError(f"model must be a latentda Dynamics (got {type(model).__name__})")
        if getattr(space, "latent_dim", None) is None or getattr(space, "mode", None) != \
                "manifold":
            raise ValueError("a window reanalysis needs a latent space in manifold mode "
                             f"(got {space!r}); set space.mode: manifold")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)} "
                             f"(got {background!r})")
        self.model = model
        self.space = space
        self.background = background
        self.length = check_int("length", length, min_value=1)
        self.beta = check_float("beta", beta, min_value=0.0, max_value=1.0)
        if self.beta >= 1.0:
            raise ValueError(f"beta must be < 1: the forecast ensemble keeps a share of the "
                             f"background (got {beta})")
        if self.beta > 0.0 and background != "forecast":
            raise ValueError("beta > 0 mixes a static part into the forecast background: "
                             "it needs background='forecast'")
        if self.beta > 0.0 and static_var is None:
            raise ValueError("beta > 0 needs static_var, the variance of the static part")
        self.static_var = None if static_var is None else check_float(
            "static_var", static_var, positive=True)
        self.iterations = check_int("iterations", iterations, min_value=1)
        self.tol = check_float("tol", tol, positive=True)
        self._hist: deque[_Entry] = deque(maxlen=self.length)
        #: the last window's solution: (time of its first observation, code there)
        self._last: tuple[float, np.ndarray] | None = None

    def __repr__(self) -> str:
        static = "" if self.beta == 0.0 else f", beta={self.beta:g}, " \
            f"static_var={self.static_var:g}"
        return (f"WindowReanalysis(length={self.length}, background={self.background!r}"
                f"{static}, iterations={self.iterations})")

    def missing(self) -> dict[str, float]:
        """The values of a cycle without observations (NaN); the window keeps its times."""
        return dict.fromkeys(WINDOW_SCALARS, float("nan"))

    # ------------------------------------------------------------------ the 4-D map
    def _run(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whitened predictions over the window ``(B, sum m_l)`` and states at its end."""
        X = self.space.decode(np.asarray(Z, dtype=np.float64))
        out = []
        t = self._hist[0].time
        for e in self._hist:
            if e.time > t:
                X = self.model.step(X, self.model.nsteps_between(t, e.time))
                t = e.time
            out.append(e.obs.whiten(np.asarray(e.obs.h(X), dtype=np.float64)))
        return np.hstack(out), X

    def _carry(self, t0: float, z: np.ndarray, t1: float) -> np.ndarray:
        """The code at ``t1`` of the state ``G(z)`` at ``t0`` run by the model."""
        X = self.space.decode(z[None, :])
        if t1 > t0:
            X = self.model.step(X, self.model.nsteps_between(t0, t1))
        return self.space.codes(X)[0]

    def _background(self, Zf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``zbar`` and square root ``S`` (k, r) of the window's background."""
        N, k = Zf.shape
        if self.background == "prior":
            return np.zeros(k), np.eye(k)
        zbar = Zf.mean(axis=0)
        cols = [np.sqrt((1.0 - self.beta) / (N - 1.0)) * (Zf - zbar).T]
        if self.beta > 0.0:
            cols.append(np.sqrt(self.beta * self.static_var) * np.eye(k))
        return zbar, np.hstack(cols)

    def __call__(self, time: float, obs: Observation, Zf: np.ndarray, Za: np.ndarray,
                 Ea: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Add the observations of ``time`` and re-analyse the window.

        Parameters
        ----------
        time : float
            The analysis time (later than every time in the window).
        obs : Observation
            Its valid observations, with the physical ``h``.
        Zf, Za : ndarray, shape (N, k)
            The run's forecast codes at ``time`` (the forecast background of a later
            window that starts here) and the filter's analysis codes (their mean is a
            start while the window holds this time alone; once analysed, the time keeps
            the code of the window's state as the start of later windows).
        Ea : ndarray, shape (N, n)
            The filter's analysis members (their anomalies are kept).

        Returns
        -------
        (Ea_new, Za_new, info)
            The analysis members and their codes at ``time``, and
            :data:`WINDOW_SCALARS`.
        """
        import torch

        from latentda.inference.gauss_newton import gauss_newton

        Zf = np.asarray(Zf, dtype=np.float64)
        Za = np.asarray(Za, dtype=np.float64)
        if self._hist and time <= self._hist[-1].time:
            raise ValueError(f"window times must increase (got {time:g} after "
                             f"{self._hist[-1].time:g})")
        self._hist.append(_Entry(float(time), obs, Zf, Za.mean(axis=0)))
        first = self._hist[0]
        zbar, S = self._background(first.forecast)
        codes = [first.code]
        if self._last is not None and self._last[0] <= first.time:
            codes.append(self._carry(self._last[0], self._last[1], first.time))
        Sp = np.linalg.pinv(S)
        starts = [None] + [Sp @ (c - zbar) for c in codes]     # w = 0: the background mean
        yw = np.hstack([e.obs.whiten(np.asarray(e.obs.y, dtype=np.float64))
                        for e in self._hist])

        def F(w: torch.Tensor) -> torch.Tensor:
            Z = zbar + w.detach().cpu().numpy() @ S.T
            return torch.as_tensor(self._run(Z)[0], dtype=torch.float64)

        dtype = getattr(self.space.prior, "dtype", torch.float64)
        best = None
        for w0 in starts:
            res = gauss_newton(F, yw, S.shape[1], w0=w0, steps=self.iterations, tol=self.tol,
                               jacobian="central", dtype=dtype)
            if best is None or res.cost < best.cost:
                best = res
        # the window's state at t_k is the analysis mean; the members keep their anomalies
        z_star = zbar + S @ best.w
        _, X = self._run(z_star[None, :])
        E = np.asarray(Ea, dtype=np.float64)
        E = E - E.mean(axis=0) + X[0]
        Z = self.space.codes(np.vstack([X, E]))
        self._last = (first.time, z_star)
        self._hist[-1].code = Z[0]                               # the code of M(G(z*))
        info = {"window_misfit": best.misfit / yw.size, "window_times": float(len(self._hist))}
        return E, Z[1:], info
