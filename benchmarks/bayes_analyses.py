"""Laplace and MCMC analyses side by side with the latent ETKF (issue 8 benchmark).

On the latent cases of the latent-EnKF issue, every variant runs the same truth,
observations and initial ensemble; only ``filter`` changes:

- ``cases/l96_latent_etkf.yaml`` (Lorenz-96, N=10, no localization, VAE k=32,
  noisy manifold: the analysed variables are ``[z, eta]``): the latent hybrid
  ETKF against the iterated Laplace analysis (Gauss–Newton MAP + the Laplace
  square root), the variable-space Laplace analysis (one linearization at the
  forecast mean) and MALA / HMC chains from the Laplace members (the "MCMC
  EnKF"), all with the same hybrid prior covariance (beta 0.5, s 0.005);
- ``cases/sw_latent_etkf.yaml`` (shallow water 64x64, hybrid mode): the latent
  step of the hybrid analysis is the ETKF, the Laplace or the MCMC analysis
  (the LETKF correction step is the same).

Recorded per variant: analysis RMSE, spread/RMSE, and the wall time of the
analysis alone (``space.assimilate``: encoding, analysis, decoding), per
analysis. Writes ``benchmarks/results/bayes_analyses.json`` and refreshes
``docs/benchmarks.md``. Run:
``python benchmarks/bayes_analyses.py [--cycles 1000] [--burn-in 200] [--seeds 2]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

HYB = {"beta": 0.5, "static_var": 0.005, "inflation": 1.05}
L96_VARIANTS: list[tuple[str, dict]] = [
    ("latent hybrid ETKF", {"method": "hybrid_etkf", **HYB}),
    ("Laplace (Gauss-Newton MAP, 3 iterations)", {"method": "laplace", "iterations": 3, **HYB}),
    ("variable-space Laplace (1 linearization)", {"method": "variable_laplace", **HYB}),
    ("MCMC, MALA 20 steps from the Laplace members",
     {"method": "mcmc", "iterations": 3, "sampler": "mala", "mcmc_steps": 20, **HYB}),
    ("MCMC, HMC 10 steps x 5 leapfrog",
     {"method": "mcmc", "iterations": 3, "sampler": "hmc", "mcmc_steps": 10,
      "n_leapfrog": 5, **HYB}),
]
SW_VARIANTS: list[tuple[str, dict]] = [
    ("latent ETKF step (the case)", {"method": "etkf", "inflation": 1.0}),
    ("Laplace step (3 iterations)", {"method": "laplace", "iterations": 3, "inflation": 1.0}),
    ("MCMC step, MALA 20 steps", {"method": "mcmc", "iterations": 3, "mcmc_steps": 20,
                                  "inflation": 1.0}),
]


class AnalysisTimer:
    """Accumulates the wall time of ``LatentSpace.assimilate`` calls."""

    def __init__(self) -> None:
        from latentda.spaces import LatentSpace

        self.cls = LatentSpace
        self.orig = LatentSpace.assimilate
        self.total = 0.0
        self.calls = 0

    def __enter__(self) -> AnalysisTimer:
        timer = self

        def timed(space, *a, **k):
            t0 = time.perf_counter()
            try:
                return timer.orig(space, *a, **k)
            finally:
                timer.total += time.perf_counter() - t0
                timer.calls += 1

        self.cls.assimilate = timed
        return self

    def __exit__(self, *exc) -> None:
        self.cls.assimilate = self.orig


def run_variant(case_file: str, filt: dict, seed: int, cycles: int | None,
                burn_in: int | None) -> dict:
    from latentda.config import parse_case
    from latentda.cycle import DivergenceError
    from latentda.experiment import run_case

    d = yaml.safe_load((ROOT / case_file).read_text())
    d["filter"] = filt
    d["seed"] = seed
    d["prior"]["path"] = str(ROOT / d["prior"]["path"])
    d["prior"]["device"] = "cpu"
    d["ood"] = {"enabled": False}
    d.pop("expected", None)
    if cycles is not None:
        d["cycles"], d["burn_in"] = cycles + burn_in, burn_in
    case = parse_case(d)
    t0 = time.perf_counter()
    with AnalysisTimer() as timer:
        try:
            s, _ = run_case(case, write=False)
            out = {"rmse_analysis": s["rmse_analysis"],
                   "spread_rmse": s["spread_analysis"] / s["rmse_analysis"],
                   "diverged": False}
            if "rmse_analysis_h" in s:
                out["rmse_analysis_h"] = s["rmse_analysis_h"]
        except DivergenceError as err:
            out = {"rmse_analysis": float("nan"), "spread_rmse": float("nan"),
                   "diverged": True, "divergence": str(err)}
    out["ms_per_analysis"] = 1e3 * timer.total / max(timer.calls, 1)
    out["s_total"] = time.perf_counter() - t0
    return out


def table(title: str, rows_in: list[tuple[str, list[dict]]], seeds: list[int], notes: str,
          extra: str | None = None) -> dict:
    rows = []
    for label, per_seed in rows_in:
        rm = [r["rmse_analysis"] for r in per_seed]
        row = [label, *rm, float(np.mean(rm)),
               float(np.mean([r["spread_rmse"] for r in per_seed]))]
        if extra:
            row.append(float(np.mean([r[extra] for r in per_seed])))
        row.append(float(np.mean([r["ms_per_analysis"] for r in per_seed])))
        rows.append(row)
    cols = ["analysis", *[f"RMSE seed {s}" for s in seeds], "mean RMSE", "spread/RMSE"]
    if extra:
        cols.append(extra)
    cols.append("ms/analysis")
    return {"title": title, "columns": cols, "rows": rows, "notes": notes}


def main(argv: list[str] | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--burn-in", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sw-seeds", type=int, default=2)
    args = ap.parse_args(argv)
    seeds = list(range(1, 1 + args.seeds))
    sw_seeds = list(range(1, 1 + args.sw_seeds))
    results: list[dict] = []

    def run_all(tag: str, case_file: str, variants: list[tuple[str, dict]], run_seeds: list[int],
                cycles: int | None, burn_in: int | None) -> list[tuple[str, list[dict]]]:
        rows = []
        for label, filt in variants:
            per = []
            for seed in run_seeds:
                r = run_variant(case_file, filt, seed, cycles, burn_in)
                r.update(case=Path(case_file).stem, label=label, filter=filt, seed=seed)
                results.append(r)
                per.append(r)
                print(f"{tag} {label} seed={seed}: {r['rmse_analysis']:.4f} "
                      f"({r['ms_per_analysis']:.1f} ms/analysis)", flush=True)
            rows.append((label, per))
        return rows

    l96_rows = run_all("L96", "cases/l96_latent_etkf.yaml", L96_VARIANTS, seeds, args.cycles,
                       args.burn_in)
    sw_rows = run_all("SW", "cases/sw_latent_etkf.yaml", SW_VARIANTS, sw_seeds, None, None)
    tables = [
        table(f"Lorenz-96 N=10, latent noisy_manifold (VAE k=32): {args.cycles} cycles after "
              f"{args.burn_in} burn-in", l96_rows, seeds,
              "Same truth, observations and initial ensemble per seed; the prior covariance "
              "of every analysis is the hybrid (1-beta) P_ens + beta blockdiag(s I, gamma "
              "Sigma_eta), beta 0.5, s 0.005, gamma 0.25, inflation 1.05. Laplace: damped "
              "Gauss-Newton MAP in whitened coordinates, members by the Laplace square root "
              "in the ensemble subspace; MCMC: one chain per member from those members, "
              "preconditioned by the Laplace covariance, the final states kept. "
              "ms/analysis: encode + analysis + decode, 1 torch thread."),
        table("Shallow water 64x64, hybrid mode (latent step then LETKF): 9 cycles, 3 burn-in",
              sw_rows, sw_seeds,
              "cases/sw_latent_etkf.yaml with the latent step's method replaced; the LETKF "
              "correction step is unchanged. RMSE over all variables (h, u, v); "
              "rmse_analysis_h in metres.", extra="rmse_analysis_h"),
    ]
    payload = {
        "title": "Laplace and MCMC analyses against the latent ETKF",
        "script": f"python benchmarks/bayes_analyses.py --cycles {args.cycles} "
                  f"--burn-in {args.burn_in} --seeds {args.seeds} --sw-seeds {args.sw_seeds}",
        "results": results,
        "tables": tables,
    }
    print(write_result("bayes_analyses", payload))
    make_tables.main([])


if __name__ == "__main__":
    main()
