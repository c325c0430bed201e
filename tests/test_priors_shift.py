"""Shift-equivariant networks (arch ``shift2d``): exact shifts, the symmetry centre, the
PV choice among the symmetric candidates, and equivariance of the VAE built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentda.dynamics.shallow_water import ShallowWater2D
from latentda.priors.nets import check_arch
from latentda.priors.shift import fourier_shift, symmetry_centre
from latentda.priors.vae import VAEPrior

SIGN = [1.0, -1.0, -1.0]
STAGGER = [[0.0, 0.0], [-0.5, 0.0], [0.0, -0.5]]


def _bump(model: ShallowWater2D, x0: float, y0: float, amp: float, width: float
          ) -> np.ndarray:
    """A periodic Gaussian bump at rest centred at (x0, y0) metres."""
    x = (np.arange(model.nx) + 0.5) * model.dx
    y = (np.arange(model.ny) + 0.5) * model.dy

    def g(c, p, L):
        d = (c - p + 0.5 * L) % L - 0.5 * L
        return sum(np.exp(-((d + i * L) ** 2) / (2 * width**2)) for i in (-1, 0, 1))

    eta = amp * g(y, y0, model.Ly)[:, None] * g(x, x0, model.Lx)[None, :]
    zero = np.zeros_like(eta)
    return model.pack(model.H + eta, zero, zero)[0]


@pytest.fixture(scope="module")
def sw_runs():
    """Two bumps released at fractional positions, at 0, 4 and 10 hours (after the wave
    ring has wrapped around the periodic domain)."""
    model = ShallowWater2D(nx=32, ny=32)
    centres = [(0.23e6, 0.71e6), (0.88e6, 0.06e6)]
    X0 = np.stack([_bump(model, x, y, a, w) for (x, y), a, w
                   in zip(centres, (1.5, 0.7), (70e3, 90e3), strict=True)])
    states, times = [X0], [0.0]
    steps_per_hour = 3600.0 / model.dt
    X = X0
    for hours in (4, 10):
        X = model.step(X, int(round((hours - times[-1]) * steps_per_hour)))
        states.append(X)
        times.append(float(hours))
    return model, centres, states


def test_fourier_shift_integer_is_roll_and_fractional_is_invertible():
    rng = np.random.default_rng(0)
    u = torch.tensor(rng.normal(size=(2, 3, 16, 12)))
    f64 = torch.float64
    d = torch.tensor([3.0, -5.0], dtype=f64), torch.tensor([-2.0, 7.0], dtype=f64)
    out = fourier_shift(u, *d)
    for b in range(2):
        ref = torch.roll(u[b], shifts=(int(d[1][b]), int(d[0][b])), dims=(-2, -1))
        torch.testing.assert_close(out[b], ref, atol=1e-12, rtol=0)
    # a band-limited field moves exactly by a fractional shift
    x = torch.arange(12, dtype=torch.float64)
    y = torch.arange(16, dtype=torch.float64)
    f = torch.cos(2 * math.pi * 2 * x / 12)[None, :] * torch.sin(2 * math.pi * y / 16)[:, None]
    sx, sy = 0.37, -1.6
    moved = fourier_shift(f[None, None], torch.tensor([sx], dtype=torch.float64),
                           torch.tensor([sy], dtype=torch.float64))[0, 0]
    exact = (torch.cos(2 * math.pi * 2 * (x - sx) / 12)[None, :]
             * torch.sin(2 * math.pi * (y - sy) / 16)[:, None])
    torch.testing.assert_close(moved, exact, atol=1e-12, rtol=0)


def test_symmetry_centre_of_released_bumps(sw_runs):
    """``2p`` is recovered to 1e-4 cells at every time, also after the waves wrapped."""
    model, centres, states = sw_runs
    for X in states:
        u = torch.tensor(X.reshape(len(X), 3, model.ny, model.nx).copy())
        u[:, 0] -= model.H
        sx, sy = symmetry_centre(u, SIGN, STAGGER)
        for b, (x0, y0) in enumerate(centres):
            px, py = x0 / model.dx - 0.5, y0 / model.dy - 0.5   # cell-centre index units
            ex = (float(sx[b]) - 2 * px + model.nx / 2) % model.nx - model.nx / 2
            ey = (float(sy[b]) - 2 * py + model.ny / 2) % model.ny - model.ny / 2
            assert abs(ex) < 1e-4 and abs(ey) < 1e-4, (ex, ey)


def _shift_vae(model: ShallowWater2D, X: np.ndarray, pv: bool = True,
               **content: object) -> VAEPrior:
    arch = {"kind": "shift2d", "ny": model.ny, "nx": model.nx, "fields": 3,
            "channels": [4, 8], "kernel": 3, "linear_path": True, **content}
    if pv:
        arch["pv"] = {"f0": model.f0, "H": model.H, "dx": model.dx, "dy": model.dy}
    torch.manual_seed(0)
    p = VAEPrior(model.state_dim, 7, arch, dtype="float64")
    F = X.reshape(len(X), 3, -1)
    shift = np.repeat(F.mean(axis=(0, 2)), model.nx * model.ny)
    scale = np.repeat(F.std(axis=(0, 2)) + 1e-3, model.nx * model.ny)
    p.set_normalization(shift, scale)
    return p


def test_pv_picks_the_release_point_among_the_symmetric_candidates(sw_runs):
    """The encoder's position is the release point (not one of the three other centres of
    symmetry), to 1e-4 cells, before and after the gravity waves wrapped around."""
    model, centres, states = sw_runs
    X = np.concatenate(states)
    p = _shift_vae(model, X)
    Z = p.encode(X)
    for i, z in enumerate(Z):
        x0, y0 = centres[i % len(centres)]
        px = math.atan2(z[1], z[0]) / (2 * math.pi) * model.nx
        py = math.atan2(z[3], z[2]) / (2 * math.pi) * model.ny
        ex = (px - (x0 / model.dx - 0.5) + model.nx / 2) % model.nx - model.nx / 2
        ey = (py - (y0 / model.dy - 0.5) + model.ny / 2) % model.ny - model.ny / 2
        assert abs(ex) < 1e-4 and abs(ey) < 1e-4, (i, ex, ey)
        assert math.hypot(z[0], z[1]) == pytest.approx(math.sqrt(math.pi / 2))


def test_shift2d_vae_is_translation_equivariant(sw_runs):
    """Rolling a state by whole cells moves the position code by that many cells and leaves
    the content code unchanged; decoding commutes with the same roll."""
    model, _, states = sw_runs
    X = states[1]
    p = _shift_vae(model, np.concatenate(states))
    F = X.reshape(len(X), 3, model.ny, model.nx)
    rolled = np.roll(F, shift=(5, -9), axis=(-2, -1)).reshape(len(X), -1)
    Z, Zr = p.encode(X), p.encode(rolled)
    np.testing.assert_allclose(Zr[:, 4:], Z[:, 4:], atol=1e-8)
    ang = lambda z, i: np.arctan2(z[:, i + 1], z[:, i])  # noqa: E731
    dpx = (ang(Zr, 0) - ang(Z, 0)) / (2 * np.pi) * model.nx
    dpy = (ang(Zr, 2) - ang(Z, 2)) / (2 * np.pi) * model.ny
    np.testing.assert_allclose((dpx + model.nx / 2) % model.nx - model.nx / 2, -9, atol=1e-6)
    np.testing.assert_allclose((dpy + model.ny / 2) % model.ny - model.ny / 2, 5, atol=1e-6)
    G, Gr = p.decode(Z), p.decode(Zr)
    G_rolled = np.roll(G.reshape(F.shape), shift=(5, -9), axis=(-2, -1)).reshape(len(X), -1)
    np.testing.assert_allclose(Gr, G_rolled, atol=1e-8)


def test_hard_em_choice_without_pv_is_a_centre_of_symmetry(sw_runs):
    """Without ``arch.pv`` the chosen centre is still one of the four symmetry centres."""
    model, centres, states = sw_runs
    p = _shift_vae(model, np.concatenate(states), pv=False)
    Z = p.encode(states[2])
    for z, (x0, y0) in zip(Z, centres, strict=True):
        px = math.atan2(z[1], z[0]) / (2 * math.pi) * model.nx
        py = math.atan2(z[3], z[2]) / (2 * math.pi) * model.ny
        ex = (px - (x0 / model.dx - 0.5)) % (model.nx / 2)
        ey = (py - (y0 / model.dy - 0.5)) % (model.ny / 2)
        assert min(ex, model.nx / 2 - ex) < 1e-4 and min(ey, model.ny / 2 - ey) < 1e-4


@pytest.mark.parametrize("pv", [True, False])
def test_centred_fields_are_the_chosen_translation(sw_runs, pv):
    """The encoder centres each state once and rolls it to the other three candidates; the
    fields it passes on equal a direct Fourier translation to the chosen centre, and
    they stay differentiable with respect to the input: a translation keeps every field's
    sum, so the gradient of the centred fields' sum is 1 for every input value (the
    centre's own derivative drops out)."""
    model, _, states = sw_runs
    X = np.concatenate(states)
    p = _shift_vae(model, X, pv=pv)
    enc = p.encoder
    u = p.normalize(torch.tensor(X)).view(-1, 3, model.ny, model.nx)
    px, py, c = enc.centre_and_centred(u)
    direct = fourier_shift(u, model.nx / 2 - px, model.ny / 2 - py)
    torch.testing.assert_close(c, direct, atol=1e-10, rtol=0)
    assert not torch.allclose(c, u)   # the states were not centred already
    ug = u.clone().requires_grad_(True)
    _, _, cg = enc.centre_and_centred(ug)
    cg.sum().backward()
    torch.testing.assert_close(ug.grad, torch.ones_like(ug), atol=1e-8, rtol=0)


