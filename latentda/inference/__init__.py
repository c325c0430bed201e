"""Parameter inference.

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

__all__ = ["lv_joint", "npe", "smc_abc"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
