"""The forecast-bias monitor: CUSUM threshold law, the standardized innovation mean, runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from latentda.bias_monitor import BiasMonitor
from latentda.config import CaseError, parse_case
from latentda.diagnostics import cusum, cusum_tail, cusum_threshold, innovation_mean_z
from latentda.experiment import run_case

ROOT = Path(__file__).resolve().parent.parent
VAE = str(ROOT / "models" / "l96_vae_k32.pt")


@pytest.mark.parametrize("drift", [0.5, 1.0])
def test_cusum_tail_decays_at_the_cramer_lundberg_rate(drift):
    # the stationary CUSUM is the maximum of a random walk with N(-k, 1) steps; its
    # tail decays like exp(-theta s) with E exp(theta (X - k)) = 1, i.e. theta = 2 k
    s, tail = cusum_tail(drift, 30.0 / drift, nodes=2000)
    a, b = np.searchsorted(s, [6.0 / drift, 10.0 / drift])
    slope = (np.log(tail[b]) - np.log(tail[a])) / (s[b] - s[a])
    assert slope == pytest.approx(-2.0 * drift, rel=0.01)
    assert np.all(np.diff(tail) <= 0) and 0 < tail[0] < 1


@pytest.mark.parametrize("two_sided", [False, True])
def test_threshold_gives_the_level_as_the_false_alarm_rate(two_sided):
    rng = np.random.default_rng(3)
    z = rng.standard_normal(400_000)
    level = 0.05
    h = cusum_threshold(0.5, level, two_sided)
    S = cusum(z, 0.5)
    flagged = S > h
    if two_sided:
        flagged |= cusum(-z, 0.5) > h
    # alarms come in clusters: 4 standard errors of a clustered rate is about 0.005
    assert abs(flagged.mean() - level) < 0.005
    assert cusum_threshold(0.5, 0.01) > cusum_threshold(0.5, 0.05)  # rarer: higher


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="drift"):
        cusum_threshold(0.0, 0.01)
    with pytest.raises(ValueError, match="level"):
        cusum_threshold(0.5, 1.0)


def test_innovation_mean_z_is_standard_normal_for_a_consistent_forecast():
    rng = np.random.default_rng(1)
    m, N, trials = 6, 400, 3000
    A = rng.standard_normal((m, m))
    P = A @ A.T / m + 0.2 * np.eye(m)
    B = rng.standard_normal((m, m))
    R = B @ B.T / m + 0.5 * np.eye(m)  # a full R
    LP, LR = np.linalg.cholesky(P), np.linalg.cholesky(R)
    zs = np.empty(trials)
    for i in range(trials):
        x = LP @ rng.standard_normal(m)
        HE = (LP @ rng.standard_normal((m, N))).T  # members and truth from the same law
        y = x + LR @ rng.standard_normal(m)
        zs[i] = innovation_mean_z(HE, y, R)
    se = 1 / np.sqrt(trials)
    assert abs(zs.mean()) < 3 * se
    assert abs(zs.std() - 1.0) < 3 * se / np.sqrt(2) + 0.5 / N  # (1 + 1/N) variance
    # the formula by hand: each innovation in units of its observation-error std; a
    # common shift b of the observations moves z by b sum(w) / sd
    w = 1 / (m * np.sqrt(np.diag(R)))
    sd = np.sqrt(w @ (np.cov(HE, rowvar=False) + R) @ w)
    assert innovation_mean_z(HE, y, R) == pytest.approx(w @ (y - HE.mean(0)) / sd, rel=1e-12)
    assert innovation_mean_z(HE, y + 0.3, R) - innovation_mean_z(HE, y, R) == pytest.approx(
        0.3 * w.sum() / sd, rel=1e-12)
    # pooling quantities in other units: rescaling one observation (and its errors)
    # leaves z unchanged
    D = np.diag([1.0, 100.0, 1.0, 1.0, 0.01, 1.0])
    assert innovation_mean_z(HE @ D, D @ y, D @ R @ D) == pytest.approx(
        innovation_mean_z(HE, y, R), rel=1e-10)
    with pytest.raises(ValueError, match="R"):
        innovation_mean_z(HE, y, R[:2, :2])


def test_monitor_runs_two_cusums_carries_missing_cycles_and_its_state():
    mon = BiasMonitor(drift=0.5, level=0.01)
    rng = np.random.default_rng(0)
    R = np.eye(4)
    zs, out = [], []
    for t in range(40):
        HE = rng.standard_normal((10, 4))
        y = rng.standard_normal(4) + (2.5 if t >= 20 else -1.5 if t < 8 else 0.0)
        out.append(mon(HE, y, R) if t != 12 else mon.missing())
        zs.append(out[-1]["bias_z"])
    zs = np.array(zs)
    assert np.isnan(zs[12]) and out[12]["bias_cusum"] == out[11]["bias_cusum"]
    up, lo = cusum(zs, 0.5), cusum(-zs, 0.5)
    signed = np.where(up >= lo, up, -lo)
    np.testing.assert_allclose([o["bias_cusum"] for o in out], signed, rtol=1e-12)
    flags = np.array([o["bias_flag"] for o in out])
    np.testing.assert_array_equal(flags, np.maximum(up, lo) > mon.threshold)
    assert flags[25:].all() and out[-1]["bias_cusum"] > 0  # observations above: positive
    assert out[7]["bias_cusum"] < 0  # the early negative shift shows in the lower CUSUM
    other = BiasMonitor(drift=0.5, level=0.01)
    other.set_state(mon.get_state())
    HE, y = rng.standard_normal((10, 4)), rng.standard_normal(4)
    assert other(HE, y, R) == mon(HE, y, R)
    one = BiasMonitor(two_sided=False)
    for _ in range(10):
        one(rng.standard_normal((10, 4)), rng.standard_normal(4) - 3.0, R)
    assert one.lower == 0.0 and one.threshold < mon.threshold
    with pytest.raises(ValueError, match="drift"):
        BiasMonitor(drift=-1.0)


_CASE = {
    "name": "b", "seed": 4, "model": {"system": "lorenz96", "n": 40},
    "observations": {"operator": {"kind": "every", "k": 2}, "error_variance": 1.0},
    "ensemble": {"size": 20, "init": "perturbed_truth"},
    "filter": {"method": "etkf", "inflation": 1.05},
    "bias": {"enabled": True}, "cycles": 60, "burn_in": 10, "output": {"block": 25},
}


def test_state_space_run_writes_the_bias_monitor_and_flags_a_forcing_switch(tmp_path):
    case = parse_case({**_CASE, "cycles": 140, "truth_shift": {"cycle": 100,
                                                               "parameters": {"F": 12.0}}})
    _, store = run_case(case, store=tmp_path / "b.zarr")
    with xr.open_zarr(store) as ds:
        z, S, flag = (ds[k].values for k in ("bias_z", "bias_cusum", "bias_flag"))
        h = ds.attrs["bias_threshold"]
        assert flag.dtype == bool and "BiasMonitor" in ds.attrs["bias_monitor"]
    np.testing.assert_array_equal(flag, np.abs(S) > h)
    assert not flag[10:100].any()
    assert flag[100:110].any() and flag[110:].all()  # a persisting bias stays flagged
    assert S[110:].min() > 0  # the truth runs ahead of the F = 8 forecasts
    assert np.mean(z[10:100]) == pytest.approx(0.0, abs=0.4)


def test_resume_restores_the_bias_cusum_and_the_ood_window(tmp_path):
    spec = {**_CASE, "prior": {"path": VAE, "device": "cpu"},
            "observations": {"operator": {"kind": "identity"}, "error_variance": 1.0},
            "ood": {"window": 3, "steps": 5}, "cycles": 30, "output": {"block": 10}}
    store = tmp_path / "r.zarr"
    run_case(parse_case({**spec, "cycles": 24}), store=store)  # checkpoint at 24 and the end
    run_case(parse_case(spec), store=store, resume=True)
    run_case(parse_case(spec), store=tmp_path / "ref.zarr")
    with xr.open_zarr(store) as a, xr.open_zarr(tmp_path / "ref.zarr") as b:
        for v in ("bias_cusum", "bias_flag", "ood_score", "rmse_analysis"):
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_bias_config_errors_name_the_field():
    with pytest.raises(CaseError, match="bias.drift"):
        parse_case({**_CASE, "bias": {"enabled": True, "drift": 0.0}})
    with pytest.raises(CaseError, match="bias.level"):
        parse_case({**_CASE, "bias": {"enabled": True, "level": 1.5}})
