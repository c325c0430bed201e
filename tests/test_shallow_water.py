"""Tests of the rotating shallow-water model (C-grid, Sadourny energy scheme, RK4)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from latentda.dynamics.shallow_water import ShallowWater2D

REF_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "sw_numpy_reference.py"


def _load_reference():
    spec = importlib.util.spec_from_file_location("sw_numpy_reference", REF_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rest(sw: ShallowWater2D, N: int = 1) -> np.ndarray:
    z = np.zeros((N, sw.ny, sw.nx))
    return sw.pack(sw.H + z, z, z)


def _rel_change(E: np.ndarray, E0: np.ndarray, rest: np.ndarray) -> float:
    return float(np.linalg.norm(E - E0) / np.linalg.norm(E0 - rest))


# --------------------------------------------------------------------------- conservation
@pytest.fixture(scope="module")
def inviscid_run_64():
    """Default 64x64 grid without any dissipation, one vortex state, 2,000 steps."""
    sw = ShallowWater2D(nu4=0.0)
    E0 = sw.random_state(1, np.random.default_rng(11))
    return sw, E0, sw.step(E0, 2000)


def test_mass_conserved_to_roundoff_64x64_2000_steps(inviscid_run_64):
    sw, E0, E = inviscid_run_64
    m0 = sw.total_mass(E0)
    assert np.allclose(m0, sw.H * sw.Lx * sw.Ly, rtol=1e-14)
    assert np.all(np.abs(sw.total_mass(E) - m0) <= 1e-12 * m0)


def test_energy_drift_small_64x64_2000_inviscid_steps(inviscid_run_64):
    sw, E0, E = inviscid_run_64
    e0 = sw.total_energy(E0)
    assert np.all(np.abs(sw.total_energy(E) - e0) <= 1e-3 * e0)
    # the total is dominated by the resting g h^2/2; the active part drifts little too
    a0 = sw.available_energy(E0)
    assert np.all(a0 > 0)
    assert np.all(np.abs(sw.available_energy(E) - a0) <= 1e-3 * a0)
    assert not np.allclose(E, E0, atol=1e-3)  # the flow did evolve


def test_mass_conserved_with_dissipation_beta_and_rectangular_cells():
    sw = ShallowWater2D(nx=24, ny=16, Lx=1.5e6, Ly=8.0e5, beta=1.0e-11, nu=50.0, drag=1e-6,
                        H=50.0)
    E0 = sw.random_vortices(2, np.random.default_rng(1), amplitude=1.0)
    E = sw.step(E0, 2000)
    m0 = sw.total_mass(E0)
    assert np.all(np.isfinite(E))
    assert np.all(np.abs(sw.total_mass(E) - m0) <= 1e-12 * m0)


def _energy_rate(sw: ShallowWater2D, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dE/dt by the chain rule from the tendency, and the scale of its terms."""
    h, u, v = sw.fields(E)
    dh, du, dv = sw.fields(sw.tendency(E))
    U = 0.5 * (h + np.roll(h, 1, axis=2)) * u
    V = 0.5 * (h + np.roll(h, 1, axis=1)) * v
    B = sw.g * h + 0.25 * (u * u + np.roll(u * u, -1, axis=2) + v * v + np.roll(v * v, -1, 1))
    terms = (B * dh, U * du, V * dv)
    rate = sum(t.sum(axis=(1, 2)) for t in terms) * sw.dx * sw.dy
    scale = sum(np.abs(t).sum(axis=(1, 2)) for t in terms) * sw.dx * sw.dy
    return rate, scale


