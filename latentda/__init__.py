"""latentda: data assimilation in physical and latent space.

Subpackages are imported on first access (``lda.dynamics``, ``lda.observations``,
...), so ``import latentda`` is fast and never starts a compiler or a device.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("latentda")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

_SUBMODULES = ("dynamics", "observations", "twin", "filters", "spaces", "diagnostics", "io",
               "cycle", "config", "priors", "parallel", "report", "experiment")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"latentda.{name}")
    raise AttributeError(f"module 'latentda' has no attribute {name!r}")