def test_basis_content_reconstructs_the_states_it_was_fitted_to(sw_runs, tmp_path):
    """``content: basis``: with as many modes as training states, centring, projection on
    the fitted basis and placement back reproduce every state to round-off (so centre,
    basis and shift agree); the basis rows are orthonormal, and a save/load round trip
    gives identical outputs with the basis stored once."""
    from latentda.priors.prior_base import load, save

    model, _, states = sw_runs
    X = np.concatenate(states)
    p = _shift_vae(model, X, content="basis", modes=len(X), hidden=[8])
    assert p.initialize_from_data(X) < 1e-12
    B = p.decoder.content.basis
    np.testing.assert_allclose((B.basis @ B.basis.T).numpy(), np.eye(len(X)), atol=1e-10)
    F, ny, nx = 3, model.ny, model.nx
    u = p.normalize(torch.tensor(X))
    px, py = p.encoder.centre(u.view(-1, F, ny, nx))
    c = fourier_shift(u.view(-1, F, ny, nx), nx / 2 - px, ny / 2 - py).flatten(1)
    back = p.denormalize(p.decoder.place(B.fields(B.coefficients(c)).view(-1, F, ny, nx),
                                         px, py)).numpy()
    np.testing.assert_allclose(back, X, rtol=0, atol=1e-9 * np.abs(X).max())
    # a basis fitted to other states does not reproduce these: the check can fail
    q = _shift_vae(model, X, content="basis", modes=2, hidden=[8])
    q.initialize_from_data(X[:2])
    c2 = q.decoder.content.basis
    assert float(((c2.fields(c2.coefficients(c)) - c) ** 2).mean()) > 1e-4
    with pytest.raises(ValueError, match=r"arch\.modes"):   # more modes than states
        _shift_vae(model, X, content="basis", modes=len(X) + 1,
                   hidden=[8]).initialize_from_data(X)
    keys = [k for k in p.state_dict() if k.endswith("basis.basis")]
    assert keys == ["decoder.content.basis.basis"]
    path = save(p, tmp_path / "b.pt")
    r = load(path, device="cpu")
    Z = p.encode(X)
    np.testing.assert_array_equal(r.encode(X), Z)
    np.testing.assert_array_equal(r.decode(Z), p.decode(Z))