def test_semidiscrete_scheme_conserves_mass_and_energy_exactly():
    sw = ShallowWater2D(nx=20, ny=12, Lx=1.2e6, Ly=9.0e5, f0=8e-5, beta=2e-11, nu4=0.0)
    E = sw.random_vortices(3, np.random.default_rng(2), amplitude=5.0, n_vortices=6)
    dh, _, _ = sw.fields(sw.tendency(E))
    assert np.all(np.abs(dh.sum(axis=(1, 2))) <= 1e-13 * np.abs(dh).sum(axis=(1, 2)))
    rate, scale = _energy_rate(sw, E)
    assert np.all(scale > 0)
    assert np.all(np.abs(rate) <= 1e-13 * scale)
    # linear drag removes exactly twice the kinetic energy per unit drag coefficient
    drag = 1e-5
    swd = ShallowWater2D(nx=20, ny=12, Lx=1.2e6, Ly=9.0e5, f0=8e-5, beta=2e-11, nu4=0.0,
                         drag=drag)
    rate_d, scale_d = _energy_rate(swd, E)
    ke = sw.total_energy(E) - 0.5 * sw.g * (sw.fields(E)[0] ** 2).sum(axis=(1, 2)) * sw.dx * sw.dy
    assert np.allclose(rate_d, -2.0 * drag * ke, rtol=1e-8, atol=1e-13 * scale_d.max())


def test_energy_error_converges_at_runge_kutta_order():
    """Energy is conserved in space, so its drift is pure time error: >= 4th order in dt."""
    drift = []
    T = 200 * ShallowWater2D(nx=32, ny=32, cfl=0.8).dt
    for cfl in (0.4, 0.2):
        sw = ShallowWater2D(nx=32, ny=32, nu4=0.0, cfl=cfl)
        E0 = sw.random_vortices(1, np.random.default_rng(3), amplitude=10.0)
        E = sw.step(E0, sw.nsteps_between(0.0, T))
        a0 = sw.available_energy(E0)
        drift.append(float(((sw.available_energy(E) - a0) / a0)[0]))
    assert drift[0] < 0 and drift[1] < 0  # RK4 damps oscillations
    ratio = drift[0] / drift[1]
    assert 2**3.5 <= ratio <= 2**5.5, ratio


# --------------------------------------------------------------------------- waves
def _measure_frequency(sw: ShallowWater2D, mode: int, axis: str) -> tuple[float, float, float]:
    """Frequency of a standing gravity wave from zero crossings, with the two predictions."""
    x = (np.arange(sw.nx) + 0.5) * sw.dx
    y = (np.arange(sw.ny) + 0.5) * sw.dy
    if axis == "x":
        k, d = 2 * np.pi * mode / sw.Lx, sw.dx
        pattern = np.broadcast_to(np.cos(k * x)[None, :], (sw.ny, sw.nx))
    else:
        k, d = 2 * np.pi * mode / sw.Ly, sw.dy
        pattern = np.broadcast_to(np.cos(k * y)[:, None], (sw.ny, sw.nx))
    z = np.zeros((sw.ny, sw.nx))
    E0 = sw.pack(sw.H + 1e-3 * pattern, z, z)
    c = np.sqrt(sw.g * sw.H)
    w_cont = np.sqrt(sw.f0**2 + (c * k) ** 2)
    k_disc = 2.0 / d * np.sin(k * d / 2)
    w_disc = np.sqrt((sw.f0 * np.cos(k * d / 2)) ** 2 + (c * k_disc) ** 2)
    nsteps = int(np.ceil(2.6 * 2 * np.pi / w_cont / sw.dt))
    traj = sw.trajectory(E0, nsteps)
    h = traj[:, 0, : sw.nx * sw.ny].reshape(-1, sw.ny, sw.nx) - sw.H
    A = (h * pattern).sum(axis=(1, 2)) / (pattern * pattern).sum()
    t = np.arange(A.size) * sw.dt
    i = np.nonzero(np.sign(A[:-1]) * np.sign(A[1:]) < 0)[0]
    tz = t[i] - A[i] * sw.dt / (A[i + 1] - A[i])
    assert tz.size >= 4
    w = np.pi * (tz.size - 1) / (tz[-1] - tz[0])
    return w, w_cont, w_disc


