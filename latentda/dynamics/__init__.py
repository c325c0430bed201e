"""Toy dynamical systems as batched Numba kernels: ``(N, n)`` in, ``(N, n)`` out.

Modules are imported on first attribute access, so ``import latentda`` stays
cheap and compiles nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from latentda.dynamics.base import Dynamics

_LAZY = {
    "Lorenz96": "latentda.dynamics.lorenz96",
    "ShallowWater2D": "latentda.dynamics.shallow_water",
    "LotkaVolterra": "latentda.dynamics.lotka_volterra",
    "StochasticLotkaVolterra": "latentda.dynamics.lotka_volterra_ssa",
}

__all__ = ["Dynamics", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'latentda.dynamics' has no attribute {name!r}")