@pytest.mark.parametrize("arch, field", [
    ({"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3, "content": "pca"}, "arch.content"),
    ({"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3, "content": "basis"}, "arch.pv"),
    ({"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3, "content": "basis", "modes": 0,
      "pv": {"f0": 1e-4, "H": 1.0, "dx": 1.0, "dy": 1.0}}, "arch.modes"),
    ({"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3, "sign": [1, -1]}, "arch.sign"),
    ({"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3, "stagger": [[0, 0]]}, "arch.stagger"),
    ({"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3, "pv": {"f0": 1e-4}}, "arch.pv"),
    ({"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3,
      "pv": {"f0": 0.0, "H": 1.0, "dx": 1.0, "dy": 1.0}}, "arch.pv"),
    ({"kind": "shift2d", "nx": 16, "fields": 3}, "arch.ny"),
])
def test_bad_shift_arch_names_the_field(arch, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_arch(arch, 3 * 16 * 16)


def test_shift2d_needs_room_for_the_position():
    with pytest.raises(ValueError, match="latent_dim"):
        VAEPrior(3 * 16 * 16, 4, {"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3,
                                  "channels": [4]})


def test_wgan_critic_of_a_shift2d_generator_is_a_plain_conv2d():
    """A critic has no position code: it gets the conv2d network of the same grid."""
    from latentda.priors.wgan import WGANPrior

    arch = {"kind": "shift2d", "ny": 16, "nx": 16, "fields": 3, "channels": [4]}
    p = WGANPrior(3 * 16 * 16, 6, arch=arch)
    assert p.critic_arch["kind"] == "conv2d" and "sign" not in p.critic_arch
    x = torch.randn(2, 3 * 16 * 16)
    assert p.critic(x.numpy()).shape == (2,)
    basis = arch | {"content": "basis", "pv": {"f0": 1e-4, "H": 1.0, "dx": 1.0, "dy": 1.0}}
    with pytest.raises(ValueError, match=r"arch\.content 'basis' is for VAE"):
        WGANPrior(3 * 16 * 16, 6, arch=basis)