@pytest.mark.parametrize("f0", [0.0, 1.0e-4])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_gravity_waves_travel_at_sqrt_gH(axis, f0):
    kw = {"nx": 64, "ny": 4, "Ly": 6.25e4} if axis == "x" else {"nx": 4, "ny": 64, "Lx": 6.25e4}
    sw = ShallowWater2D(f0=f0, nu4=0.0, **kw)
    # long wave: phase speed sqrt(gH) (with f0: the Poincare frequency) within 2 %
    w, w_cont, w_disc = _measure_frequency(sw, 1, axis)
    assert abs(w / w_cont - 1) < 0.02
    assert abs(w / w_disc - 1) < 1e-4
    # short wave (8 wavelengths on 64 cells): the C-grid dispersion relation is reproduced
    w, w_cont, w_disc = _measure_frequency(sw, 8, axis)
    assert abs(w / w_disc - 1) < 1e-3
    assert abs(w / w_cont - 1) > 0.02  # the discrete dispersion is visible and predicted


# --------------------------------------------------------------------------- balance
def _x_uniform_jet(sw: ShallowWater2D, a: float) -> tuple[np.ndarray, np.ndarray]:
    """Sinusoidal jet u(y) in exact linear discrete balance with eta = a sin(k y)."""
    k = 2 * np.pi / sw.Ly
    y = (np.arange(sw.ny) + 0.5) * sw.dy
    amp_u = -(sw.g * a / sw.f0) * (2 / sw.dy) * np.tan(k * sw.dy / 2)
    one = np.ones((sw.ny, sw.nx))
    h = sw.H + a * np.sin(k * y)[:, None] * one
    u = amp_u * np.cos(k * y)[:, None] * one
    return sw.pack(h, u, 0 * one), sw.pack(h, 0 * one, 0 * one)


def test_geostrophic_jet_stays_steady():
    sw = ShallowWater2D(nx=4, ny=64, Lx=6.25e4, nu4=0.0)
    balanced, unbalanced = _x_uniform_jet(sw, 0.01)
    rest = _rest(sw)
    out = sw.step(np.concatenate([balanced, unbalanced]), 2000)  # ~5.8 days
    assert _rel_change(out[:1], balanced, rest) < 1e-6
    assert _rel_change(out[1:], unbalanced, rest) > 0.5  # geostrophic adjustment


def test_geostrophic_state_is_linearly_steady_and_vortex_stays_near_steady():
    sw = ShallowWater2D(nx=32, ny=32, nu4=0.0)
    X, Y = np.meshgrid(np.arange(sw.nx) * sw.dx, np.arange(sw.ny) * sw.dy)
    shape = np.exp(-((X - 5e5) ** 2 + (Y - 5e5) ** 2) / (2 * 1e5**2))
    ratios, changes = [], []
    for a in (0.01, 0.1):
        h, u, v = sw.geostrophic_state(a * shape)
        E = sw.pack(h, u, v)
        Eu = sw.pack(h, 0 * u, 0 * v)
        ratios.append(np.abs(sw.tendency(E)).max() / np.abs(sw.tendency(Eu)).max())
        out = sw.step(np.concatenate([E, Eu]), 1000)
        changes.append((_rel_change(out[:1], E, _rest(sw)), _rel_change(out[1:], Eu, _rest(sw))))
    # the residual tendency is nonlinear: it scales with the amplitude (Rossby number)
    assert ratios[0] < 1e-3
    assert 5 < ratios[1] / ratios[0] < 20
    assert changes[0][0] < 2e-3 and changes[0][1] > 0.5
    assert 5 < changes[1][0] / changes[0][0] < 20


def test_potential_vorticity_at_rest_and_circulation():
    sw = ShallowWater2D(nx=16, ny=12, beta=1e-11)
    q = sw.potential_vorticity(_rest(sw))
    f = sw.f0 + sw.beta * (np.arange(sw.ny) * sw.dy - sw.Ly / 2)
    assert np.allclose(q, np.broadcast_to(f[None, :, None] / sw.H, q.shape), rtol=1e-14)
    E = sw.random_vortices(2, np.random.default_rng(4), amplitude=4.0)
    h, _, _ = sw.fields(E)
    hx = h + np.roll(h, 1, axis=2)
    hq = 0.25 * (hx + np.roll(hx, 1, axis=1))
    circulation = (sw.potential_vorticity(E) * hq).sum(axis=(1, 2))  # sum(f + zeta)
    assert np.allclose(circulation, f.sum() * sw.nx, rtol=1e-12)


