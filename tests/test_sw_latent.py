"""The shallow-water latent case (cases/sw_latent_etkf.yaml): it validates, cycles, refuses
noisy_manifold with a hybrid ETKF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")

from latentda.config import CaseError, load_case, parse_case  # noqa: E402
from latentda.cycle import Cycle  # noqa: E402
from latentda.experiment import prepare  # noqa: E402
from latentda.spaces import LatentSpace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASE = ROOT / "cases" / "sw_latent_etkf.yaml"
PRIOR = ROOT / "models" / "sw_bumps_vae_k16.pt"

pytestmark = pytest.mark.skipif(not PRIOR.is_file(), reason="shipped SW prior missing")


@pytest.fixture
def in_repo(monkeypatch):
    """Cases name the prior relative to the repository root."""
    monkeypatch.chdir(ROOT)


def test_case_validates_with_the_priors_training_system(in_repo):
    import json

    case = parse_case(yaml.safe_load(CASE.read_text()), str(CASE))
    assert case.space.kind == "latent" and case.space.mode == "hybrid"
    assert case.space.state_filter.method == "letkf"
    # the prior only represents the system it was trained on: same parameters, same family
    card = json.loads(PRIOR.with_suffix(".json").read_text())["system"]
    model = case.model.model_dump()
    assert {k: model[k] for k in card} == card
    # every analysis falls on the prior's training time grid (states 35 steps apart)
    assert case.observations.every % 35 == 0
    assert case.cycles * case.observations.every <= 9 * 35  # last snapshot: +315 steps


def test_three_cycles_give_finite_analyses_with_latent_codes(in_repo):
    import torch

    torch.set_num_threads(1)
    case = load_case(CASE, cycles=3).model_copy(update={"burn_in": 0})
    p = prepare(case, write=False)
    space = p.setup.space
    assert isinstance(space, LatentSpace) and space.latent_dim == 16
    cyc = Cycle(p.model, p.filter, p.operator, p.ensemble, space=space,
                monitor=p.setup.monitor, seed=3)
    records = list(cyc.iterate(p.stream))
    assert len(records) == 3
    N, k, n = case.ensemble.size, 16, p.model.state_dim
    for rec in records:
        assert rec.analysis.shape == (N, n) and np.isfinite(rec.analysis).all()
        Zf, Za = rec.extra["latent_forecast"], rec.extra["latent_analysis"]
        assert Zf.shape == Za.shape == (N, k)
        assert np.isfinite(Zf).all() and np.isfinite(Za).all()
        # the forecast codes are the encoder of the forecast members
        np.testing.assert_allclose(Zf, space.codes(rec.forecast), rtol=0, atol=1e-6)
        # the latent step moved the codes, and the analysis fits the observations better
        assert np.abs(Za - Zf).max() > 0
        y, H = rec.obs_value, p.operator
        misfit_f = np.sqrt(np.mean((H(rec.forecast.mean(0)[None])[0] - y) ** 2))
        misfit_a = np.sqrt(np.mean((H(rec.analysis.mean(0)[None])[0] - y) ** 2))
        assert misfit_a < misfit_f
        assert np.isfinite(rec.scalars["rmse_analysis"])


def test_noisy_manifold_with_the_sw_prior_is_refused_before_any_work(in_repo):
    data = yaml.safe_load(CASE.read_text())
    data["space"] = {"kind": "latent", "mode": "noisy_manifold"}
    data["filter"] = {"method": "hybrid_etkf", "beta": 0.5, "static_var": 0.01}
    case = parse_case(data)
    with pytest.raises(CaseError, match="full residual covariance") as err:
        prepare(case, write=False)
    assert "space:" in str(err.value) and "mode hybrid" in str(err.value)
