"""Particle filters and smoothers in the cycling engine, the case schema and the store."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from latentda.config import CaseError, parse_case
from latentda.cycle import Cycle
from latentda.dynamics import Lorenz96
from latentda.experiment import run_case
from latentda.filters import ETKF, ParticleFilter
from latentda.obs_stream import ObservationStream
from latentda.observations import GaussianNoise, Identity
from latentda.smoothers import EnKS
from latentda.twin import twin_experiment


def case(**filter_cfg):
    return {"name": "t", "seed": 1,
            "model": {"system": "lorenz96", "n": 40, "F": 8.0, "dt": 0.05},
            "observations": {"operator": {"kind": "identity"}, "error_variance": 1.0},
            "ensemble": {"size": 20, "init": "perturbed_truth"},
            "filter": filter_cfg, "cycles": 150, "burn_in": 30,
            "output": {"block": 50}}


@pytest.mark.parametrize("filt, field", [
    ({"method": "etkf", "bandwidth": 0.5}, "bandwidth only applies to method pf"),
    ({"method": "pf", "lag": 3}, "lag only applies to method enks or pf_smoother"),
    ({"method": "pf", "bandwidth": 0.5, "shrinkage": 0.9}, "either bandwidth"),
    ({"method": "pf", "ess_threshold": 0.0}, "ess_threshold"),
    ({"method": "enks", "lag": -1}, "lag"),
    ({"method": "letkf", "radius": 3.0, "analysis": "enkf"}, "analysis only applies"),
])
def test_particle_and_smoother_fields_are_validated(filt, field):
    with pytest.raises(CaseError, match=field):
        parse_case(case(**filt))


def _l96_stream(n_cycles: int, seed: int = 1):
    model = Lorenz96(n=40)
    H = Identity(40)
    twin = twin_experiment(model, H, GaussianNoise.scalar(1.0, 40), n_cycles=n_cycles,
                           seed=seed)
    return model, H, ObservationStream.from_twin(twin, H)


def test_weighted_summary_is_the_weighted_mean_and_std():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(50, 3))
    w = rng.uniform(size=50)
    w /= w.sum()
    truth = np.array([0.1, -0.2, 0.3])
    s = Cycle._summary(E, w, truth)
    mean = w @ E
    np.testing.assert_allclose(s.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(s.std ** 2, w @ (E - mean) ** 2 * 50 / 49, rtol=1e-12)
    assert s.rmse == pytest.approx(np.sqrt(np.mean((mean - truth) ** 2)), rel=1e-12)
    # equal weights: identical to the unweighted summary
    u = Cycle._summary(E, np.full(50, 0.02), truth)
    ref = Cycle._summary(E, None, truth)
    np.testing.assert_allclose(u.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(u.std, ref.std, rtol=1e-12)
    np.testing.assert_array_equal(u.ranks, ref.ranks)


def test_particle_filter_cycle_carries_weights_and_records_ess():
    model, H, stream = _l96_stream(6)
    E0 = stream.initial_truth + np.random.default_rng(2).normal(size=(200, 40))
    pf = ParticleFilter(ess_threshold=1e-6, temper=False)  # never resamples
    cyc = Cycle(model, pf, H, E0, seed=3)
    rec = next(cyc.iterate(stream))
    w = cyc.weights
    assert w is not None and w.shape == (200,) and w.sum() == pytest.approx(1.0)
    assert 1.0 <= rec.scalars["ess"] <= 200.0
    assert rec.scalars["ess"] == pytest.approx(1.0 / np.sum(w ** 2), rel=1e-9)
    an = rec.extra["analysis_summary"]
    np.testing.assert_allclose(an.mean, w @ rec.analysis, rtol=1e-12)
    # the forecast of the next cycle is summarised with the carried weights
    rec2 = next(cyc.iterate(stream, start=1, stop=2))
    np.testing.assert_allclose(rec2.extra["forecast_summary"].mean, w @ rec2.forecast,
                               rtol=1e-12)


def test_enks_with_lag_zero_smooths_nothing():
    model, H, stream = _l96_stream(20)
    E0 = stream.initial_truth + np.random.default_rng(2).normal(size=(20, 40))
    series = Cycle(model, EnKS(lag=0, inflation=1.02), H, E0, seed=1).run(stream)
    ref = Cycle(model, ETKF(inflation=1.02), H, E0, seed=1).run(stream)
    np.testing.assert_allclose(series["rmse_smoothed"], series["rmse_analysis"], rtol=1e-12)
    np.testing.assert_allclose(series["rmse_analysis"], ref["rmse_analysis"], rtol=1e-10)


def test_enks_case_writes_smoothed_fields_that_beat_the_filter(tmp_path):
    c = parse_case(case(method="enks", lag=4, inflation=1.02))
    summary, store = run_case(c, store=tmp_path / "s.zarr")
    ds = xr.open_zarr(store)
    assert ds.sizes["time"] == 150
    assert {"smoothed_mean", "smoothed_std", "rmse_smoothed"} <= set(ds.data_vars)
    tail = slice(30, None)
    smoothed = float(ds.rmse_smoothed[tail].mean())
    filtered = float(ds.rmse_analysis[tail].mean())
    assert smoothed < 0.9 * filtered  # a lag-4 smoother sees 4 more observations
    # the stored mean is the one scored
    err = ds.smoothed_mean - ds.truth
    np.testing.assert_allclose(np.sqrt((err ** 2).mean("state")), ds.rmse_smoothed, rtol=1e-9)
    assert summary["rmse_smoothed"] == pytest.approx(smoothed, rel=1e-9)
    with pytest.raises(ValueError, match="resume is not available"):
        run_case(c, store=tmp_path / "s.zarr", resume=True)
