"""Cost of one analysis in latent space against state space, shallow water 64x64 and 128x128.

The issue: "the latent analysis should scale with k, not with the grid". For each grid
(1000 km doubly periodic domain, default model parameters, Gaussian-bump family) one
realistic forecast ensemble (N=20 spun-up bump states) is analysed with the same height
observations (125 km apart, 64 observations on both grids, error variance 1e-3) by

- the state-space LETKF (Gaspari-Cohn half-width 250 km, ``weight_stride`` 8 as in
  ``cases/sw_letkf.yaml``), through :class:`latentda.spaces.StateSpace`;
- the latent ETKF, ``LatentSpace(prior, "manifold")`` (k=16 VAE);
- the hybrid, ``LatentSpace(prior, "hybrid")``: latent ETKF, then the same LETKF as
  the state step.

Every number is the best of ``--repeat`` analyses in one process after one warm-up
analysis (numba compilation; the LETKF's localization plan is built there and reused,
as in cycling). The latent cost is split into the prior's encoder and decoder calls
(timed inside the calls) and the rest (ETKF linear algebra, observation operator,
copies). At 64x64 the prior is ``models/sw_bumps_vae_k16.pt``; at 128x128 no trained
prior exists, so an untrained VAE with the same architecture (periodic conv2d,
channels 8/16/32, kernel 3, k=16) is built the way ``latentda train-prior`` builds it,
with its normalization set from the ensemble: timing does not depend on the weights.
torch runs on the CPU with one thread (``torch.set_num_threads(1)``).

Writes ``benchmarks/results/latent_cost.json`` and refreshes ``docs/benchmarks.md``.
Run: ``python benchmarks/latent_cost.py [--repeat 7] [--spinup-days 5]``. With
``--prior basis`` the prior is the shift2d content-basis prior
``models/sw_bumps_basis_k16.pt`` (its decoder is an MLP, a 48-mode basis and a Fourier
shift, not convolutions), written to ``latent_cost_basis.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: --prior: the trained 64x64 checkpoint and the config an untrained 128x128 one is built from
PRIORS = {"conv": "sw_bumps_vae_k16", "basis": "sw_bumps_basis_k16"}
_which = ["conv"]
N = 20
RADIUS = 250_000.0
WEIGHT_STRIDE = 8
OBS_SPACING = 125_000.0
ERROR_VARIANCE = 1.0e-3


class TimedPrior:
    """A prior whose ``encode``/``decode`` calls add their wall time to counters."""

    def __init__(self, prior: Any) -> None:
        self.prior = prior
        self.latent_dim = prior.latent_dim
        self.state_dim = prior.state_dim
        self.encode_s = 0.0
        self.decode_s = 0.0

    @property
    def residual_cov(self) -> np.ndarray:
        return self.prior.residual_cov

    def reset(self) -> None:
        self.encode_s = self.decode_s = 0.0

    def encode(self, X: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.prior.encode(X)
        self.encode_s += time.perf_counter() - t0
        return out

    def decode(self, Z: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.prior.decode(Z)
        self.decode_s += time.perf_counter() - t0
        return out

    def __repr__(self) -> str:
        return f"Timed({self.prior!r})"


class TimedFilter:
    """Wraps a filter's ``analyse`` to time it (the state step of the hybrid)."""

    def __init__(self, filt: Any) -> None:
        self.filt = filt
        self.seconds = 0.0
        inner = filt.analyse

        def analyse(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            return out

        filt.analyse = analyse  # instance attribute shadows the method


def untrained_prior(nx: int, ny: int, X: np.ndarray, model: Any) -> Any:
    """The bump prior's architecture at ``ny x nx``, untrained, normalized on ``X``."""
    import torch

    from latentda import priors
    from latentda.prior_training import _family_kwargs, _normalization, load_prior_config

    pc = load_prior_config(ROOT / "models" / f"{PRIORS[_which[0]]}.yaml")
    pc = pc.model_copy(update={"system": pc.system.model_copy(update={"nx": nx, "ny": ny}),
                               "arch": {**pc.arch, "nx": nx, "ny": ny}})
    torch.manual_seed(0)
    prior = priors.FAMILIES[pc.family](**_family_kwargs(pc, model.state_dim))
    prior.set_normalization(*_normalization(pc, X, model))
    return prior.eval()


def grid_setup(nx: int, spinup_days: float, rng: np.random.Generator) -> dict[str, Any]:
    """Model, forecast ensemble, observation and prior of one grid."""
    from latentda.dynamics.shallow_water import ShallowWater2D
    from latentda.filters import Geometry, Observation
    from latentda.observations import Subset
    from latentda.priors import load

    model = ShallowWater2D(nx=nx, ny=nx)
    steps = int(round(spinup_days * 86400.0 / model.dt))
    t0 = time.perf_counter()
    X = model.sample_climatology(N + 1, rng, family="bumps", spinup_steps=steps)
    t_spin = time.perf_counter() - t0
    Ef, truth = X[:N], X[N]
    stride = int(round(OBS_SPACING / model.dx))
    op = Subset.strided_grid(nx, nx, stride, n_fields=3, field=0)
    loc = model.state_locations()
    y = op(truth[None])[0] + np.sqrt(ERROR_VARIANCE) * rng.standard_normal(op.obs_dim)
    obs = Observation(y=y, R=ERROR_VARIANCE * np.eye(op.obs_dim), h=op,
                      locations=op.locations(loc))
    geometry = Geometry(loc, period=model.domain_period)
    if nx == 64:
        prior, trained = load(ROOT / "models" / f"{PRIORS[_which[0]]}.pt", device="cpu",
                              state_dim=model.state_dim,
                              system="shallow_water"), True
    else:
        prior, trained = untrained_prior(nx, nx, X, model), False
    return {"model": model, "Ef": Ef, "obs": obs, "geometry": geometry, "prior": prior,
            "trained": trained, "stride": stride, "spinup_steps": steps,
            "spinup_seconds": t_spin}


def time_grid(s: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Best-of-``repeat`` timings (seconds) of the three analyses of one grid."""
    from latentda.filters import ETKF, LETKF
    from latentda.spaces import LatentSpace, StateSpace

    Ef, obs, geom = s["Ef"], s["obs"], s["geometry"]
    prior = TimedPrior(s["prior"])
    state = StateSpace(Ef.shape[1], geom)
    letkf = LETKF(radius=RADIUS, inflation=1.02, weight_stride=WEIGHT_STRIDE)
    latent = LatentSpace(prior, "manifold")
    etkf = ETKF(inflation=1.0)
    sf = LETKF(radius=RADIUS, inflation=1.02, weight_stride=WEIGHT_STRIDE)
    timed_sf = TimedFilter(sf)
    hybrid = LatentSpace(prior, "hybrid", obs_fraction=0.5, state_filter=sf, geometry=geom)

    def best(fn: Any) -> dict[str, float]:
        fn()  # warm-up: numba compilation, localization plan
        out: dict[str, float] = {}
        for _ in range(repeat):
            prior.reset()
            timed_sf.seconds = 0.0
            t0 = time.perf_counter()
            fn()
            total = time.perf_counter() - t0
            if not out or total < out["total"]:
                out = {"total": total, "encode": prior.encode_s, "decode": prior.decode_s,
                       "state_step": timed_sf.seconds}
        return out

    rng = np.random.default_rng(0)
    res = {
        "state_letkf": best(lambda: state.assimilate(letkf, Ef, obs, rng)),
        "latent_etkf": best(lambda: latent.assimilate(etkf, Ef, obs, rng)),
        "hybrid": best(lambda: hybrid.assimilate(etkf, Ef, obs, rng)),
    }
    res["state_letkf"].update(encode=0.0, decode=0.0, state_step=res["state_letkf"]["total"])
    for r in res.values():
        r["network"] = r["encode"] + r["decode"]
        r["rest"] = r["total"] - r["network"] - r["state_step"]
    return res


def main(argv: list[str] | None = None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7, help="analyses timed per method")
    ap.add_argument("--spinup-days", type=float, default=5.0,
                    help="spin-up of the bump ensemble (days; the prior's climatology: 5)")
    ap.add_argument("--grids", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--prior", choices=sorted(PRIORS), default="conv",
                    help="conv: models/sw_bumps_vae_k16 (latent_cost.json); basis: the "
                         "shift2d content-basis prior models/sw_bumps_basis_k16 "
                         "(latent_cost_basis.json)")
    args = ap.parse_args(argv)
    _which[0] = args.prior
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    results: dict[str, Any] = {}
    rows: list[list[Any]] = []
    split_rows: list[list[Any]] = []
    with threadpool_limits(limits=1, user_api="blas"):
        for nx in args.grids:
            s = grid_setup(nx, args.spinup_days, np.random.default_rng([nx, 1]))
            t = time_grid(s, args.repeat)
            n, m = s["Ef"].shape[1], s["obs"].y.size
            base = t["state_letkf"]["total"]
            results[f"{nx}x{nx}"] = {
                "n": n, "m": m, "k": s["prior"].latent_dim, "obs_stride": s["stride"],
                "prior_trained": s["trained"], "spinup_steps": s["spinup_steps"],
                "spinup_seconds": s["spinup_seconds"],
                "seconds": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in t.items()},
            }
            labels = {"state_letkf": "state LETKF (weight_stride 8)",
                      "latent_etkf": "latent ETKF (manifold)",
                      "hybrid": "hybrid: latent ETKF + LETKF"}
            for key, label in labels.items():
                r = t[key]
                rows.append([f"{nx}x{nx}", n, label, 1e3 * r["total"], base / r["total"]])
                if key != "state_letkf":
                    split_rows.append([f"{nx}x{nx}", label, 1e3 * r["total"],
                                       1e3 * r["encode"], 1e3 * r["decode"], 1e3 * r["rest"],
                                       1e3 * r["state_step"],
                                       "trained" if s["trained"] else "untrained"])
            print(nx, {k: round(1e3 * v["total"], 2) for k, v in t.items()}, flush=True)
    grids = [f"{g}x{g}" for g in args.grids]
    growth = ""
    if len(grids) == 2:
        a, b = (results[g]["seconds"] for g in grids)
        growth = ("From {} to {} (4x the variables) the times grow by: state LETKF {:.1f}x, "
                  "latent ETKF {:.1f}x (network {:.1f}x, rest {:.1f}x), hybrid {:.1f}x. "
                  .format(grids[0], grids[1],
                          b["state_letkf"]["total"] / a["state_letkf"]["total"],
                          b["latent_etkf"]["total"] / a["latent_etkf"]["total"],
                          b["latent_etkf"]["network"] / a["latent_etkf"]["network"],
                          b["latent_etkf"]["rest"] / a["latent_etkf"]["rest"],
                          b["hybrid"]["total"] / a["hybrid"]["total"]))
    payload = {
        "title": "Cost of one analysis: latent space against state space (shallow water"
                 + (", content-basis prior)" if args.prior == "basis" else ")"),
        "script": f"python benchmarks/latent_cost.py --repeat {args.repeat} "
                  f"--spinup-days {args.spinup_days:g}"
                  + (" --prior basis" if args.prior == "basis" else ""),
        "prior": PRIORS[args.prior],
        "settings": {"N": N, "k": 16, "radius_m": RADIUS, "weight_stride": WEIGHT_STRIDE,
                     "obs_spacing_m": OBS_SPACING, "error_variance": ERROR_VARIANCE,
                     "repeat": args.repeat, "spinup_days": args.spinup_days,
                     "torch_threads": 1, "blas_threads": 1, "device": "cpu",
                     "hybrid_obs_fraction": 0.5, "grids": grids},
        "results": results,
        "tables": [{
            "title": "One analysis of N=20 members, best of "
                     f"{args.repeat} (ms; speed-up against the state LETKF of the same grid)",
            "columns": ["grid", "n", "method", "ms per analysis", "state LETKF / method"],
            "rows": rows,
            "notes": growth + "Same forecast ensemble (20 bump states spun up "
                     f"{args.spinup_days:g} days) and the same 64 height observations "
                     "(125 km apart) for the three methods of a grid. State LETKF: "
                     "half-width 250 km, local weights on every 8th distinct coordinate "
                     "and interpolated; its localization plan is cached by the warm-up "
                     "analysis, as in cycling.",
        }, {
            "title": "Where the latent time goes (ms)",
            "columns": ["grid", "method", "total", "encoder", "decoder",
                        "ETKF algebra + rest", "LETKF state step", "prior weights"],
            "rows": split_rows,
            "notes": "Encoder and decoder: wall time inside the prior's encode/decode calls "
                     "(float32 torch, CPU, one thread); the latent ETKF decodes the N "
                     "members to observe them and once more to return the analysis. "
                     f"Prior: models/{PRIORS[args.prior]} at 64x64. The 128x128 prior is "
                     "untrained (no trained prior exists at that size): the same layers "
                     "grown with the grid (for the basis prior: a 48-mode basis of the "
                     "larger grid, not fitted), so its timing holds for trained weights; "
                     "its analyses are not meaningful. "
                     "ETKF algebra + rest: total minus network and state step (N x N "
                     "eigenproblem, observation operator, copies). Measured on a shared "
                     "2-core machine: compare within a grid, not across runs.",
        }],
    }
    print(write_result("latent_cost" + ("_basis" if args.prior == "basis" else ""), payload))
    make_tables.main([])


if __name__ == "__main__":
    main()