# --------------------------------------------------------------------------- initial states
def test_random_vortices_are_nondivergent_with_mean_depth_H():
    sw = ShallowWater2D(nx=32, ny=24, Ly=7.5e5)
    E = sw.random_vortices(5, np.random.default_rng(5))
    h, u, v = sw.fields(E)
    div = (np.roll(u, -1, axis=2) - u) / sw.dx + (np.roll(v, -1, axis=1) - v) / sw.dy
    scale = np.abs(u).max() / sw.dx
    assert scale > 0
    assert np.abs(div).max() <= 1e-13 * scale
    assert np.allclose(h.mean(axis=(1, 2)), sw.H, rtol=1e-14)
    assert np.all(h > 0)
    eta_max = np.abs(h - sw.H).max(axis=(1, 2))
    assert np.all(eta_max < 12 * 0.02 * sw.H) and np.all(eta_max > 0.1 * 0.02 * sw.H)
    assert np.array_equal(E, sw.random_vortices(5, np.random.default_rng(5)))
    assert not np.allclose(E[0], E[1])


def test_gaussian_bumps_at_rest_within_amplitude_range():
    sw = ShallowWater2D(nx=32, ny=32)
    E = sw.gaussian_bumps(6, np.random.default_rng(6), amplitude=(1.0, 3.0))
    h, u, v = sw.fields(E)
    assert np.all(u == 0) and np.all(v == 0)
    peak = (h - sw.H).max(axis=(1, 2))
    # the grid samples a bump of width >= 2 cells within half a cell of its centre
    assert np.all(peak <= 3.0 * (1 + 1e-12)) and np.all(peak >= 1.0 * np.exp(-0.125))
    assert np.all(h >= sw.H)
    assert np.all(sw.total_mass(E) > sw.H * sw.Lx * sw.Ly)


