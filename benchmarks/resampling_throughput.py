"""Throughput of the particle resampling kernels at N = 10^6, in one process.

Writes ``benchmarks/results/resampling.json``. Run: ``python benchmarks/resampling_throughput.py``
(then ``python benchmarks/make_tables.py`` to refresh ``docs/benchmarks.md``).
Single thread: numpy and numba are pinned to one thread before import.

For each scheme it times ``latentda.filters.resampling.resample`` (validation, the
uniform draws and the Numba kernel: what a particle filter pays), the Numba kernel
alone on pre-drawn uniforms, and a plain-numpy version of the same scheme
(``np.cumsum`` + ``np.searchsorted``) as a baseline, each after a warm-up call.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, write_result  # noqa: E402

from latentda.filters import resampling as rs  # noqa: E402


def numpy_resample(w: np.ndarray, rng: np.random.Generator, scheme: str) -> np.ndarray:
    """The baseline: the same schemes with ``np.cumsum`` and ``np.searchsorted``."""
    N = w.size
    cw = np.cumsum(w)
    cw /= cw[-1]
    if scheme == "systematic":
        pos = (np.arange(N) + rng.random()) / N
    elif scheme == "stratified":
        pos = (np.arange(N) + rng.random(N)) / N
    elif scheme == "multinomial":
        pos = np.sort(rng.random(N))
    else:  # residual: floor copies, multinomial remainder
        counts = np.floor(N * w).astype(np.int64)
        r = N - int(counts.sum())
        resid = N * w - counts
        extra = np.searchsorted(np.cumsum(resid) / resid.sum(), rng.random(r), side="right")
        counts += np.bincount(extra, minlength=N)
        return np.repeat(np.arange(N), counts)
    return np.minimum(np.searchsorted(cw, pos, side="right"), N - 1)


def kernel_call(w: np.ndarray, rng: np.random.Generator, scheme: str) -> Callable[[], object]:
    """The Numba kernel alone, on uniforms drawn once."""
    N = w.size
    if scheme == "systematic":
        u = float(rng.random())
        return lambda: rs._systematic_kernel(w, u, N)
    if scheme == "stratified":
        u = rng.random(N)
        return lambda: rs._stratified_kernel(w, u)
    if scheme == "multinomial":
        u = rng.random(N + 1)
        return lambda: rs._multinomial_kernel(w, u)
    counts, resid = rs._residual_counts(w, N)
    u = rng.random(N - int(counts.sum()) + 1)

    def run() -> object:
        c, r = rs._residual_counts(w, N)
        return rs._residual_fill(c, r, u, N)

    return run


def bench(N: int = 1_000_000, repeat: int = 7) -> dict:
    rng = np.random.default_rng(0)
    logw = rng.standard_normal(N)
    w, _ = rs.normalize_log_weights(logw)
    out: dict = {"N": N, "ess_fraction": rs.ess(w) / N, "schemes": {}}
    for scheme in rs.SCHEMES:
        rs.resample(w, rng, scheme)  # warm-up: compile or load the cache
        t_full = best_time(lambda s=scheme: rs.resample(w, rng, s), repeat=repeat)
        fn = kernel_call(w, rng, scheme)
        fn()
        t_kernel = best_time(fn, repeat=repeat)
        numpy_resample(w, rng, scheme)
        t_np = best_time(lambda s=scheme: numpy_resample(w, rng, s), repeat=repeat)
        counts = np.bincount(rs.resample(w, rng, scheme), minlength=N)
        out["schemes"][scheme] = {
            "seconds": t_full,
            "particles_per_s": N / t_full,
            "kernel_seconds": t_kernel,
            "kernel_particles_per_s": N / t_kernel,
            "numpy_seconds": t_np,
            "numpy_particles_per_s": N / t_np,
            "speedup_vs_numpy": t_np / t_full,
            "distinct_ancestors": int((counts > 0).sum()),
        }
    return out


def main() -> None:
    res = bench()
    rows = [[s, v["particles_per_s"], v["kernel_particles_per_s"], v["numpy_particles_per_s"],
             v["speedup_vs_numpy"], 1e3 * v["seconds"]] for s, v in res["schemes"].items()]
    payload = {
        "title": "Resampling throughput (single thread)",
        "script": "python benchmarks/resampling_throughput.py",
        **res,
        "tables": [{
            "title": f"Resampling N = {res['N']:,} particles (weights exp(N(0,1)), "
                     f"ESS/N = {res['ess_fraction']:.2f})",
            "columns": ["scheme", "particles/s resample()", "particles/s kernel only",
                        "particles/s numpy", "speedup vs numpy", "ms per call"],
            "rows": rows,
            "notes": "resample() includes input validation and the uniform draws from a numpy "
                     "Generator; the kernel column times the Numba kernel on pre-drawn "
                     "uniforms; numpy: the same scheme with np.cumsum + np.searchsorted "
                     "(multinomial: sorted uniforms). Best of 7, after a warm-up call.",
        }],
    }
    print(write_result("resampling", payload))
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
