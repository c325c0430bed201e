"""Command-line interface: ``latentda run | cases | info | report | export | train-prior``.

Errors in the user's input print one clear message and exit with code 2 (no
traceback); a run stopped by a divergence check exits with code 3 (the store keeps
every cycle before it); any other failure exits with code 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

CASES_DIR = Path("cases")


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def _print_summary(case, summary: dict[str, float], store: Path | None) -> None:
    print(f"\n{case.name}: {int(summary['cycles_averaged'])} cycles after a burn-in of "
          f"{case.burn_in}")
    rows = [("RMSE", "rmse_forecast", "rmse_analysis"),
            ("spread", "spread_forecast", "spread_analysis"),
            ("CRPS", "crps_forecast", "crps_analysis")]
    print(f"  {'':10s} {'forecast':>10s} {'analysis':>10s}")
    for label, f, a in rows:
        print(f"  {label:10s} {_fmt(summary[f]):>10s} {_fmt(summary[a]):>10s}")
    comps = [k.removeprefix("rmse_analysis_") for k in summary
             if k.startswith("rmse_analysis_") and not k.endswith("by_component")]
    for name in comps:
        print(f"  {name:10s} analysis RMSE {_fmt(summary['rmse_analysis_' + name])}, "
              f"spread {_fmt(summary['spread_analysis_' + name])}")
    if math.isfinite(summary.get("rmse_smoothed", float("nan"))):
        print(f"  {'smoothed':10s} RMSE {_fmt(summary['rmse_smoothed'])}, spread "
              f"{_fmt(summary['spread_smoothed'])}")
    if math.isfinite(summary.get("ess", float("nan"))):
        print(f"  particle ESS before resampling {_fmt(summary['ess'])} (mean count), "
              f"tempering stages {_fmt(summary['temper_stages'])}")
    if "spread_rmse_ratio" in summary:
        print(f"  spread/RMSE (analysis) {_fmt(summary['spread_rmse_ratio'])}")
    print(f"  normalised innovation {_fmt(summary['innovation_chi2'])}  "
          f"(about 1 for a consistent filter)")
    for k, v in case.expected.items():
        got = summary.get(k)
        if got is not None:
            print(f"  expected {k} ≈ {v}  (got {_fmt(got)})")
    if store is not None:
        print(f"  store: {store}  (xr.open_zarr('{store}'))")


def cmd_run(args: argparse.Namespace) -> int:
    from latentda.config import load_case, with_parallel
    from latentda.experiment import run_case

    overrides = {"cycles": args.cycles, "seed": args.seed}
    case = load_case(args.case, **overrides)
    if getattr(case, "kind", None) == "sbi":
        from latentda.sbi_case import print_sbi_summary

        summary, store = run_case(case, store=args.out, overwrite=args.overwrite,
                                  write=not args.no_write, progress=not args.quiet,
                                  resume=args.resume)
        print_sbi_summary(case, summary, store)
        return 0
    case = with_parallel(case, scheduler=args.scheduler, n_workers=args.workers,
                         batch_size=args.batch_size)
    summary, store = run_case(case, store=args.out, overwrite=args.overwrite,
                              write=not args.no_write, progress=not args.quiet,
                              resume=args.resume, break_lock=args.break_lock)
    _print_summary(case, summary, store)
    return 0


def cmd_cases(args: argparse.Namespace) -> int:
    from latentda.config import case_description

    root = Path(args.dir)
    files = sorted(root.glob("*.yaml"))
    if not files:
        print(f"no case files in {root}/", file=sys.stderr)
        return 2
    width = max(len(f.stem) for f in files)
    for f in files:
        print(f"{f.stem:<{width}}  {case_description(f)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from latentda.io import run_info

    print(run_info(args.store))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from latentda.io import export_netcdf

    out = export_netcdf(args.store, args.out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from latentda.report import make_report

    md = make_report(args.store, args.out)
    print(f"wrote {md} and its figures")
    return 0


def cmd_train_prior(args: argparse.Namespace) -> int:
    from latentda.prior_training import load_prior_config, train_prior

    pc = load_prior_config(args.config)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1 (got {args.steps})")
    prior, card = train_prior(pc, args.config, overwrite=args.overwrite, device=args.device,
                              steps=args.steps, progress=not args.quiet, out=args.out)
    m = card["metrics"]
    print(f"{pc.name}: {prior!r}, trained {card['train_seconds']:.0f} s on {card['device']}")
    for key in ("recon_rmse", "recon_rel_error", "nll", "nll_gain_over_gaussian",
                "active_units", "sample_mean_error", "sample_std_error"):
        if key in m:
            print(f"  {key:24s} {_fmt(float(m[key]))}")
    print(f"  wrote {card['checkpoint']['file']} ({card['checkpoint']['bytes'] / 1e6:.2f} MB) "
          "with its model card (.json, .md)")
    return 0


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` unless the help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``latentda`` command."""
    fmt = _DefaultsFormatter
    p = argparse.ArgumentParser(prog="latentda", formatter_class=fmt,
                                description="Data assimilation in state and latent space.")
    from latentda import __version__

    p.add_argument("--version", action="version", version=f"latentda {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a case file and write its store", formatter_class=fmt)
    r.add_argument("case", help="case file (YAML), e.g. cases/l96_etkf.yaml")
    r.add_argument("--out", default=None, help="output store (default: runs/<name>.zarr)")
    r.add_argument("--cycles", type=int, default=None, help="override the number of cycles")
    r.add_argument("--seed", type=int, default=None, help="override the seed")
    r.add_argument("--overwrite", action="store_true", help="replace an existing store")
    r.add_argument("--resume", action="store_true",
                   help="continue an existing store from its last complete block")
    r.add_argument("--break-lock", action="store_true",
                   help="take over a store whose lock was left by a killed run")
    r.add_argument("--no-write", action="store_true", help="run without writing a store")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--scheduler", default=None,
                   help="where forecasts run: auto, synchronous, threads, processes, "
                        "distributed (DASK_SCHEDULER_ADDRESS), tcp://host:8786 or a scheduler "
                        "file *.json (default: the case's parallel.scheduler)")
    r.add_argument("--workers", type=int, default=None,
                   help="threads or worker processes (default: the case's parallel.n_workers)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="members per forecast task (default: the case's parallel.batch_size)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("cases", help="list the case files with what each shows",
                       formatter_class=fmt)
    c.add_argument("--dir", default=str(CASES_DIR), help="folder of case files")
    c.set_defaults(func=cmd_cases)

    i = sub.add_parser("info", help="summarise a run store", formatter_class=fmt)
    i.add_argument("store", help="zarr store written by `latentda run`")
    i.set_defaults(func=cmd_info)

    rp = sub.add_parser("report", help="figures and a one-page report.md of a store",
                        formatter_class=fmt)
    rp.add_argument("store", help="zarr store written by `latentda run`")
    rp.add_argument("--out", default=None, help="folder for the figures (default: "
                                                "<store>_report next to the store)")
    rp.set_defaults(func=cmd_report)

    t = sub.add_parser("train-prior", help="simulate a climatology and train a generative "
                       "prior; writes NAME.pt, NAME.json and NAME.md (the model card)",
                       formatter_class=fmt)
    t.add_argument("config", help="prior config (YAML), e.g. models/l96_vae_k32.yaml")
    t.add_argument("--out", default=None, help="checkpoint path (default: the config's "
                                               "output, else NAME.pt next to the config)")
    t.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="torch device (default: the config's device)")
    t.add_argument("--steps", type=int, default=None,
                   help="override the optimizer-step budget (a quick try)")
    t.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train_prior)

    e = sub.add_parser("export", help="export a finished store to netCDF4", formatter_class=fmt)
    e.add_argument("store", help="zarr store")
    e.add_argument("out", help="netCDF file to write")
    e.add_argument("--overwrite", action="store_true", help="replace an existing file")
    e.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``latentda`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    from latentda.config import CaseError
    from latentda.cycle import DivergenceError
    from latentda.io import StoreLockedError

    try:
        return args.func(args)
    except DivergenceError as err:
        print(f"latentda {args.command}: {err} (the store keeps every cycle before it)",
              file=sys.stderr)
        return 3
    except (CaseError, FileExistsError, FileNotFoundError, ValueError, StoreLockedError) as err:
        print(f"latentda {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
