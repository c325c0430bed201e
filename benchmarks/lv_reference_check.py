"""Cross-check of the LV particle reference by plain rejection-kernel ABC from the prior.

``benchmarks/lv_inference.py`` compares the amortized neural posterior (NPE) with an
SMC-ABC particle posterior on held-out observations. When the two disagree, which one is
wrong? This script answers it with a third estimator that shares nothing with either:
``--batches`` x ``--batch-size`` fresh simulations at rates drawn from the prior (no
proposal, no adaptation, no pseudo-marginal moves, no network), each weighted with the
same Gaussian kernel ``exp(-|(s - s_obs) / scale|^2 / 2)`` (``epsilon = 1``). The
self-normalized weighted mean targets the same kernel-ABC posterior exactly; its error is
the delta-method standard error. One set of simulations serves every observation.

Reads the observations, the kernel scale, the prior box and both posterior means from
``benchmarks/results/lv_inference.json``; writes ``benchmarks/results/lv_reference_check.json``
and refreshes ``docs/benchmarks.md``.
Run: ``python benchmarks/lv_reference_check.py [--batches 8] [--batch-size 500000]``
(about 9 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from _common import RESULTS, write_result  # noqa: E402

#: weights below exp(-30) of the kernel's peak are dropped (they cannot matter)
LOG_CUT = -30.0


def kernel_abc(sim, prior, obs: list[np.ndarray], scale: np.ndarray, batches: int,
               batch_size: int, rng: np.random.Generator) -> list[dict]:
    """Weighted-mean posterior of every observation from shared prior simulations."""
    kept: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in obs]
    for _ in range(batches):
        th = prior.sample(batch_size, rng)
        s = sim(th, rng)
        for k, so in enumerate(obs):
            ll = -0.5 * (((s - so) / scale) ** 2).sum(axis=1)
            keep = ll > LOG_CUT
            kept[k].append((th[keep], ll[keep]))
    out = []
    for k in range(len(obs)):
        T = np.concatenate([a[0] for a in kept[k]])
        L = np.concatenate([a[1] for a in kept[k]])
        if T.shape[0] == 0:
            out.append({"ess": 0.0, "mean": None, "std": None, "mean_se": None})
            continue
        w = np.exp(L - L.max())
        w /= w.sum()
        m = w @ T
        D = T - m
        out.append({"ess": float(1.0 / (w @ w)), "mean": m.tolist(),
                    "std": np.sqrt(w @ D ** 2).tolist(),
                    "mean_se": np.sqrt((w ** 2) @ D ** 2).tolist()})
    return out


def main(argv: list[str] | None = None) -> int:
    from latentda.dynamics.lotka_volterra_ssa import StochasticLotkaVolterra
    from latentda.inference.smc_abc import BoxUniform, lv_summary_simulator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=424242)
    ap.add_argument("--sim-threads", type=int, default=2)
    args = ap.parse_args(argv)
    src = RESULTS / "lv_inference.json"
    if not src.exists():
        raise SystemExit(f"{src} is missing: run python benchmarks/lv_inference.py first")
    sbi = json.loads(src.read_text())["sbi"]
    if sbi is None:
        raise SystemExit(f"{src} has no NPE part (it was run with --skip-b)")
    scale = np.asarray(list(sbi["kernel_scale"].values()), dtype=float)
    prior = BoxUniform(np.asarray(sbi["prior"]["low"]), np.asarray(sbi["prior"]["high"]))
    sim = lv_summary_simulator(StochasticLotkaVolterra(), n_threads=args.sim_threads)
    observations = sbi["observations"]
    t0 = time.perf_counter()
    ref = kernel_abc(sim, prior, [np.asarray(o["s_obs"]) for o in observations], scale,
                     args.batches, args.batch_size, np.random.default_rng(args.seed))
    seconds = time.perf_counter() - t0

    rows, per_obs = [], []
    for k, (o, r) in enumerate(zip(observations, ref, strict=True)):
        if r["mean"] is None:
            rows.append([k, 0.0] + [None] * 5 + ["yes" if o["resolved"] else "no"])
            continue
        ps = np.asarray(o["particle_std"])
        pm, nm = np.asarray(o["particle_mean"]), np.asarray(o["npe_mean"])
        rm, rse = np.asarray(r["mean"]), np.asarray(r["mean_se"])
        d_part = (pm - rm) / ps
        d_npe = (nm - rm) / ps
        z_part = (pm - rm) / np.sqrt(rse ** 2 + np.asarray(o["particle_mean_se"]) ** 2)
        per_obs.append({"obs": k, **r, "particle_minus_rejection_over_std": d_part.tolist(),
                        "particle_minus_rejection_z": z_part.tolist(),
                        "npe_minus_rejection_over_std": d_npe.tolist(),
                        "particle_resolved": o["resolved"]})
        rows.append([k, r["ess"], float(np.max(rse / ps)), float(np.max(np.abs(d_part))),
                     float(np.max(np.abs(z_part))), float(np.max(np.abs(d_npe))),
                     float(np.max(np.abs(o["mean_distance_in_particle_std"]))),
                     "yes" if o["resolved"] else "no"])
    n_sims = args.batches * args.batch_size
    payload = {
        "title": "Lotka-Volterra: the particle reference checked by rejection-kernel ABC",
        "script": "python benchmarks/lv_reference_check.py",
        "args": vars(args), "seconds": seconds, "simulations": n_sims,
        "source": "benchmarks/results/lv_inference.json", "observations": per_obs,
        "tables": [{
            "title": (f"Rejection-kernel ABC from {n_sims} prior simulations against the "
                      "SMC-ABC reference and the NPE of lv_inference (in particle posterior "
                      "std, max over the 4 log-rates)"),
            "columns": ["obs", "rejection ESS", "rejection se / std",
                        "abs(particle - rejection) / std", "abs z of that difference",
                        "abs(NPE - rejection) / std", "abs(NPE - particle) / std",
                        "particle resolved"],
            "rows": rows,
            "notes": (
                "Rejection-kernel ABC: rates drawn from the prior box, one Gillespie run "
                "each, weighted by the Gaussian kernel of lv_inference (epsilon = 1 in units "
                "of its scale): an estimator of the same posterior that shares no proposal, "
                "adaptation, likelihood estimate or network with either method. z: the "
                "particle-minus-rejection difference over the two standard errors combined "
                f"(about N(0, 1) if both are right). {seconds:.0f} s."),
        }],
    }
    path = write_result("lv_reference_check", payload)
    print(f"wrote {path}")
    make_tables.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
