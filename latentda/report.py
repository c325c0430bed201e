"""Figures and a one-page summary of a run store: ``latentda report STORE``.

Every figure is a PNG with labelled axes (units from the store's attributes)
and, for fields, a colorbar; ``report.md`` lists the figures and the
time-mean numbers after burn-in, and says which command made them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from latentda.io import open_run


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _tunit(ds: xr.Dataset) -> str:
    return str(ds["time"].attrs.get("units", "model time units"))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def fig_skill(ds: xr.Dataset, out: Path) -> Path:
    """RMSE and spread of forecast, analysis (and smoothed, for smoothers) over time."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    t = ds["time"].values
    for name, style in (("rmse_forecast", "C0--"), ("rmse_analysis", "C0-"),
                        ("spread_forecast", "C1--"), ("spread_analysis", "C1-")):
        if name in ds and np.isfinite(ds[name].values).any():
            ax.plot(t, ds[name].values, style, lw=0.8, label=name.replace("_", " "))
    for name, style in (("rmse_smoothed", "C2-"), ("spread_smoothed", "C2:")):
        if name in ds and np.isfinite(ds[name].values).any():  # fixed-lag smoothers
            ax.plot(t, ds[name].values, style, lw=0.8, label=name.replace("_", " "))
    ax.set_xlabel(f"time ({_tunit(ds)})")
    ax.set_ylabel(f"RMSE / spread ({ds['rmse_analysis'].attrs.get('units', '')})")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Skill over time")
    return _save(fig, out / "skill.png")


def fig_rank_histogram(ds: xr.Dataset, out: Path, burn_in: int) -> Path:
    """Rank histogram of the truth among forecast members, summed after burn-in."""
    plt = _plt()
    counts = ds["rank_histogram"].isel(time=slice(burn_in, None)).sum("time").values
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(np.arange(counts.size), counts / max(counts.sum(), 1), color="C0")
    ax.axhline(1.0 / counts.size, color="k", lw=0.8, ls="--", label="flat (reliable)")
    ax.set_xlabel("rank of the truth among the forecast members")
    ax.set_ylabel("frequency")
    ax.legend(fontsize=8)
    ax.set_title("Rank histogram")
    return _save(fig, out / "rank_histogram.png")


def fig_hovmoller(ds: xr.Dataset, out: Path, max_times: int = 400) -> Path:
    """Lorenz-96: truth, analysis mean and error as time × variable diagrams."""
    plt = _plt()
    sl = slice(max(0, ds.sizes["time"] - max_times), None)
    t = ds["time"].values[sl]
    truth, mean = ds["truth"].values[sl], ds["analysis_mean"].values[sl]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
    vmax = np.nanmax(np.abs(truth)) if np.isfinite(truth).any() else np.nanmax(np.abs(mean))
    for ax, data, title, cmap, lim in (
            (axes[0], truth, "truth", "RdBu_r", vmax),
            (axes[1], mean, "analysis mean", "RdBu_r", vmax),
            (axes[2], mean - truth, "error", "PuOr_r", None)):
        if lim is None:  # the error panel: symmetric about 0 on its own scale
            lim = max(np.nanmax(np.abs(data)), 1e-12) if np.isfinite(data).any() else 1.0
        im = ax.pcolormesh(np.arange(data.shape[1]), t, data, cmap=cmap, vmin=-lim, vmax=lim,
                           shading="auto")
        ax.set_title(title)
        ax.set_xlabel("variable index")
        fig.colorbar(im, ax=ax, label=ds["truth"].attrs.get("units", ""))
    axes[0].set_ylabel(f"time ({_tunit(ds)})")
    return _save(fig, out / "hovmoller.png")


