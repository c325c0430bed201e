"""Case-file validation and the command line: every bad field is named, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml

from latentda.cli import main
from latentda.config import CaseError, load_case, parse_case

ROOT = Path(__file__).resolve().parent.parent


def base(**over):
    d = {"name": "c", "model": {"system": "lorenz96", "n": 12}, "cycles": 6,
         "ensemble": {"size": 5}, "output": {"block": 4}}
    d.update(over)
    return d


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"model": {"system": "lorenz63"}}, "model"),
        ({"model": {"system": "lorenz96", "n": 2}}, "model.n"),
        ({"ensemble": {"size": 1}}, "ensemble.size"),
        ({"observations": {"error_variance": -1.0}}, "observations.error_variance"),
        ({"observations": {"error_covariance": [[1.0, 0.5], [0.0, 1.0]],
                           "operator": {"kind": "indices", "indices": [0, 1]}}},
         "R must be symmetric"),
        ({"observations": {"operator": {"kind": "indices", "indices": [0, 12]}}},
         "12 is out of range"),
        ({"filter": {"method": "letkf", "radius": 0.0}}, "filter.radius"),
        ({"filter": {"method": "letkf"}}, "radius is required"),
        ({"filter": {"method": "etkf", "inflation": 0.9}}, "filter.inflation"),
        ({"burn_in": 6}, "burn_in"),
        ({"model": {"system": "lotka_volterra"}, "filter": {"method": "letkf", "radius": 2}},
         "letkf needs a spatial model"),
        ({"observations": {"operator": {"kind": "strided_grid", "stride": 2}}},
         "needs the shallow_water model"),
        ({"observations": {"operator": {"kind": "every"}}}, "k is required"),
        ({"observations": {"error_variances": [1.0, 2.0]}}, "has 2 entries but there are 12"),
        ({"filter": {"method": "laplace", "gate": 0.01}}, "gate needs beta > 0"),
        ({"filter": {"method": "etkf", "gate": 0.01}}, "gate only applies to method"),
        ({"filter": {"method": "laplace", "beta": 0.5, "static_var": 1.0, "gate": 1.0}},
         "filter.gate"),
        ({"expected_tolerance": 0.0}, "expected_tolerance"),
        ({"expected_tolerance": 1.5}, "expected_tolerance"),
    ],
)
def test_bad_fields_are_named(over, field):
    with pytest.raises(CaseError, match=field):
        parse_case(base(**over))


def test_every_shipped_case_validates():
    cases = sorted((ROOT / "cases").glob("*.yaml"))
    assert cases
    for path in cases:
        case = load_case(path)
        assert case.name == path.stem, f"{path.name}: name must equal the file stem"
        text = path.read_text()
        assert text.startswith("#"), f"{path.name} must start with a comment saying what it shows"
        assert case.expected, f"{path.name} must state the numbers it reaches (expected:)"


def test_cli_run_info_export(tmp_path, capsys):
    case = tmp_path / "c.yaml"
    case.write_text("# a tiny case\n" + yaml.safe_dump(base()))
    store = tmp_path / "c.zarr"
    assert main(["run", str(case), "--out", str(store), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "RMSE" in out and str(store) in out
    assert xr.open_zarr(store).sizes["time"] == 6
    # existing store: refused with exit code 2, store intact
    assert main(["run", str(case), "--out", str(store), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["run", str(case), "--out", str(store), "--quiet", "--overwrite",
                 "--cycles", "4"]) == 0
    assert xr.open_zarr(store).sizes["time"] == 4
    assert main(["info", str(store)]) == 0
    assert "rmse_analysis" in capsys.readouterr().out
    assert main(["export", str(store), str(tmp_path / "c.nc")]) == 0
    assert xr.open_dataset(tmp_path / "c.nc").sizes["time"] == 4
    assert main(["cases", "--dir", str(tmp_path)]) == 0
    assert "a tiny case" in capsys.readouterr().out


def test_cli_bad_case_exits_2_without_traceback(tmp_path):
    case = tmp_path / "bad.yaml"
    case.write_text(yaml.safe_dump(base(ensemble={"size": 1, "colour": "red"})))
    proc = subprocess.run([sys.executable, "-m", "latentda.cli", "run", str(case)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "ensemble.size" in proc.stderr and "ensemble.colour: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = subprocess.run([sys.executable, "-m", "latentda.cli", "run", "missing.yaml"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_help_describes_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--overwrite" in out and "default" in out


@pytest.mark.parametrize("command", ["run", "cases", "info", "report", "train-prior", "export"])
def test_every_subcommand_help_gives_each_option_a_default(command, capsys):
    import re

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    # one entry per option: "  --name ..." up to the next option; each says its default once
    entries = re.split(r"\n  (?=-)", out.split("options:", 1)[1])
    for entry in entries:
        text = " ".join(entry.split())
        if not text or text.startswith("-h, --help"):
            continue
        assert text.count("default") == 1, (command, text)


def test_case_reference_doc_is_current():
    from latentda.config import case_reference_markdown

    doc = (ROOT / "docs" / "cases.md").read_text()
    assert doc == case_reference_markdown(), (
        "docs/cases.md is stale: python -c 'from latentda.config import write_case_reference; "
        "write_case_reference()'")


def test_benchmark_tables_are_current():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import make_tables

    assert make_tables.main(["--check"]) == 0


def test_shortening_a_case_shortens_its_burn_in(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("# long\n" + yaml.safe_dump(base(cycles=600, burn_in=500)))
    assert load_case(path, cycles=40).burn_in == 4
    assert load_case(path, cycles=40, burn_in=3).burn_in == 3
    assert load_case(path).burn_in == 500
    with pytest.raises(CaseError, match="burn_in"):
        load_case(path, burn_in=700)