def test_bumps_at_places_one_bump_exactly_and_checks_shapes():
    sw = ShallowWater2D(nx=32, ny=32)
    # a bump centred on a cell centre: the peak is there, the field is symmetric about it
    i, j = 10, 20
    xc, yc = (j + 0.5) * sw.dx, (i + 0.5) * sw.dy
    E = sw.bumps_at([[1.5]], [[xc]], [[yc]], [[3 * sw.dx]])
    h, u, v = sw.fields(E)
    assert np.all(u == 0) and np.all(v == 0)
    eta = h[0] - sw.H
    assert np.unravel_index(np.argmax(eta), eta.shape) == (i, j)
    assert eta[i, j] == pytest.approx(1.5, rel=1e-12)
    assert eta[i, j + 3] == pytest.approx(eta[i, j - 3], rel=1e-12)
    assert eta[i + 2, j] == pytest.approx(eta[i - 2, j], rel=1e-12)
    # gaussian_bumps is bumps_at of gaussian_bump_parameters (same draws), whose
    # parameters lie in the documented default ranges
    a, x0, y0, w = sw.gaussian_bump_parameters(50, np.random.default_rng(3))
    assert a.shape == x0.shape == y0.shape == w.shape == (50, 1)
    assert np.all((a >= 0.005 * sw.H) & (a <= 0.02 * sw.H))
    assert np.all((w >= 0.04 * sw.Lx) & (w <= 0.08 * sw.Lx))
    assert np.all((x0 >= 0) & (x0 < sw.Lx) & (y0 >= 0) & (y0 < sw.Ly))
    assert np.array_equal(sw.bumps_at(a, x0, y0, w),
                          sw.gaussian_bumps(50, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="xc must be an"):
        sw.bumps_at([[1.0]], [1.0], [[1.0]], [[1e4]])
    with pytest.raises(ValueError, match="width must be positive"):
        sw.bumps_at([[1.0]], [[1.0]], [[1.0]], [[0.0]])


def test_fields_pack_roundtrip_and_layout():
    sw = ShallowWater2D(nx=8, ny=6, Ly=7.5e5)
    E = np.random.default_rng(7).standard_normal((3, sw.state_dim))
    h, u, v = sw.fields(E)
    assert h.shape == u.shape == v.shape == (3, 6, 8)
    assert np.array_equal(h[1].ravel(), E[1, :48]) and np.array_equal(v[2].ravel(), E[2, 96:])
    assert np.array_equal(sw.pack(h, u, v), E)
    assert sw.pack(h[0], u[0], v[0]).shape == (1, sw.state_dim)


# --------------------------------------------------------------------------- robustness
def test_climatology_stays_finite_32x32():
    sw = ShallowWater2D(nx=32, ny=32)
    rng = np.random.default_rng(8)
    E = np.concatenate([sw.sample_climatology(1, rng, family="vortices"),
                        sw.sample_climatology(1, rng, family="bumps")])
    E = sw.step(E, 2000)
    h, _, _ = sw.fields(E)
    assert np.all(np.isfinite(E)) and np.all(h > 0)


@pytest.mark.slow
def test_default_climatology_20000_steps_finite():
    sw = ShallowWater2D()
    E = sw.step(sw.climatology(2, np.random.default_rng(9)), 20000)
    h, u, _ = sw.fields(E)
    assert np.all(np.isfinite(E)) and np.all(h > 0)
    assert np.abs(u).max() < 10.0


def test_members_are_independent_bit_identical_and_nan_propagates():
    sw = ShallowWater2D(nx=16, ny=20, Ly=1.25e6, beta=5e-12, nu=10.0, drag=1e-7)
    rng = np.random.default_rng(10)
    E = np.concatenate([sw.random_vortices(2, rng), sw.gaussian_bumps(1, rng)])
    batch = sw.step(E, 50)
    for m in range(3):
        assert np.array_equal(sw.step(E[m], 50)[0], batch[m])
    bad = E.copy()
    bad[1, 5] = np.nan
    out = sw.step(bad, 50)
    assert np.array_equal(out[[0, 2]], batch[[0, 2]])
    assert np.isnan(out[1]).any()


def test_runs_at_256x256():
    sw = ShallowWater2D(nx=256, ny=256)
    E0 = sw.random_state(1, np.random.default_rng(12))
    E = sw.step(E0, 2)
    assert E.shape == (1, 3 * 256 * 256) and np.all(np.isfinite(E))
    assert not np.array_equal(E, E0)
    assert abs(sw.total_mass(E)[0] / sw.total_mass(E0)[0] - 1) <= 1e-14


def test_numba_kernel_matches_numpy_reference():
    ref = _load_reference()
    sw = ShallowWater2D(nx=24, ny=16, Ly=6.0e5, beta=1e-11, nu=100.0, drag=1e-6)
    E0 = sw.random_vortices(2, np.random.default_rng(13), amplitude=5.0)
    a = sw.step(E0, 5)
    b = ref.numpy_reference_step(sw, E0, 5)
    anomaly = np.abs(a - E0).max()
    assert anomaly > 0
    assert np.abs(a - b).max() <= 1e-10 * np.abs(a).max()
    assert np.abs(a - b).max() <= 1e-6 * anomaly


# --------------------------------------------------------------------------- metadata
def test_state_coords_locations_and_period(tmp_path):
    xr = pytest.importorskip("xarray")
    sw = ShallowWater2D(nx=8, ny=4, Lx=8.0e5, Ly=2.0e5)
    coords = sw.state_coords()
    dim, field, attrs = coords["field"]
    assert dim == "state" and field.dtype == np.int8 and field.size == sw.state_dim
    assert np.array_equal(np.bincount(field), [32, 32, 32])
    assert list(attrs["flag_values"]) == [0, 1, 2] and attrs["flag_meanings"] == "h u v"
    x, y = coords["x"][1], coords["y"][1]
    assert coords["x"][2]["units"] == "m" and coords["y"][2]["units"] == "m"
    dx, dy = sw.dx, sw.dy
    # h at centres, u on west faces, v on south faces of cell (j=1, i=2)
    k = 1 * 8 + 2
    assert (x[k], y[k]) == (2.5 * dx, 1.5 * dy)
    assert (x[32 + k], y[32 + k]) == (2.0 * dx, 1.5 * dy)
    assert (x[64 + k], y[64 + k]) == (2.5 * dx, 1.0 * dy)
    assert np.array_equal(sw.state_locations(), np.stack([x, y], axis=1))
    assert sw.domain_period == (8.0e5, 2.0e5)
    ds = xr.Dataset({"truth": (("state",), np.zeros(sw.state_dim))},
                    coords={k: (d, val, a) for k, (d, val, a) in coords.items()})
    path = tmp_path / "sw.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    back = xr.open_zarr(path, zarr_format=3, consolidated=False)
    assert back["field"].attrs["flag_meanings"] == "h u v"
    assert np.array_equal(back["x"].values, x)


def test_default_time_step_and_repr():
    sw = ShallowWater2D(nx=32, ny=16, cfl=0.7)
    assert sw.dt == pytest.approx(0.7 * min(sw.dx, sw.dy) / np.sqrt(9.81 * 100.0), rel=1e-15)
    assert sw.state_dim == 3 * 32 * 16 and sw.name == "shallow_water"
    text = repr(sw)
    assert text.startswith("ShallowWater2D(") and "nx=32" in text and "cfl=0.7" in text
    sw2 = ShallowWater2D(dt=100.0)
    assert sw2.dt == 100.0 and sw2.cfl == pytest.approx(100.0 * np.sqrt(981.0) / 15625.0)
    assert sw.spinup_steps * sw.dt >= 5 * 86400.0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cfl": 1.5}, "cfl"),
    ({"cfl": 0.0}, "cfl"),
    ({"nx": 3}, "nx"),
    ({"ny": 2}, "ny"),
    ({"nx": 16.0}, "nx"),
    ({"H": -10.0}, "H"),
    ({"H": 0.0}, "H"),
    ({"Lx": 0.0}, "Lx"),
    ({"Ly": -1.0}, "Ly"),
    ({"g": 0.0}, "g"),
    ({"nu": -1.0}, "nu"),
    ({"drag": -1e-6}, "drag"),
    ({"nu4": -1.0}, "nu4"),
    ({"nu4": 1e20}, "nu4"),
    ({"f0": float("nan")}, "f0"),
    ({"dt": 1000.0}, "dt"),
    ({"dt": -1.0}, "dt"),
])
def test_bad_parameters_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ShallowWater2D(**kwargs)