def fig_shallow_water(ds: xr.Dataset, out: Path, times: list[int] | None = None) -> Path:
    """Shallow water: truth, analysis mean, error and spread of h at chosen times."""
    plt = _plt()
    h = ds["field"].values == 0
    x = ds["x"].values[h]
    y = ds["y"].values[h]
    nx, ny = np.unique(x).size, np.unique(y).size
    order = np.lexsort((x, y))
    times = times or sorted({0, ds.sizes["time"] // 2, ds.sizes["time"] - 1})

    def grid(v):
        return v[h][order].reshape(ny, nx)

    fig, axes = plt.subplots(len(times), 4, figsize=(13, 3.0 * len(times)), squeeze=False)
    km = 1e-3
    ext = (x.min() * km, x.max() * km, y.min() * km, y.max() * km)
    for r, k in enumerate(times):
        tr, mu = grid(ds["truth"].values[k]), grid(ds["analysis_mean"].values[k])
        sd = grid(ds["analysis_std"].values[k])
        ref = tr if np.isfinite(tr).all() else mu
        lo, hi = np.nanmin(ref), np.nanmax(ref)
        panels = ((tr, "truth h", "viridis", lo, hi), (mu, "analysis mean h", "viridis", lo, hi),
                  (mu - tr, "error", "RdBu_r", None, None), (sd, "spread", "magma", 0, None))
        for c, (data, title, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[r, c]
            if title == "error":
                lim = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
                vmin, vmax = -lim, lim
            im = ax.imshow(data, origin="lower", extent=ext, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{title}, t = {float(ds['time'][k]):.4g} {_tunit(ds)}", fontsize=9)
            ax.set_xlabel("x (km)")
            ax.set_ylabel("y (km)")
            fig.colorbar(im, ax=ax, label="m")
    return _save(fig, out / "shallow_water_fields.png")


def fig_lotka_volterra(ds: xr.Dataset, out: Path) -> Path:
    """Lotka–Volterra: phase portrait of truth and analysis, and parameter estimates."""
    plt = _plt()
    names = str(ds["variable"].attrs.get("flag_meanings", "prey predator")).split()
    n_par = len(names) - 2
    fig, axes = plt.subplots(1, 2 if n_par > 0 else 1, figsize=(11 if n_par else 5.5, 4),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot(ds["truth"].values[:, 0], ds["truth"].values[:, 1], "k-", lw=1, label="truth")
    ax.plot(ds["analysis_mean"].values[:, 0], ds["analysis_mean"].values[:, 1], "C0-", lw=0.8,
            label="analysis mean")
    ax.set_xlabel(f"{names[0]} (individuals)")
    ax.set_ylabel(f"{names[1]} (individuals)")
    ax.legend(fontsize=8)
    ax.set_title("Phase portrait")
    if n_par > 0:
        ax = axes[0, 1]
        t = ds["time"].values
        for j in range(n_par):
            mu = ds["analysis_mean"].values[:, 2 + j]
            sd = ds["analysis_std"].values[:, 2 + j]
            ax.plot(t, mu, f"C{j}-", lw=0.9, label=names[2 + j])
            ax.fill_between(t, mu - 2 * sd, mu + 2 * sd, color=f"C{j}", alpha=0.2)
            ax.plot(t, ds["truth"].values[:, 2 + j], f"C{j}--", lw=0.8)
        ax.set_xlabel(f"time ({_tunit(ds)})")
        ax.set_ylabel("log-parameter (±2 std; dashed: truth)")
        ax.legend(fontsize=8, ncol=2)
        ax.set_title("Parameter posterior")
    return _save(fig, out / "lotka_volterra.png")


def fig_ess(ds: xr.Dataset, out: Path) -> Path:
    """Effective sample size of particle methods over time."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(ds["time"].values, ds["ess"].values, "C3-", lw=0.8)
    ax.set_xlabel(f"time ({_tunit(ds)})")
    ax.set_ylabel("ESS (particles)")
    ax.set_title("Effective sample size")
    return _save(fig, out / "ess.png")


def _ood_level(ds: xr.Dataset) -> float | None:
    """The flagging level of a run's OOD monitor (from its case config)."""
    cfg = json.loads(ds.attrs.get("case_config", "{}"))
    level = (cfg.get("ood") or {}).get("level")
    return None if level is None else float(level)


def fig_ood(ds: xr.Dataset, out: Path) -> Path:
    """OOD residual, its chi-square score against the flagging level, manifold distance."""
    plt = _plt()
    t = ds["time"].values
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    flag = ds["ood_flag"].values.astype(bool)
    a1.plot(t, ds["ood_residual"].values, "C0-", lw=0.7, label="ood_residual")
    a1.plot(t[flag], ds["ood_residual"].values[flag], "C3.", ms=4, label="flagged")
    a1.set_ylabel("OOD residual (1)")
    score = np.clip(ds["ood_score"].values, 1e-300, 1.0)
    a2.semilogy(t, score, "C0-", lw=0.7, label="ood_score")
    a2.semilogy(t[flag], score[flag], "C3.", ms=4, label="flagged")
    level = _ood_level(ds)
    if level is not None:
        a2.axhline(level, color="C3", ls="--", lw=0.8, label=f"level {level:g}")
    a2.set_ylabel("chi-square tail probability (1)")
    a2.legend(loc="lower left", fontsize=8)
    a3.plot(t, ds["manifold_distance"].values, "C2-", lw=0.7)
    a3.set_ylabel(f"manifold distance ({ds['manifold_distance'].attrs.get('units', '')})")
    a3.set_xlabel(f"time ({_tunit(ds)})")
    _mark_shift(ds, t, [a1, a2, a3])
    a1.legend(loc="upper left", fontsize=8)
    a1.set_title("Out-of-distribution diagnostics of the observations")
    return _save(fig, out / "ood.png")


def _mark_shift(ds: xr.Dataset, t: np.ndarray, axes: list) -> None:
    """A dashed line at a case's truth shift (if it has one)."""
    shift = json.loads(ds.attrs.get("case_config", "{}")).get("truth_shift")
    if shift:
        ts = t[min(int(shift["cycle"]), t.size - 1)]
        for ax in axes:
            ax.axvline(ts, color="k", ls="--", lw=0.8)
        axes[0].text(ts, axes[0].get_ylim()[1], " truth shift", va="top", fontsize=8)


def fig_bias(ds: xr.Dataset, out: Path) -> Path:
    """The standardized innovation mean and its CUSUM against the alarm threshold."""
    plt = _plt()
    t = ds["time"].values
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    flag = ds["bias_flag"].values.astype(bool)
    z, S = ds["bias_z"].values, ds["bias_cusum"].values
    a1.plot(t, z, "C0-", lw=0.7)
    a1.axhline(0.0, color="k", lw=0.5)
    a1.set_ylabel("bias_z (1)")
    a2.plot(t, S, "C0-", lw=0.7, label="bias_cusum")
    a2.plot(t[flag], S[flag], "C3.", ms=4, label="flagged")
    h = ds.attrs.get("bias_threshold")
    if h is not None:
        a2.axhline(float(h), color="C3", ls="--", lw=0.8, label=f"threshold {float(h):.3g}")
        a2.axhline(-float(h), color="C3", ls="--", lw=0.8)
    a2.set_ylabel("CUSUM (1)")
    a2.set_xlabel(f"time ({_tunit(ds)})")
    a2.legend(loc="upper left", fontsize=8)
    _mark_shift(ds, t, [a1, a2])
    a1.set_title("Forecast bias: standardized innovation mean and its CUSUM")
    return _save(fig, out / "bias.png")


def fig_identifiability(ds: xr.Dataset, out: Path) -> Path:
    """Singular values of the whitened observed Jacobian and Cramér–Rao bounds over time."""
    plt = _plt()
    t = ds["time"].values
    sv = ds["identifiability_sv"].values  # (time, latent)
    crlb = ds["crlb"].values
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    im = a1.pcolormesh(t, np.arange(sv.shape[1]), np.log10(np.maximum(sv, 1e-12)).T,
                       shading="nearest", cmap="viridis")
    fig.colorbar(im, ax=a1, label="log10 singular value")
    a1.set_ylabel("singular value index")
    a1.set_title("Identifiability: singular values of R^-1/2 H dG/dz at the analysis code")
    finite = np.where(np.isfinite(crlb), crlb, np.nan)
    with warnings.catch_warnings():  # times where every bound is infinite: NaN, not drawn
        warnings.simplefilter("ignore", RuntimeWarning)
        a2.semilogy(t, np.nanmedian(finite, axis=1), "C0-", lw=0.8, label="median")
        a2.semilogy(t, np.nanmax(finite, axis=1), "C3-", lw=0.8, label="largest finite")
    n_inf = np.sum(~np.isfinite(crlb) & ~np.isnan(crlb), axis=1)
    if n_inf.any():
        a2.text(0.01, 0.02, f"non-identifiable coordinates: up to {int(n_inf.max())}",
                transform=a2.transAxes, fontsize=8)
    a2.set_ylabel(f"CRLB ({ds['crlb'].attrs.get('units', '')})")
    a2.set_xlabel(f"time ({_tunit(ds)})")
    a2.legend(loc="upper right", fontsize=8)
    return _save(fig, out / "identifiability.png")


def fig_sbi_posteriors(ds: xr.Dataset, out: Path) -> Path:
    """SBI stores: marginal posteriors of each log-rate, NPE against the particle posterior."""
    plt = _plt()
    names = str(ds["parameter"].attrs.get("flag_meanings", "")).split()
    X = ds["npe_samples"].values
    P, w = ds["particle_samples"].values, ds["particle_weights"].values
    fig, axes = plt.subplots(1, X.shape[1], figsize=(3.2 * X.shape[1], 3.2), squeeze=False)
    for j, ax in enumerate(axes[0]):
        lo = min(X[:, j].min(), P[:, j].min())
        hi = max(X[:, j].max(), P[:, j].max())
        bins = np.linspace(lo, hi, 40)
        ax.hist(X[:, j], bins=bins, density=True, color="C0", alpha=0.5, label="NPE")
        ax.hist(P[:, j], bins=bins, weights=w, density=True, histtype="step", color="C3",
                lw=1.2, label="particle (SMC-ABC)")
        ax.axvline(float(ds["theta_true"].values[j]), color="k", ls="--", lw=0.8,
                   label="truth")
        ax.set_xlabel(f"{names[j] if j < len(names) else j} (1)")
        ax.set_ylabel("density (1)")
        ax.set_title(f"dmean/std {float(ds['dmean_over_std'].values[j]):+.2f}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Posterior marginals: amortized NPE vs particle posterior")
    return _save(fig, out / "sbi_posteriors.png")


def _sbi_report(store: Path, ds: xr.Dataset, out: Path) -> Path:
    fig = fig_sbi_posteriors(ds, out)
    names = str(ds["parameter"].attrs.get("flag_meanings", "")).split()
    lines = [f"# Report: {ds.attrs.get('case_name', store.stem)}", "",
             f"Made by `latentda report {store}`. {ds.attrs.get('case_description', '')}".strip(),
             "", "| log-rate | truth | NPE mean | particle mean | particle std | dmean/std |",
             "|---|---|---|---|---|---|"]
    for j, name in enumerate(names):
        lines.append(f"| {name} | {float(ds.theta_true[j]):.4g} | {float(ds.npe_mean[j]):.4g} "
                     f"| {float(ds.particle_mean[j]):.4g} | {float(ds.particle_std[j]):.4g} "
                     f"| {float(ds.dmean_over_std[j]):+.3f} |")
    a = ds.attrs
    lines += ["", f"Max |dmean|/std {a.get('max_abs_dmean_over_std', float('nan')):.3f}; "
              f"NPE std / particle std {a.get('std_ratio', float('nan')):.2f}; particle ESS "
              f"{a.get('particle_ess', float('nan')):.0f}. A new observation: particle "
              f"{a.get('particle_seconds', float('nan')):.1f} s, NPE "
              f"{1e3 * a.get('npe_seconds', float('nan')):.1f} ms "
              f"({a.get('speedup', float('nan')):.0f}x).", "", f"![{fig.stem}]({fig.name})"]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def make_report(store: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the figures of a store and ``report.md`` into ``out`` (default ``<store>_report``).

    Returns
    -------
    Path
        The report's Markdown file.
    """
    store = Path(store)
    ds = open_run(store).load()
    out = Path(out) if out is not None else store.with_name(store.stem + "_report")
    out.mkdir(parents=True, exist_ok=True)
    if ds.attrs.get("kind") == "sbi":  # an inference case: posteriors, not time series
        return _sbi_report(store, ds, out)
    burn_in = int(ds.attrs.get("burn_in_cycles", 0))
    burn_in = min(burn_in, max(ds.sizes["time"] - 1, 0))
    figs = [fig_skill(ds, out), fig_rank_histogram(ds, out, burn_in)]
    system = ds.attrs.get("system", "")
    if system == "lorenz96" and np.isfinite(ds["truth"].values).any():
        figs.append(fig_hovmoller(ds, out))
    if system == "shallow_water":
        figs.append(fig_shallow_water(ds, out))
    if system == "lotka_volterra":
        figs.append(fig_lotka_volterra(ds, out))
    if "ess" in ds and np.isfinite(ds["ess"].values).any():
        figs.append(fig_ess(ds, out))
    if "ood_residual" in ds:
        figs.append(fig_ood(ds, out))
    if "bias_cusum" in ds:
        figs.append(fig_bias(ds, out))
    if "identifiability_sv" in ds:
        figs.append(fig_identifiability(ds, out))
    tail = ds.isel(time=slice(burn_in, None))
    lines = [f"# Report: {ds.attrs.get('case_name', store.stem)}", "",
             f"Made by `latentda report {store}`. {ds.attrs.get('case_description', '')}".strip(),
             "", f"- model: `{ds.attrs.get('model', '?')}`",
             f"- filter: `{ds.attrs.get('filter', '?')}`, N = {ds.sizes.get('member', '?')}",
             f"- cycles: {ds.sizes['time']} (burn-in {burn_in}), seed {ds.attrs.get('seed')}",
             f"- status: {ds.attrs.get('status')}", "",
             "| quantity | forecast | analysis |", "|---|---|---|"]
    for label, f, a in (("RMSE", "rmse_forecast", "rmse_analysis"),
                        ("spread", "spread_forecast", "spread_analysis"),
                        ("CRPS", "crps_forecast", "crps_analysis")):
        fv, av = float(tail[f].mean()), float(tail[a].mean())
        lines.append(f"| {label} | {fv:.4g} | {av:.4g} |")
    lines += ["", f"Normalised innovation: {float(tail['innovation_chi2'].mean()):.3g} "
              "(about 1 for a consistent filter).", ""]
    if "ood_residual" in ds:
        lines += [f"OOD: mean ood_residual {float(tail['ood_residual'].mean()):.3g}, "
                  f"{100 * float(tail['ood_flag'].astype(float).mean()):.1f}% of analyses "
                  f"flagged (`{ds.attrs.get('ood_monitor', '')}`), mean manifold distance "
                  f"{float(tail['manifold_distance'].mean()):.3g}.", ""]
    if "bias_cusum" in ds:
        flagged = ds["bias_flag"].values.astype(bool)
        first = np.flatnonzero(flagged)
        lines += [f"Forecast bias: bias_z mean {float(np.nanmean(tail['bias_z'].values)):.3g}, "
                  f"std {float(np.nanstd(tail['bias_z'].values)):.3g} (about 0 and 1 without "
                  f"bias); {100 * float(tail['bias_flag'].astype(float).mean()):.1f}% of "
                  "analyses after the burn-in flagged"
                  + (f", first at cycle {int(first[0])}" if first.size else "")
                  + f" (`{ds.attrs.get('bias_monitor', '')}`).", ""]
    if "map_iterations" in ds and np.isfinite(tail["map_iterations"].values).any():
        line = (f"Gradient-based analysis: {float(tail['map_iterations'].mean()):.3g} "
                f"Gauss-Newton iterations per analysis, largest Hessian damping "
                f"{float(tail['hessian_damping'].max()):.3g}")
        if np.isfinite(tail["accept_rate"].values).any():
            line += f", MCMC acceptance rate {float(tail['accept_rate'].mean()):.3g}"
        lines += [line + ".", ""]
    if "identifiability_sv" in ds:
        sv = tail["identifiability_sv"].values
        big = np.nanmax(sv, axis=1, keepdims=True)
        rank = np.mean(np.sum(sv > 1e-6 * big, axis=1))
        crlb = tail["crlb"].values
        finite = crlb[np.isfinite(crlb)]
        med = (f"median finite CRLB {float(np.median(finite)):.3g}" if finite.size
               else "every CRLB infinite (fewer observations than latent dimensions)")
        lines += [f"Identifiability: {rank:.3g} of {sv.shape[1]} latent directions "
                  f"identified on average; {med}.", ""]
    comps = str(ds["component"].attrs.get("flag_meanings", "")).split()
    if len(comps) > 1:
        lines += ["| component | analysis RMSE | analysis spread |", "|---|---|---|"]
        rm = tail["rmse_analysis_by_component"].mean("time").values
        sp = tail["spread_analysis_by_component"].mean("time").values
        lines += [f"| {c} | {r:.4g} | {s:.4g} |" for c, r, s in zip(comps, rm, sp, strict=True)]
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in figs]
    cfg = json.loads(ds.attrs.get("case_config", "{}"))
    if cfg:
        lines += ["", "<details><summary>case</summary>", "", "```json",
                  json.dumps(cfg, indent=1), "```", "</details>"]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md
