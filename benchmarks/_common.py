"""Shared helpers for benchmarks: timing, machine info and JSON results."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn: Callable[[], Any], repeat: int = 5, number: int = 1) -> float:
    """Best wall time in seconds of ``number`` calls of ``fn`` over ``repeat`` trials."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numba
    import numpy

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with machine info and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def l96_case(filt: dict[str, Any], N: int, cycles: int, burn_in: int, seed: int
             ) -> dict[str, Any]:
    """A Lorenz-96 standard-setting case (n=40, F=8, R=I, every variable every step).

    The initial ensemble is truth + N(0, 1) noise; ``cycles`` count after ``burn_in``.
    """
    return {
        "name": "bench", "seed": seed,
        "model": {"system": "lorenz96", "n": 40, "F": 8.0, "dt": 0.05},
        "observations": {"operator": {"kind": "identity"}, "error_variance": 1.0, "every": 1},
        "ensemble": {"size": N, "init": "perturbed_truth", "perturbation_std": 1.0},
        "filter": filt, "cycles": cycles + burn_in, "burn_in": burn_in,
        "output": {"block": 500},
    }
