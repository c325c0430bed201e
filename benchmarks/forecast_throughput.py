"""Forecast throughput of the Numba kernels against plain numpy, in one process.

Writes ``benchmarks/results/forecast_throughput.json`` and refreshes
``docs/benchmarks.md``. Run: ``python benchmarks/forecast_throughput.py``.
Single thread: numpy and numba are pinned to one thread before import.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from _common import best_time, write_result  # noqa: E402


def numpy_l96_rk4(E: np.ndarray, F: float, dt: float, nsteps: int) -> np.ndarray:
    """The baseline: RK4 with ``np.roll`` on the whole batch."""
    def f(x):
        return (np.roll(x, -1, 1) - np.roll(x, 2, 1)) * np.roll(x, 1, 1) - x + F

    for _ in range(nsteps):
        k1 = f(E)
        k2 = f(E + 0.5 * dt * k1)
        k3 = f(E + 0.5 * dt * k2)
        k4 = f(E + dt * k3)
        E = E + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return E


def bench_l96(N: int = 1000, nsteps: int = 200) -> dict:
    from latentda.dynamics import Lorenz96

    m = Lorenz96()
    E = m.climatology(N, np.random.default_rng(0))
    m.step(E, 1)  # compile / load cache
    t_nb = best_time(lambda: m.step(E, nsteps), repeat=7)
    t_np = best_time(lambda: numpy_l96_rk4(E, m.F, m.dt, nsteps // 4), repeat=5) * 4
    err = np.abs(m.step(E, 10) - numpy_l96_rk4(E, m.F, m.dt, 10)).max()
    return {"N": N, "n": m.n, "nsteps": nsteps,
            "numba_member_steps_per_s": N * nsteps / t_nb,
            "numpy_member_steps_per_s": N * nsteps / t_np,
            "speedup": t_np / t_nb, "max_abs_diff_10_steps": float(err)}


def bench_shallow_water(nx: int = 128, N: int = 16, nsteps: int = 20) -> dict:
    from sw_numpy_reference import numpy_reference_step

    from latentda.dynamics import ShallowWater2D

    sw = ShallowWater2D(nx=nx, ny=nx)
    E = sw.sample_climatology(N, np.random.default_rng(0), spinup_steps=10)
    sw.step(E, 1)
    t_nb = best_time(lambda: sw.step(E, nsteps), repeat=5)
    t_np = best_time(lambda: numpy_reference_step(sw, E, max(1, nsteps // 4)), repeat=3)
    t_np *= nsteps / max(1, nsteps // 4)
    cells = nx * nx * N * nsteps
    return {"nx": nx, "ny": nx, "N": N, "nsteps": nsteps,
            "numba_cell_steps_per_s": cells / t_nb, "numpy_cell_steps_per_s": cells / t_np,
            "speedup": t_np / t_nb}


def bench_ssa(n: int = 200) -> dict:
    from latentda.dynamics import StochasticLotkaVolterra

    lv = StochasticLotkaVolterra()
    theta = np.log([0.01, 0.5, 1.0, 0.01])
    lv.simulate(theta, 0, n=2)
    out = {}

    def run():
        out["res"] = lv.simulate(theta, 1, n=n)

    t = best_time(run, repeat=3)
    _, capped, n_events = out["res"]
    return {"simulations": n, "events": int(n_events.sum()), "capped": int(capped.sum()),
            "events_per_s": float(n_events.sum()) / t, "simulations_per_s": n / t}


def main() -> None:
    l96 = bench_l96()
    sw = bench_shallow_water()
    ssa = bench_ssa()
    rows = [
        ["Lorenz-96 RK4, n=40, N=1000", "member-steps/s",
         l96["numba_member_steps_per_s"], l96["numpy_member_steps_per_s"], l96["speedup"],
         "≥ 10× and ≥ 5e6/s"],
        ["shallow water 128×128, N=16", "grid-cell-steps/s",
         sw["numba_cell_steps_per_s"], sw["numpy_cell_steps_per_s"], sw["speedup"], "≥ 5×"],
        ["Lotka–Volterra SSA at θ*", "events/s", ssa["events_per_s"], "–", "–", "reported"],
    ]
    payload = {
        "title": "Forecast throughput (single thread)",
        "script": "python benchmarks/forecast_throughput.py",
        "lorenz96": l96, "shallow_water": sw, "lotka_volterra_ssa": ssa,
        "tables": [{
            "title": "Numba kernels vs plain numpy of the same scheme",
            "columns": ["system", "unit", "numba", "numpy", "speedup", "floor"],
            "rows": rows,
            "notes": "numpy baselines: RK4 with np.roll (L96); the same C-grid scheme "
                     "vectorized with np.roll (shallow water, benchmarks/sw_numpy_reference.py).",
        }],
    }
    print(write_result("forecast_throughput", payload))
    make_tables.main([])
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
