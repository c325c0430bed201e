"""Latent-space against state-space filters on Lorenz-96 (standard setting).

n=40, F=8, dt=0.05, every variable observed every step, R=I. For each seed every
variant runs on the same truth, the same observations and the same initial
ensemble (truth + N(0, 1) noise): one ``latentda`` case per variant that differs
only in ``space``, ``prior`` and ``filter``. Two settings:

- N=20: the state ETKF against the latent variants;
- N=10 with no localization, where the unlocalized state ETKF diverges: can a
  latent variant stay stable, and how close to the localized LETKF does it get?

A run counts as diverged when its analysis RMSE exceeds 4 (the climatological
spread is about 3.6). Writes ``benchmarks/results/latent_vs_state.json`` and
refreshes ``docs/benchmarks.md``. Run:
``python benchmarks/latent_vs_state.py [--cycles 3000] [--burn-in 500] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from _common import l96_case, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VAE = "models/l96_vae_k32.pt"
FLOW = "models/l96_flow.pt"

NOISY = {"kind": "latent", "mode": "noisy_manifold"}
MANIFOLD = {"kind": "latent", "mode": "manifold"}

#: N -> [(label, filter, space, prior, localized)]
VARIANTS: dict[int, list[tuple[str, dict, dict | None, str | None, bool]]] = {
    20: [
        *[(f"state ETKF, inflation {i}", {"method": "etkf", "inflation": i}, None, None, False)
          for i in (1.01, 1.02, 1.03)],
        ("latent ETKF, manifold (VAE k=32)", {"method": "etkf", "inflation": 1.3},
         MANIFOLD, VAE, False),
        ("latent ETKF, noisy_manifold (VAE k=32)", {"method": "etkf", "inflation": 1.02},
         NOISY, VAE, False),
        ("latent hybrid ETKF, noisy_manifold (VAE k=32)",
         {"method": "hybrid_etkf", "beta": 0.05, "static_var": 0.005, "inflation": 1.02},
         {**NOISY, "residual_scale": 0.5}, VAE, False),
        ("latent hybrid ETKF then LETKF r=4 (hybrid mode, VAE k=32)",
         {"method": "hybrid_etkf", "beta": 0.3, "static_var": 0.005, "inflation": 1.02},
         {"kind": "latent", "mode": "hybrid", "obs_fraction": 0.5,
          "state_filter": {"method": "letkf", "radius": 4.0, "inflation": 1.02}}, VAE, True),
        ("flow-space ETKF (RealNVP, k=n=40)", {"method": "etkf", "inflation": 1.02},
         MANIFOLD, FLOW, False),
    ],
    10: [
        ("state ETKF, inflation 1.05", {"method": "etkf", "inflation": 1.05}, None, None,
         False),
        ("state LETKF, radius 4 (localized reference)",
         {"method": "letkf", "radius": 4.0, "inflation": 1.02}, None, None, True),
        ("state hybrid ETKF (climatological B)",
         {"method": "hybrid_etkf", "beta": 0.3, "static_var": 0.02, "inflation": 1.02},
         None, None, False),
        ("latent ETKF, manifold (VAE k=32)", {"method": "etkf", "inflation": 1.3},
         MANIFOLD, VAE, False),
        *[(f"latent hybrid ETKF, noisy_manifold (VAE k=32), beta {b}",
           {"method": "hybrid_etkf", "beta": b, "static_var": 0.005, "inflation": 1.05},
           {**NOISY, "residual_scale": 0.25}, VAE, False) for b in (0.3, 0.4, 0.5)],
        ("flow-space hybrid ETKF (RealNVP)",
         {"method": "hybrid_etkf", "beta": 0.4, "static_var": 0.005, "inflation": 1.05},
         MANIFOLD, FLOW, False),
    ],
}


def run_variant(filt: dict, space: dict | None, prior: str | None, N: int, cycles: int,
                burn_in: int, seed: int) -> dict:
    """One run; a diverged run is a result (rmse NaN, the cycle where it stopped)."""
    from latentda.config import parse_case
    from latentda.cycle import DivergenceError
    from latentda.experiment import run_case

    d = l96_case(filt, N, cycles, burn_in, seed)
    if prior is not None:
        d["prior"] = {"path": str(ROOT / prior), "device": "cpu"}
    if space is not None:
        d["space"] = space
    d["ood"] = {"enabled": False}
    d["divergence"] = {"max_rmse": 4.0}
    t0 = time.perf_counter()
    try:
        s, _ = run_case(parse_case(d), write=False)
        out = {"rmse_analysis": s["rmse_analysis"], "spread_analysis": s["spread_analysis"],
               "rmse_forecast": s["rmse_forecast"], "diverged": False}
    except DivergenceError as err:
        out = {"rmse_analysis": float("nan"), "spread_analysis": float("nan"),
               "rmse_forecast": float("nan"), "diverged": True, "divergence": str(err)}
    out["ms_per_cycle"] = 1e3 * (time.perf_counter() - t0) / (cycles + burn_in)
    return out


def main(argv: list[str] | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=3000)
    ap.add_argument("--burn-in", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ensemble", type=int, nargs="*", default=[20, 10])
    args = ap.parse_args(argv)
    seeds = list(range(1, 1 + args.seeds))
    results, tables = [], []
    for N in args.ensemble:
        rows = []
        for label, filt, space, prior, localized in VARIANTS[N]:
            per_seed = []
            for seed in seeds:
                r = run_variant(filt, space, prior, N, args.cycles, args.burn_in, seed)
                r.update(label=label, N=N, seed=seed, filter=filt, space=space, prior=prior,
                         localized=localized)
                results.append(r)
                per_seed.append(r)
                print(f"N={N} {label} seed={seed}: {r['rmse_analysis']:.4f} "
                      f"({r['ms_per_cycle']:.1f} ms/cycle)", flush=True)
            rm = [r["rmse_analysis"] for r in per_seed]
            stable = sum(not r["diverged"] for r in per_seed)
            rows.append([label, "yes" if localized else "no", f"{stable}/{len(seeds)}",
                         *rm, float(np.mean(rm)) if stable == len(seeds) else float("nan"),
                         float(np.mean([r["ms_per_cycle"] for r in per_seed]))])
        tables.append({
            "title": f"L96 standard setting, N={N}: analysis RMSE, {args.cycles} cycles after "
                     f"{args.burn_in} burn-in",
            "columns": ["variant", "localized", "stable seeds",
                        *[f"RMSE seed {s}" for s in seeds], "mean RMSE", "ms/cycle"],
            "rows": rows,
            "notes": "Same truth, observations and initial ensemble for every variant of a "
                     "seed. NaN: diverged (analysis RMSE > 4). noisy_manifold analyses "
                     "[z, eta] (code and off-manifold residual, x = G(z) + eta); its hybrid "
                     "ETKF blends the ensemble covariance with beta * blockdiag(s I, gamma "
                     "Sigma_eta) (s = static_var, gamma = residual_scale, Sigma_eta the "
                     "prior's measured residual covariance). ms/cycle is end to end "
                     "(forecast, network calls, analysis, diagnostics), 1 torch thread.",
        })
    payload = {
        "title": "Latent-space vs state-space filters (Lorenz-96 standard setting)",
        "script": f"python benchmarks/latent_vs_state.py --cycles {args.cycles} "
                  f"--burn-in {args.burn_in} --seeds {args.seeds} "
                  f"--ensemble {' '.join(map(str, args.ensemble))}",
        "settings": {"n": 40, "F": 8.0, "dt": 0.05, "obs": "identity every step, R=I",
                     "cycles": args.cycles, "burn_in": args.burn_in, "seeds": seeds,
                     "divergence": "analysis RMSE > 4"},
        "results": results,
        "tables": tables,
    }
    print(write_result("latent_vs_state", payload))
    make_tables.main([])


if __name__ == "__main__":
    main()
