"""Every shipped case runs (smoke test), and reaches the numbers it states (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from latentda.config import load_case
from latentda.experiment import run_case

CASES = sorted((Path(__file__).resolve().parent.parent / "cases").glob("*.yaml"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_smoke(path, tmp_path):
    case = load_case(path)
    if getattr(case, "kind", None) == "sbi":  # an inference case: a tiny version of it
        summary, store = run_case(case.quick(), store=tmp_path / "s.zarr")
        assert store.exists() and math.isfinite(summary["max_abs_dmean_over_std"])
        return
    case = load_case(path, cycles=4)  # a truth_shift moves to cycle 2
    case = case.model_copy(update={"burn_in": 0})
    summary, store = run_case(case, store=tmp_path / "s.zarr")
    assert store.exists()
    assert math.isfinite(summary["spread_analysis"])


@pytest.mark.slow
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_reaches_its_stated_numbers(path):
    case = load_case(path)
    summary, _ = run_case(case, write=False)
    for key, expected in case.expected.items():
        got = summary[key]
        # the stated numbers were measured with the case's own seed: a rerun must agree to
        # a few per cent (the same seed reproduces the run; tolerance covers BLAS differences),
        # or to the wider tolerance a round-off-sensitive case states and explains
        rel = getattr(case, "expected_tolerance", 0.05)  # SBI cases have no such field
        assert got == pytest.approx(expected, rel=rel), (key, got, expected)
