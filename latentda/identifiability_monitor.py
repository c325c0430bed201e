"""Per-cycle identifiability diagnostics of a run (``identifiability_sv`` and ``crlb``).

After every analysis, :class:`IdentifiabilityMonitor` evaluates the whitened
observed Jacobian ``M = R^{-1/2} H J_G(z)`` of the valid observations at the
code ``z`` of the analysis (the mean analysed code in a latent space, the
encoder of the analysis mean otherwise) and writes

- ``identifiability_sv`` (dim ``latent``): the singular values of ``M``,
  descending, zeros where ``m < k`` — a zero (or tiny) value is a latent
  direction the observations do not constrain locally;
- ``crlb`` (dim ``latent``): the Cramér–Rao bound ``diag(I(z)^{-1})`` of the
  Fisher information ``I(z) = M^T M``, the smallest variance of any unbiased
  estimator of each code from one observation vector (``inf``: not identifiable).

See :mod:`latentda.inference.identifiability` for the definitions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentda._validate import check_float
from latentda.observations import ObservationOperator
from latentda.ood_monitor import check_prior_operator, restrict_operator

__all__ = ["IDENTIFIABILITY_VARIABLES", "IdentifiabilityMonitor"]

#: name -> (long_name, units) of the per-cycle identifiability variables (dim latent)
IDENTIFIABILITY_VARIABLES: dict[str, tuple[str, str]] = {
    "identifiability_sv": ("singular values of M = R^-1/2 H dG/dz at the analysis code, "
                           "descending (0: a latent direction the observations do not "
                           "constrain)", "1"),
    "crlb": ("Cramer-Rao bound diag((M^T M)^-1) of each latent coordinate from one "
             "observation vector (inf: not identifiable)", "latent units squared"),
}


class IdentifiabilityMonitor:
    """Identifiability of the latent code at each analysis.

    Parameters
    ----------
    prior : latentda.priors.Prior
    operator : ObservationOperator
        The run's operator (differentiable in torch; checked here, before cycling).
    rtol : float
        Singular values below ``rtol * max`` count as zero (rank and ``inf`` CRLB).
        The default 1e-6 sits above the round-off of a float32 decoder.
    """

    def __init__(self, prior: Any, operator: ObservationOperator, *, rtol: float = 1e-6,
                 ) -> None:
        check_prior_operator(prior, operator)
        self.prior = prior
        self.operator = operator
        self.rtol = check_float("rtol", rtol, positive=True, max_value=1.0)
        self.latent_dim = int(prior.latent_dim)

    def __repr__(self) -> str:
        return f"IdentifiabilityMonitor(rtol={self.rtol:g})"

    def missing(self) -> dict[str, np.ndarray]:
        """The values of a cycle with no valid observation (NaN)."""
        nan = np.full(self.latent_dim, np.nan)
        return {"identifiability_sv": nan, "crlb": nan.copy()}

    def __call__(self, R: np.ndarray, valid: np.ndarray, analysis_mean: np.ndarray,
                 code: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Singular values and CRLB for the valid observations (error covariance ``R``).

        At ``code`` (the mean analysed code of a latent run) or, when None, at the
        encoder's code of ``analysis_mean``.
        """
        from latentda.inference.identifiability import latent_identifiability

        op = restrict_operator(self.operator, np.asarray(valid, dtype=bool))
        if code is None:
            code = self.prior.encode(np.asarray(analysis_mean, dtype=np.float64)[None, :])
        z = np.asarray(code, dtype=np.float64).reshape(1, -1)
        res = latent_identifiability(self.prior, op, z, R, rtol=self.rtol, jacobian="forward")
        return {"identifiability_sv": res.singular_values[0], "crlb": res.crlb[0]}
