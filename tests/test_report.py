"""`latentda report` renders every figure type for a short run of each system."""

from __future__ import annotations

import pytest

from latentda.cli import main
from latentda.config import parse_case
from latentda.experiment import run_case

PNG = b"\x89PNG\r\n\x1a\n"

SYSTEMS = {
    "lorenz96": ({"system": "lorenz96", "n": 12}, {"kind": "every", "k": 2},
                 ["skill", "rank_histogram", "hovmoller"]),
    "shallow_water": ({"system": "shallow_water", "nx": 8, "ny": 8},
                      {"kind": "strided_grid", "stride": 4}, ["skill", "shallow_water_fields"]),
    "lotka_volterra": ({"system": "lotka_volterra", "augmented": True},
                       {"kind": "indices", "indices": [0, 1]}, ["skill", "lotka_volterra"]),
}


@pytest.mark.parametrize("system", SYSTEMS)
def test_report_renders_figures(system, tmp_path):
    model, op, figs = SYSTEMS[system]
    case = parse_case({"name": system, "model": model, "cycles": 6,
                       "observations": {"operator": op, "error_variance": 0.25},
                       "ensemble": {"size": 6}, "filter": {"method": "etkf", "inflation": 1.1},
                       "output": {"block": 3}})
    _, store = run_case(case, store=tmp_path / "r.zarr")
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "RMSE" in md and "latentda report" in md
    for name in figs:
        png = tmp_path / "rep" / f"{name}.png"
        data = png.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
        assert f"({name}.png)" in md


def test_report_of_a_latent_run_with_a_truth_shift_shows_ood(tmp_path):
    from pathlib import Path

    vae = Path(__file__).resolve().parent.parent / "models" / "l96_vae_k32.pt"
    case = parse_case({"name": "ood", "cycles": 8,
                       "model": {"system": "lorenz96", "n": 40},
                       "observations": {"operator": {"kind": "identity"},
                                        "error_variance": 1.0},
                       "ensemble": {"size": 6, "init": "perturbed_truth"},
                       "prior": {"path": str(vae), "device": "cpu"},
                       "space": {"kind": "latent", "mode": "noisy_manifold"},
                       "filter": {"method": "etkf", "inflation": 1.05},
                       "bias": {"enabled": True},
                       "truth_shift": {"cycle": 4, "parameters": {"F": 10.0}}})
    _, store = run_case(case, store=tmp_path / "r.zarr")
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "(ood.png)" in md and "OOD: mean ood_residual" in md
    assert "(bias.png)" in md and "Forecast bias: bias_z mean" in md
    for name in ("ood", "bias"):
        assert (tmp_path / "rep" / f"{name}.png").read_bytes()[:8] == PNG


def test_report_of_a_latent_laplace_run_shows_identifiability(tmp_path):
    from pathlib import Path

    import xarray as xr

    vae = Path(__file__).resolve().parent.parent / "models" / "l96_vae_k32.pt"
    case = parse_case({"name": "lap", "cycles": 6,
                       "model": {"system": "lorenz96", "n": 40},
                       "observations": {"operator": {"kind": "every", "k": 2},
                                        "error_variance": 1.0},
                       "ensemble": {"size": 6, "init": "perturbed_truth"},
                       "prior": {"path": str(vae), "device": "cpu"},
                       "space": {"kind": "latent", "mode": "noisy_manifold"},
                       "filter": {"method": "laplace", "iterations": 2, "inflation": 1.05},
                       "ood": {"enabled": False},
                       "identifiability": {"enabled": True}})
    _, store = run_case(case, store=tmp_path / "r.zarr")
    ds = xr.open_zarr(store)
    # 20 observations, 32 latent coordinates: at most 20 non-zero singular values
    assert ds.sizes["latent"] == 32 and (ds.identifiability_sv[:, 20:] == 0).all()
    assert (ds.identifiability_sv[:, :20] > 0).all() and ds.map_iterations.min() >= 1
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "(identifiability.png)" in md and "Gauss-Newton iterations" in md
    png = (tmp_path / "rep" / "identifiability.png").read_bytes()
    assert png[:8] == PNG and len(png) > 5000


@pytest.mark.parametrize("method,figure", [("pf", "ess"), ("enks", "skill")])
def test_report_of_particle_and_smoother_runs(method, figure, tmp_path):
    import xarray as xr

    filt = {"method": method, "inflation": 1.05}
    if method == "enks":
        filt["lag"] = 2
    case = parse_case({"name": method, "cycles": 8, "model": {"system": "lorenz96", "n": 12},
                       "observations": {"operator": {"kind": "identity"},
                                        "error_variance": 0.5},
                       "ensemble": {"size": 30, "init": "perturbed_truth"},
                       "filter": filt, "output": {"block": 4}})
    _, store = run_case(case, store=tmp_path / "r.zarr")
    ds = xr.open_zarr(store)
    key = "ess" if method == "pf" else "rmse_smoothed"
    assert bool(ds[key].notnull().any())  # what the figure draws is there
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    png = (tmp_path / "rep" / f"{figure}.png").read_bytes()
    assert png[:8] == PNG and len(png) > 5000
    assert f"({figure}.png)" in (tmp_path / "rep" / "report.md").read_text()
