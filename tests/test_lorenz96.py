"""Lorenz-96: chaos statistics, symmetry, convergence order, batch independence, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.dynamics import Lorenz96
from latentda.dynamics.lorenz96 import l96_tendency


@pytest.fixture(scope="module")
def model() -> Lorenz96:
    return Lorenz96(n=40, F=8.0, dt=0.05)


@pytest.fixture(scope="module")
def attractor(model) -> np.ndarray:
    return model.climatology(64, np.random.default_rng(0))


def test_leading_lyapunov_exponent(model, attractor):
    """Benettin's method: renormalise a nearby copy every step; published value ~1.67."""
    x = attractor[:16]
    rng = np.random.default_rng(1)
    eps = 1e-8
    d = rng.standard_normal(x.shape)
    xp = x + eps * d / np.linalg.norm(d, axis=1, keepdims=True)
    n_transient, n_steps = 200, 4000
    log_growth = np.zeros(x.shape[0])
    for k in range(n_transient + n_steps):
        x = model.step(x)
        xp = model.step(xp)
        sep = xp - x
        norm = np.linalg.norm(sep, axis=1)
        if k >= n_transient:
            log_growth += np.log(norm / eps)
        xp = x + eps * sep / norm[:, None]
    lam = log_growth.mean() / (n_steps * model.dt)
    assert 1.55 <= lam <= 1.80, lam


def test_climatological_moments(model, attractor):
    traj = model.trajectory(attractor, 2000, every=5)[1:]
    mean, std = traj.mean(), traj.std()
    assert abs(mean - 2.35) <= 0.05 * 2.35, mean
    assert abs(std - 3.6) <= 0.05 * 3.6, std


def test_cyclic_shift_commutes_with_step(model, attractor):
    for s in (1, 3, 17):
        a = np.roll(model.step(attractor, 10), s, axis=1)
        b = model.step(np.roll(attractor, s, axis=1), 10)
        np.testing.assert_array_equal(a, b)


def test_rk4_converges_at_order_four():
    x0 = Lorenz96().climatology(4, np.random.default_rng(2))
    T = 0.4
    ref = Lorenz96(dt=T / 640).integrate(x0, 0.0, T)
    errors = []
    for nsteps in (8, 16, 32):
        m = Lorenz96(dt=T / nsteps)
        errors.append(np.abs(m.integrate(x0, 0.0, T) - ref).max())
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 13) & (ratios < 19)), ratios


def test_kernel_matches_numpy_rk4(model, attractor):
    def rk4(E, n):
        f = lambda x: l96_tendency(x, model.F)  # noqa: E731
        for _ in range(n):
            k1 = f(E)
            k2 = f(E + 0.5 * model.dt * k1)
            k3 = f(E + 0.5 * model.dt * k2)
            k4 = f(E + model.dt * k3)
            E = E + model.dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return E

    np.testing.assert_allclose(model.step(attractor, 20), rk4(attractor, 20), rtol=0, atol=1e-11)


def test_members_independent_of_batch(model, attractor):
    full = model.step(attractor, 25)
    for sl in (slice(0, 1), slice(3, 10), slice(0, 33), slice(40, 64)):
        np.testing.assert_array_equal(model.step(attractor[sl], 25), full[sl])


def test_step_does_not_modify_input_and_accepts_1d(model, attractor):
    x = attractor[0].copy()
    out = model.step(x, 3)
    np.testing.assert_array_equal(x, attractor[0])
    assert out.shape == (1, 40)
    assert model.step(attractor, 0) is not attractor


def test_other_sizes_and_fixed_point():
    m = Lorenz96(n=4, F=3.0)
    x = np.full((2, 4), 3.0)  # x = F is a fixed point
    np.testing.assert_allclose(m.step(x, 100), x, atol=1e-12)


def test_integrate_requires_grid_times(model, attractor):
    assert model.nsteps_between(0.0, 1.0) == 20
    with pytest.raises(ValueError, match="whole number of model steps"):
        model.integrate(attractor, 0.0, 0.07)
    with pytest.raises(ValueError, match="t1 must be >= t0"):
        model.integrate(attractor, 1.0, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"n": 3}, "n"), ({"dt": 0.0}, "dt"), ({"dt": -1.0}, "dt"), ({"F": float("nan")}, "F"),
     ({"n": 40.5}, "n")],
)
def test_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} must"):
        Lorenz96(**kwargs)


def test_bad_ensemble_shapes(model):
    with pytest.raises(ValueError, match=r"E must have shape \(N, 40\)"):
        model.step(np.zeros((3, 39)))
    with pytest.raises(ValueError, match="E must be a real numeric array"):
        model.step(np.array([["a"] * 40]))
    with pytest.raises(ValueError, match="nsteps must be >= 0"):
        model.step(np.zeros((1, 40)), -1)
