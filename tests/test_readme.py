"""The README's scripting example runs and reaches the RMSE it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_script_runs_and_reaches_its_rmse():
    blocks = [b for b in python_blocks() if "Cycle(" in b]
    assert blocks, "README lost its scripting example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    rmse = float(out.getvalue().split()[-1])
    assert 0.1 < rmse < 0.25, rmse  # the README says ≈ 0.18


def test_readme_commands_are_the_ci_commands():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in text and "\npython -m pytest -q\n" in ci
    assert 'pip install torch==2.13.0' in text and '"torch==2.13.0"' in ci


def test_readme_prior_example_runs():
    blocks = [b for b in python_blocks() if "priors.load" in b]
    assert blocks, "README lost its prior example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    words = out.getvalue().split()
    assert words[0].startswith("VAEPrior(") and "32" in words
    assert float(words[-1]) < 1.5  # reconstruction RMSE, far below the climatological 3.6


def test_readme_latent_example_runs_and_stays_stable():
    blocks = python_blocks()
    prior = next(b for b in blocks if "priors.load" in b)
    script = next(b for b in blocks if "Cycle(" in b and "LatentSpace" not in b)
    latent = next(b for b in blocks if "LatentSpace(" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(prior + script + latent, "README.md", "exec"), {})
    rmse = float(out.getvalue().split()[-1])
    assert 0.1 < rmse < 0.35, rmse  # the README says about 0.26; the state ETKF diverges


def test_readme_then_block_reads_the_store_of_the_first_command(tmp_path, monkeypatch):
    from latentda.config import load_case
    from latentda.experiment import run_case

    blocks = [b for b in python_blocks() if "open_zarr" in b]
    assert blocks, "README lost its 'Then' block"
    case = load_case(README.parent / "cases" / "l96_etkf.yaml", cycles=520)
    run_case(case, store=tmp_path / "runs" / "l96_etkf.zarr")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    assert 0.1 < float(out.getvalue().split()[-1]) < 0.3