def test_bad_states_and_family_arguments_raise():
    sw = ShallowWater2D(nx=8, ny=8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="E must have shape"):
        sw.step(np.zeros((2, sw.state_dim + 1)))
    with pytest.raises(ValueError, match="E must have shape"):
        sw.fields(np.zeros((2, 3, sw.state_dim)))
    with pytest.raises(ValueError, match="nsteps"):
        sw.step(_rest(sw), -1)
    with pytest.raises(ValueError, match="h must have shape"):
        sw.pack(np.zeros((1, 8, 7)), np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="family"):
        sw.sample_climatology(1, rng, family="turbulence")
    no_rotation = ShallowWater2D(nx=8, ny=8, f0=0.0)
    with pytest.raises(ValueError, match="f0"):
        no_rotation.random_vortices(1, rng)
    h, u, v = no_rotation.fields(no_rotation.random_state(2, rng))  # falls back to bumps
    assert np.all(u == 0) and np.all(v == 0) and np.all(h >= no_rotation.H)
    with pytest.raises(ValueError, match="f0"):
        ShallowWater2D(nx=8, ny=8, f0=0.0, beta=1e-11).random_vortices(1, rng)
    with pytest.raises(ValueError, match="amplitude"):
        sw.random_vortices(1, rng, amplitude=60.0)
    with pytest.raises(ValueError, match="amplitude"):
        sw.gaussian_bumps(1, rng, amplitude=(2.0, 1.0))
    with pytest.raises(ValueError, match="width"):
        sw.gaussian_bumps(1, rng, width=(1e4, 1e6))
    with pytest.raises(ValueError, match="N"):
        sw.random_vortices(0, rng)
    with pytest.raises(ValueError, match="rng"):
        sw.random_vortices(1, "seed")
    with pytest.raises(ValueError, match="eta_corner"):
        sw.geostrophic_state(np.zeros((8, 9)))
