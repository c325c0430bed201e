"""Lotka–Volterra: the deterministic ODE (RK4) and the Markov-jump model (Gillespie SSA)."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.dynamics.lotka_volterra import LotkaVolterra
from latentda.dynamics.lotka_volterra_ssa import (
    TRUE_LOG_THETA,
    StochasticLotkaVolterra,
    summary_statistics,
)

THETA = np.exp(TRUE_LOG_THETA)  # (0.01, 0.5, 1, 0.01)


# --------------------------------------------------------------------------- ODE


def test_invariant_conserved_over_20_time_units():
    model = LotkaVolterra()
    E0 = model.random_state(16, np.random.default_rng(0))
    V0 = model.invariant(E0)
    path = model.trajectory(E0, 2000, every=100)  # (21, N, 2), t = 0, 1, ..., 20
    drift = np.abs(model.invariant(path[-1]) - V0) / np.abs(V0)
    assert np.all(drift <= 1e-6), drift.max()
    # the members really travel round their orbits (the check is not satisfied at rest)
    assert np.all(np.ptp(np.log(path[..., 0]), axis=0) > 0.05)


def test_invariant_conserved_with_each_members_own_parameters():
    model = LotkaVolterra(augmented=True, param_spread=0.2)
    E0 = model.random_state(16, np.random.default_rng(1))
    V0 = model.invariant(E0)
    V1 = model.invariant(model.integrate(E0, 0.0, 20.0))
    assert np.all(np.abs(V1 - V0) / np.abs(V0) <= 1e-6)
    # with the true (shared) parameters instead, V of the perturbed members is not conserved
    shared = LotkaVolterra()
    V0s = shared.invariant(E0[:, :2])
    V1s = shared.invariant(model.integrate(E0, 0.0, 20.0)[:, :2])
    assert np.abs(V1s - V0s).max() / np.abs(V0s).max() > 1e-3


def test_equilibrium_is_a_fixed_point():
    model = LotkaVolterra(alpha=0.8, beta=0.2, gamma=1.1, delta=0.05)
    eq = model.equilibrium
    np.testing.assert_allclose(eq, [1.1 / 0.05, 0.8 / 0.2])
    np.testing.assert_allclose(model.step(eq, 500)[0], eq, rtol=1e-12)


def test_rk4_is_fourth_order():
    E0 = LotkaVolterra().random_state(4, np.random.default_rng(2))
    ref = LotkaVolterra(dt=0.1 / 256).integrate(E0, 0.0, 2.0)
    errs = [np.abs(LotkaVolterra(dt=h).integrate(E0, 0.0, 2.0) - ref).max()
            for h in (0.1, 0.05, 0.025)]
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 14.0) & (ratios < 18.0)), ratios


def test_augmented_keeps_log_params_and_matches_plain_model_exactly():
    aug = LotkaVolterra(augmented=True, param_spread=0.3)
    E0 = aug.random_state(5, np.random.default_rng(3))
    E1 = aug.step(E0, 300)
    np.testing.assert_array_equal(E1[:, 2:], E0[:, 2:])
    for i in range(E0.shape[0]):
        a, b, g, d = np.exp(E0[i, 2:])
        plain = LotkaVolterra(alpha=a, beta=b, gamma=g, delta=d)
        np.testing.assert_array_equal(plain.step(E0[i, :2], 300)[0], E1[i, :2])
    # members with different parameters really follow different trajectories
    assert np.ptp(E1[:, 0] / E0[:, 0]) > 1e-3


@pytest.mark.parametrize("augmented", [False, True])
def test_members_are_independent(augmented):
    model = LotkaVolterra(augmented=augmented)
    E0 = model.random_state(7, np.random.default_rng(4))
    batch = model.step(E0, 250)
    for i in range(E0.shape[0]):
        np.testing.assert_array_equal(model.step(E0[i], 250)[0], batch[i])
    E0b = E0.copy()
    E0b[0, :2] *= 1.5
    other = model.step(E0b, 250)
    np.testing.assert_array_equal(other[1:], batch[1:])
    assert not np.array_equal(other[0], batch[0])


def test_ode_api_and_coordinates():
    plain, aug = LotkaVolterra(), LotkaVolterra(augmented=True)
    assert (plain.state_dim, aug.state_dim, plain.name, plain.spinup_steps) == (
        2, 6, "lotka_volterra", 0)
    np.testing.assert_allclose(plain.true_log_params, np.log([1.0, 0.1, 1.5, 0.075]))
    for model, meanings in ((plain, "prey predator"),
                            (aug, "prey predator log_alpha log_beta log_gamma log_delta")):
        dim, values, attrs = model.state_coords()["variable"]
        assert dim == "state" and values.dtype == np.int8
        assert attrs["flag_meanings"] == meanings
        np.testing.assert_array_equal(values, np.arange(model.state_dim))
        np.testing.assert_array_equal(attrs["flag_values"], values)
    E = aug.random_state(4000, np.random.default_rng(5))
    assert E.shape == (4000, 6) and np.all(E[:, :2] > 0)
    np.testing.assert_allclose(np.median(np.log(E[:, :2]), axis=0),
                               np.log(aug.equilibrium), atol=0.05)
    np.testing.assert_allclose(E[:, 2:].std(axis=0), 0.1, rtol=0.1)
    np.testing.assert_allclose(E[:, 2:].mean(axis=0), aug.true_log_params, atol=0.02)


def test_ode_bad_input():
    with pytest.raises(ValueError, match="dt"):
        LotkaVolterra(dt=0.0)
    with pytest.raises(ValueError, match="dt"):
        LotkaVolterra(dt=-0.01)
    for name in ("alpha", "beta", "gamma", "delta"):
        with pytest.raises(ValueError, match=name):
            LotkaVolterra(**{name: -1.0})
    with pytest.raises(ValueError, match="param_spread"):
        LotkaVolterra(param_spread=-0.1)
    model = LotkaVolterra()
    with pytest.raises(ValueError, match="E"):
        model.step(np.array([[10.0, -1.0]]))
    with pytest.raises(ValueError, match="E"):
        model.step(np.array([[-10.0, 1.0]]), 0)
    with pytest.raises(ValueError, match="E"):
        model.trajectory(np.array([[-10.0, 1.0]]), 3)
    with pytest.raises(ValueError, match="E"):
        model.step(np.ones((3, 6)))
    aug = LotkaVolterra(augmented=True)
    bad = aug.random_state(2, np.random.default_rng(0))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="log-parameters"):
        aug.step(bad)


# --------------------------------------------------------------------------- SSA


def test_ssa_reproducible_with_a_seed():
    model = StochasticLotkaVolterra()
    a = model.simulate(TRUE_LOG_THETA, 123, n=4)
    b = model.simulate(TRUE_LOG_THETA, np.random.default_rng(123), n=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    c = model.simulate(TRUE_LOG_THETA, 124, n=4)
    assert not np.array_equal(a[0], c[0])
    traj, capped, n_events = a
    assert traj.shape == (4, 151, 2) and traj.dtype == np.float64
    assert capped.dtype == np.bool_ and n_events.dtype == np.int64
    np.testing.assert_array_equal(traj[:, 0], np.tile([50.0, 100.0], (4, 1)))
    # populations change by one per event: consecutive records differ by <= events between
    assert np.all(np.abs(np.diff(traj, axis=1)).sum(axis=(1, 2)) <= n_events)
    np.testing.assert_allclose(model.times[-1], 30.0)


def test_ssa_simulation_alone_equals_same_seed_in_batch():
    model = StochasticLotkaVolterra()
    rng = np.random.default_rng(7)
    log_theta = TRUE_LOG_THETA + 0.2 * rng.standard_normal((6, 4))
    seeds = rng.integers(0, 2**63 - 1, size=6)
    batch = model.simulate_seeds(log_theta, seeds)
    for i in (0, 3, 5):
        alone = model.simulate_seeds(log_theta[i], seeds[i:i + 1])
        for u, v in zip(alone, batch, strict=True):
            np.testing.assert_array_equal(u[0], v[i])
    # reordering the batch permutes the results
    perm = np.array([5, 2, 0, 4, 1, 3])
    shuffled = model.simulate_seeds(log_theta[perm], seeds[perm])
    np.testing.assert_array_equal(shuffled[0], batch[0][perm])


def test_ssa_large_populations_follow_the_ode():
    omega = 100
    model = StochasticLotkaVolterra(x0=50 * omega, y0=100 * omega, t_end=2.0, record_dt=0.2,
                                    max_events=10**7)
    log_theta = np.log(THETA / np.array([omega, 1.0, 1.0, omega]))
    traj, capped, _ = model.simulate(log_theta, 11, n=20)
    assert not capped.any()
    mean = traj.mean(axis=0) / omega  # (T, 2): predators X, prey Y
    # dX/dt = th1 X Y - th2 X, dY/dt = th3 Y - th4 X Y  <=>  the ODE with x = Y (prey),
    # y = X (predators), alpha = th3, beta = th4, gamma = th2, delta = th1
    ode = LotkaVolterra(alpha=THETA[2], beta=THETA[3], gamma=THETA[1], delta=THETA[0],
                        dt=0.001)
    ref = ode.trajectory(np.array([100.0, 50.0]), 2000, every=200)[:, 0, ::-1]
    assert np.abs(ref / ref[0] - 1).max(axis=0).min() > 0.2  # both populations really move
    np.testing.assert_allclose(mean, ref, rtol=0.02)


def test_ssa_event_count_matches_integrated_propensity():
    model = StochasticLotkaVolterra(t_end=0.5, record_dt=0.001, max_events=10**6)
    traj, capped, n_events = model.simulate(TRUE_LOG_THETA, 3, n=4000)
    assert not capped.any()
    X, Y = traj[..., 0], traj[..., 1]
    a0 = (THETA[0] + THETA[3]) * X * Y + THETA[1] * X + THETA[2] * Y
    integral = 0.5 * (a0[:, 1:] + a0[:, :-1]).sum(axis=1) * model.record_dt
    diff = n_events - integral  # a martingale increment: mean zero
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert abs(diff.mean()) < 4 * se, (diff.mean(), se)
    assert n_events.mean() > 100  # the interval really holds many events


def _check_moment(sample, mean, var, z=4.5):
    n = sample.size
    m = sample.mean()
    assert abs(m - mean) < z * np.sqrt(var / n), (m, mean)
    s2 = sample.var(ddof=1)
    m4 = np.mean((sample - m) ** 4)
    se_var = np.sqrt((m4 - s2**2) / n)
    assert abs(s2 - var) < z * se_var, (s2, var, se_var)


def test_ssa_birth_death_without_interaction_is_analytic():
    th2, th3 = 0.5, 1.0
    model = StochasticLotkaVolterra(t_end=1.0, record_dt=0.25, max_events=10**6)
    log_theta = np.array([-np.inf, np.log(th2), np.log(th3), -np.inf])
    traj, capped, n_events = model.simulate(log_theta, 21, n=4000)
    assert not capped.any()
    for k, t in enumerate(model.times):
        if k == 0:
            continue
        p = np.exp(-th2 * t)  # pure death: X(t) ~ Binomial(X0, p)
        _check_moment(traj[:, k, 0], 50 * p, 50 * p * (1 - p))
        g = np.exp(th3 * t)  # Yule: E = Y0 e^{th3 t}, Var = Y0 e^{th3 t}(e^{th3 t} - 1)
        _check_moment(traj[:, k, 1], 100 * g, 100 * g * (g - 1))
    # every event is a predator death or a prey birth
    np.testing.assert_array_equal(
        n_events, (50 - traj[:, -1, 0]) + (traj[:, -1, 1] - 100))


def test_ssa_cap_is_reported_and_tail_is_held():
    model = StochasticLotkaVolterra()
    exploding = TRUE_LOG_THETA + np.array([0.0, 0.0, 2.0, 0.0])  # prey birth e^2 times faster
    traj, capped, n_events = model.simulate(exploding, 5, n=3)
    assert capped.all() and np.all(n_events == model.max_events)
    _, capped_ok, n_ok = model.simulate(TRUE_LOG_THETA, 5, n=20)
    assert (~capped_ok).sum() >= 15 and np.all(n_ok[capped_ok] == model.max_events)
    assert np.all(n_ok <= model.max_events)

    # the cap is exact: a simulation needing K events runs uncapped with max_events = K
    seeds = np.array([987654321])
    full = StochasticLotkaVolterra(max_events=10**7).simulate_seeds(TRUE_LOG_THETA, seeds)
    K = int(full[2][0])
    enough = StochasticLotkaVolterra(max_events=K).simulate_seeds(TRUE_LOG_THETA, seeds)
    assert not enough[1][0] and enough[2][0] == K
    np.testing.assert_array_equal(enough[0], full[0])
    # ... and capped with one fewer: records agree up to the last event, then are held
    short = StochasticLotkaVolterra(max_events=K // 2).simulate_seeds(TRUE_LOG_THETA, seeds)
    assert short[1][0] and short[2][0] == K // 2
    same = np.all(short[0][0] == full[0][0], axis=1)
    first_diff = int(np.argmin(same))
    assert 0 < first_diff < model.n_records
    np.testing.assert_array_equal(short[0][0, first_diff:],
                                  np.broadcast_to(short[0][0, -1], (151 - first_diff, 2)))
    one_less = StochasticLotkaVolterra(max_events=K - 1).simulate_seeds(TRUE_LOG_THETA, seeds)
    assert one_less[1][0] and one_less[2][0] == K - 1


def test_ssa_extinction_is_absorbing():
    model = StochasticLotkaVolterra(x0=0, y0=0)
    traj, capped, n_events = model.simulate(TRUE_LOG_THETA, 0, n=2)
    assert not capped.any() and np.all(n_events == 0) and np.all(traj == 0)


def test_ssa_bad_input():
    with pytest.raises(ValueError, match="record_dt"):
        StochasticLotkaVolterra(record_dt=0.0)
    with pytest.raises(ValueError, match="record_dt"):
        StochasticLotkaVolterra(record_dt=-0.2)
    with pytest.raises(ValueError, match="t_end"):
        StochasticLotkaVolterra(t_end=-1.0)
    with pytest.raises(ValueError, match="t_end"):
        StochasticLotkaVolterra(t_end=1.0, record_dt=0.3)
    with pytest.raises(ValueError, match="x0"):
        StochasticLotkaVolterra(x0=-1)
    with pytest.raises(ValueError, match="y0"):
        StochasticLotkaVolterra(y0=-5)
    with pytest.raises(ValueError, match="max_events"):
        StochasticLotkaVolterra(max_events=0)
    model = StochasticLotkaVolterra()
    for bad in (np.zeros(3), np.zeros((2, 5)), np.zeros((2, 2, 4))):
        with pytest.raises(ValueError, match="log_theta"):
            model.simulate(bad, 0)
    for bad in ([np.nan, 0.0, 0.0, 0.0], [np.inf, 0.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match="log_theta"):
            model.simulate(bad, 0)
    with pytest.raises(ValueError, match="n must equal"):
        model.simulate(np.zeros((3, 4)), 0, n=2)
    with pytest.raises(ValueError, match="rng"):
        model.simulate(TRUE_LOG_THETA, -1)
    with pytest.raises(ValueError, match="seeds"):
        model.simulate_seeds(TRUE_LOG_THETA, np.array([-3]))
    with pytest.raises(ValueError, match="seeds"):
        model.simulate_seeds(np.zeros((2, 4)), np.array([1, 2, 3]))


# --------------------------------------------------------------------------- statistics


def _direct_stats(x, y):
    """The 9 statistics written out loop by loop (SNL convention)."""
    T = len(x)
    out = [np.mean(x), np.mean(y), np.log(np.var(x, ddof=1) + 1), np.log(np.var(y, ddof=1) + 1)]
    xs = (x - x.mean()) / x.std(ddof=1)
    ys = (y - y.mean()) / y.std(ddof=1)
    for s in (xs, ys):
        for lag in (1, 2):
            out.append(sum(s[j] * s[j + lag] for j in range(T - lag)) / (T - 1))
    out.append(sum(xs[j] * ys[j] for j in range(T)) / (T - 1))
    return np.array(out)


def test_summary_statistics_of_sinusoids_are_analytic():
    T = 151
    w = 2 * np.pi / 15  # 10 whole periods in records 0..149, plus one record
    j = np.arange(T)
    s, c = np.sin(w * j), np.cos(w * j)
    ac1 = np.cos(w)
    ac2 = (149 * np.cos(2 * w) + 1) / 150
    anti = np.stack([100 + 30 * s, 50 - 20 * s], axis=-1)  # perfectly anti-correlated
    quad = np.stack([100 + 30 * s, 50 + 20 * c], axis=-1)  # in quadrature
    stats = summary_statistics(np.stack([anti, quad]))
    assert stats.shape == (2, 9) and np.all(np.isfinite(stats))
    expected_anti = [100, 50, np.log(450 + 1), np.log(200 + 1), ac1, ac2, ac1, ac2, -1.0]
    np.testing.assert_allclose(stats[0], expected_anti, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats[1, [0, 2, 4, 5]], [100, np.log(450 + 1), ac1, ac2],
                               rtol=1e-12)
    np.testing.assert_allclose(stats[1, 1], 50 + 20 / T, rtol=1e-12)
    np.testing.assert_allclose(stats[1, 8], 0.0, atol=1e-12)
    for traj, row in zip((anti, quad), stats, strict=True):
        np.testing.assert_allclose(row, _direct_stats(traj[:, 0], traj[:, 1]),
                                   rtol=1e-10, atol=1e-12)
    # one trajectory (T, 2) in, one row out
    np.testing.assert_array_equal(summary_statistics(anti), stats[:1])


def test_summary_statistics_of_simulations_match_direct_computation():
    traj, capped, _ = StochasticLotkaVolterra().simulate(TRUE_LOG_THETA, 8, n=5)
    stats = summary_statistics(traj)
    assert stats.shape == (5, 9) and np.all(np.isfinite(stats))
    for i in range(5):
        np.testing.assert_allclose(stats[i], _direct_stats(traj[i, :, 0], traj[i, :, 1]),
                                   rtol=1e-10, atol=1e-12)
    # a constant (extinct) series: zero log-variance and zero correlations, still finite
    const = summary_statistics(np.stack([np.zeros(151), np.arange(151.0)], axis=-1))
    np.testing.assert_array_equal(const[0, [0, 2, 4, 5, 8]], 0.0)
    with pytest.raises(ValueError, match="traj"):
        summary_statistics(np.zeros((5, 151, 3)))
    with pytest.raises(ValueError, match="traj"):
        summary_statistics(np.full((151, 2), np.nan))
