"""Lorenz-96 particle filters and fixed-lag smoothers in the standard setting.

n=40, F=8, dt=0.05, every variable observed every step, R=I. For each seed:

- the regularized, tempered particle filter with N=1000 in state space (the
  configuration of ``cases/l96_pf.yaml``) and a cheaper untempered one;
- the fixed-lag EnKS (lag 5, ETKF transforms, N=20, inflation 1.02): smoothed
  RMSE against the filter RMSE *of the same run* (same truth, same observations).

Every configuration is a full `latentda` run (forecast, analysis, diagnostics,
zarr writes). Writes ``benchmarks/results/particle_smoother.json`` and refreshes
``docs/benchmarks.md``. Run:
``python benchmarks/particle_smoother.py [--pf-cycles 1500] [--enks-cycles 3000] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from _common import l96_case, write_result  # noqa: E402

PF_CONFIGS = [
    ("PF, tempered, bandwidth 0.5", {"method": "pf", "ess_threshold": 0.2, "bandwidth": 0.5,
                                     "temper": True, "temper_ess": 0.5}, 1000, 0.6),
    ("PF, untempered, bandwidth 0.97", {"method": "pf", "ess_threshold": 0.2,
                                        "bandwidth": 0.97}, 1000, 0.6),
]



def main(argv: list[str] | None = None) -> None:
    from latentda.config import parse_case
    from latentda.experiment import run_case

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pf-cycles", type=int, default=1500)
    ap.add_argument("--enks-cycles", type=int, default=3000)
    ap.add_argument("--burn-in", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the EnKS runs")
    ap.add_argument("--pf-seeds", type=int, default=3, help="seeds of the particle filters")
    args = ap.parse_args(argv)
    seeds = list(range(3, 3 + args.seeds))
    pf_seeds = list(range(3, 3 + args.pf_seeds))

    pf_rows, enks_rows, results = [], [], {"pf": [], "enks": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, filt, N, floor in PF_CONFIGS:
            for seed in pf_seeds:
                case = parse_case(l96_case(filt, N, args.pf_cycles, args.burn_in, seed))
                t0 = time.perf_counter()
                try:
                    s, _ = run_case(case, store=Path(tmp) / f"pf{seed}.zarr", overwrite=True)
                    rmse, ratio, ess = s["rmse_analysis"], s["spread_rmse_ratio"], s["ess"]
                    stages = s["temper_stages"]
                except Exception as err:  # a diverged run is a result, not a crash
                    rmse = ratio = ess = stages = float("nan")
                    print(f"{label} seed {seed}: {err}", flush=True)
                wall = time.perf_counter() - t0
                ms = 1e3 * wall / (args.pf_cycles + args.burn_in)
                ok = bool(rmse <= floor)
                results["pf"].append({"label": label, "seed": seed, "N": N, "filter": filt,
                                      "rmse_analysis": rmse, "spread_rmse_ratio": ratio,
                                      "ess_mean": ess, "temper_stages_mean": stages,
                                      "ms_per_cycle": ms, "floor": floor, "meets_floor": ok})
                pf_rows.append([label, N, seed, rmse, ratio, ess, stages, ms,
                                "yes" if ok else "NO"])
                print(pf_rows[-1], flush=True)
        filt = {"method": "enks", "lag": 5, "inflation": 1.02}
        for seed in seeds:
            case = parse_case(l96_case(filt, 20, args.enks_cycles, args.burn_in, seed))
            t0 = time.perf_counter()
            s, _ = run_case(case, store=Path(tmp) / f"enks{seed}.zarr", overwrite=True)
            ms = 1e3 * (time.perf_counter() - t0) / (args.enks_cycles + args.burn_in)
            ok = bool(s["rmse_smoothed"] < s["rmse_analysis"])
            results["enks"].append({"seed": seed, "N": 20, "lag": 5,
                                    "rmse_analysis": s["rmse_analysis"],
                                    "rmse_smoothed": s["rmse_smoothed"],
                                    "spread_smoothed": s["spread_smoothed"],
                                    "rmse_forecast": s["rmse_forecast"], "ms_per_cycle": ms,
                                    "smoother_beats_filter": ok})
            enks_rows.append([seed, s["rmse_forecast"], s["rmse_analysis"], s["rmse_smoothed"],
                              s["rmse_smoothed"] / s["rmse_analysis"], ms,
                              "yes" if ok else "NO"])
            print(enks_rows[-1], flush=True)
    payload = {
        "title": "Lorenz-96 particle filters and fixed-lag smoothers (standard setting)",
        "script": f"python benchmarks/particle_smoother.py --pf-cycles {args.pf_cycles} "
                  f"--enks-cycles {args.enks_cycles} --burn-in {args.burn_in} "
                  f"--seeds {args.seeds} --pf-seeds {args.pf_seeds}",
        "settings": {"n": 40, "F": 8.0, "dt": 0.05, "obs": "identity every step, R=I",
                     "burn_in": args.burn_in, "seeds": seeds, "pf_seeds": pf_seeds},
        "results": results,
        "tables": [{
            "title": f"Particle filters in state space, {args.pf_cycles} cycles after "
                     f"{args.burn_in} burn-in",
            "columns": ["method", "N", "seed", "analysis RMSE", "spread/RMSE",
                        "mean ESS (count)", "mean temper stages", "ms/cycle", "RMSE <= 0.6"],
            "rows": pf_rows,
            "notes": "Initial ensemble: truth + N(0, 1) noise. Regularization: Gaussian jitter "
                     "with covariance bandwidth^2 times the weighted ensemble covariance after "
                     "each resampling (systematic, when ESS/N < 0.2). Tempering: adaptive "
                     "annealing, each stage keeps half the ESS. Published regularized PF "
                     "(N=3000): 0.26-0.41. ms/cycle is end to end (1000-member forecast "
                     "included).",
        }, {
            "title": f"Fixed-lag EnKS (lag 5, ETKF, N=20, inflation 1.02), "
                     f"{args.enks_cycles} cycles after {args.burn_in} burn-in",
            "columns": ["seed", "forecast RMSE", "filter RMSE", "smoothed RMSE",
                        "smoothed / filter", "ms/cycle", "smoother < filter"],
            "rows": enks_rows,
            "notes": "Same run, same truth and observations: the smoothed ensemble at time k "
                     "has also assimilated the observations at k+1..k+5.",
        }],
    }
    print(write_result("particle_smoother", payload))
    make_tables.main([])


if __name__ == "__main__":
    main()
