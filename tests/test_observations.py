"""Observation operators, noise, schedules, missing values and twin experiments."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.dynamics import Lorenz96
from latentda.observations import (
    Arctan,
    GaussianNoise,
    Identity,
    Linear,
    ObsSchedule,
    Square,
    Subset,
    mask_missing,
    valid_mask,
)
from latentda.twin import twin_experiment


def test_operator_shapes_and_values(rng):
    E = rng.standard_normal((5, 12))
    assert Identity(12)(E).shape == (5, 12)
    np.testing.assert_array_equal(Identity(12)(E), E)
    sub = Subset.every(12, 3, offset=1)
    np.testing.assert_array_equal(sub.indices, [1, 4, 7, 10])
    np.testing.assert_array_equal(sub(E), E[:, [1, 4, 7, 10]])
    np.testing.assert_array_equal(sub(E), E @ sub.matrix().T)
    H = rng.standard_normal((3, 12))
    np.testing.assert_allclose(Linear(H)(E), E @ H.T)
    np.testing.assert_allclose(Arctan(12, [0, 5])(E), np.arctan(E[:, [0, 5]]))
    np.testing.assert_allclose(Square(12)(E), E**2)
    assert Subset.random_sites(12, 5, 0).obs_dim == 5


def test_nonlinear_jacobians_match_finite_differences(rng):
    x = rng.standard_normal(6)
    for op in (Arctan(6, [1, 2, 4]), Square(6)):
        J = op.jacobian(x)
        eps = 1e-6
        fd = np.stack([(op(x + eps * e) - op(x - eps * e))[0] / (2 * eps) for e in np.eye(6)], 1)
        np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="nonlinear"):
        Square(6).matrix()


def test_strided_grid_on_stacked_fields():
    nx, ny = 8, 6
    op = Subset.strided_grid(nx, ny, 2, n_fields=3, field=0)
    h = np.arange(3 * nx * ny, dtype=float)[None]
    obs = op(h)[0]
    grid = h[0, : nx * ny].reshape(ny, nx)
    np.testing.assert_array_equal(obs, grid[::2, ::2].ravel())
    op_v = Subset.strided_grid(nx, ny, (3, 4), n_fields=3, field=2, offset=(1, 2))
    vgrid = h[0, 2 * nx * ny:].reshape(ny, nx)
    np.testing.assert_array_equal(op_v(h)[0], vgrid[1::3, 2::4].ravel())


def test_observation_locations_follow_the_model():
    m = Lorenz96(n=10)
    op = Subset(10, [2, 7])
    np.testing.assert_array_equal(op.locations(m.state_locations()), [[2.0], [7.0]])
    assert Linear(np.ones((1, 10))).locations(m.state_locations()) is None


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "full"])
def test_noise_covariance_recovered_from_samples(kind, rng):
    m = 4
    if kind == "scalar":
        noise = GaussianNoise.scalar(2.5, m)
    elif kind == "diagonal":
        noise = GaussianNoise.diagonal([0.5, 1.0, 2.0, 4.0])
    else:
        A = rng.standard_normal((m, m))
        noise = GaussianNoise.full(A @ A.T + m * np.eye(m))
    n = 40_000
    e = noise.sample(rng, n)
    C = np.cov(e, rowvar=False)
    R = noise.cov
    # standard error of a sample covariance entry: sqrt((R_ij^2 + R_ii R_jj) / n)
    se = np.sqrt((R**2 + np.outer(np.diag(R), np.diag(R))) / n)
    assert np.all(np.abs(C - R) < 5 * se)
    assert np.all(np.abs(e.mean(0)) < 5 * np.sqrt(np.diag(R) / n))
    assert noise.sample(rng).shape == (m,)


def test_noise_validation():
    with pytest.raises(ValueError, match="variance must be > 0"):
        GaussianNoise.scalar(-1.0, 3)
    with pytest.raises(ValueError, match="R must be symmetric"):
        GaussianNoise.full([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="R must be positive definite"):
        GaussianNoise.full([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="variances must be finite and > 0"):
        GaussianNoise.diagonal([1.0, 0.0])
    assert GaussianNoise.full(np.diag([1.0, 2.0])).is_diagonal


def test_operator_validation():
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        Subset(5, [0, 5])
    with pytest.raises(ValueError, match="indices must be distinct"):
        Subset(5, [1, 1])
    with pytest.raises(ValueError, match="E must have shape"):
        Identity(5)(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="k must be <= 5"):
        Subset.every(5, 6)


def test_schedule_and_missing_values(rng):
    np.testing.assert_array_equal(ObsSchedule(every=4).steps(3), [4, 8, 12])
    np.testing.assert_array_equal(ObsSchedule(every=2, first=0).steps(3), [0, 2, 4])
    with pytest.raises(ValueError, match="every must be >= 1"):
        ObsSchedule(every=0)
    y = mask_missing(np.ones(20_000), 0.3, rng)
    frac = 1 - valid_mask(y).mean()
    assert abs(frac - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 20_000)


def test_twin_experiment_reproducible_and_consistent():
    m = Lorenz96(n=20)
    op = Subset.every(20, 2)
    noise = GaussianNoise.scalar(0.25, op.obs_dim)
    sched = ObsSchedule(every=3)
    ds = twin_experiment(m, op, noise, n_cycles=6, schedule=sched, seed=7)
    ds2 = twin_experiment(m, op, noise, n_cycles=6, schedule=sched, seed=7)
    assert ds.identical(ds2)
    assert dict(ds.sizes) == {"time": 6, "state": 20, "obs": 10}
    np.testing.assert_allclose(ds.time.values, 0.05 * 3 * np.arange(1, 7))
    # the truth follows the model from the initial truth
    x = ds.initial_truth.values[None]
    for c in range(6):
        x = m.step(x, 3)
        np.testing.assert_array_equal(ds.truth.values[c], x[0])
    resid = ds.obs_value.values - op(ds.truth.values)
    assert np.all(np.abs(resid) < 5 * 0.5)
    assert not twin_experiment(m, op, noise, n_cycles=6, schedule=sched, seed=8).identical(ds)
    ds_missing = twin_experiment(m, op, noise, n_cycles=50, missing_fraction=0.5, seed=7)
    assert 0.3 < np.isnan(ds_missing.obs_value.values).mean() < 0.7


def test_twin_experiment_checks_dimensions():
    m = Lorenz96(n=20)
    with pytest.raises(ValueError, match="operator.state_dim"):
        twin_experiment(m, Identity(10), GaussianNoise.scalar(1.0, 10), n_cycles=2)
    with pytest.raises(ValueError, match="noise dimension"):
        twin_experiment(m, Identity(20), GaussianNoise.scalar(1.0, 10), n_cycles=2)
