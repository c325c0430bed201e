"""Window reanalysis: the latent 4D-Var of the last observation times (latentda.window)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentda.cycle import Cycle
from latentda.dynamics.base import Dynamics
from latentda.filters import ETKF, Observation
from latentda.observations import Subset
from latentda.priors import LinearGaussianPrior
from latentda.spaces import LatentSpace, StateSpace
from latentda.window import WINDOW_SCALARS, WindowReanalysis


class LinearModel(Dynamics):
    """x_{t+1} = A x_t: a linear model, so the window cost is exactly quadratic."""

    name = "linear"

    def __init__(self, A: np.ndarray) -> None:
        self.A = np.asarray(A, dtype=np.float64)

    @property
    def state_dim(self) -> int:
        return self.A.shape[0]

    @property
    def dt(self) -> float:
        return 1.0

    def _advance(self, E: np.ndarray, nsteps: int) -> np.ndarray:
        return E @ np.linalg.matrix_power(self.A, nsteps).T

    def state_coords(self) -> dict:
        return {}

    def random_state(self, N: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((N, self.state_dim))


def _setup(n: int = 5, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    prior = LinearGaussianPrior(n, k, 0.0, "float64")
    with torch.no_grad():
        prior.W.copy_(torch.as_tensor(rng.normal(size=(n, k))))
        prior.b.copy_(torch.as_tensor(rng.normal(size=n)))
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    model = LinearModel(0.95 * Q)
    return rng, prior, model, LatentSpace(prior)


def _obs(rng: np.random.Generator, H: np.ndarray, r: float) -> Observation:
    return Observation(y=rng.normal(size=H.shape[0]), R=r * np.eye(H.shape[0]),
                       h=lambda X: X @ H.T)


def _window_linear_solution(prior, model, obs_list, steps, zbar, S):
    """Exact minimiser of 1/2|w|^2 + 1/2 sum |R^-1/2 (y_l - H A^l (W (zbar + S w) + b))|^2."""
    W, b = prior.W.numpy(), prior.b.numpy()
    rows, rhs = [], []
    for o, s in zip(obs_list, steps, strict=True):
        M = o.h((np.linalg.matrix_power(model.A, s) @ W).T).T   # H A^s W, (m, k)
        c = o.h((np.linalg.matrix_power(model.A, s) @ (W @ zbar + b))[None, :])[0]
        rw = 1.0 / np.sqrt(np.diag(o.R))
        rows.append(rw[:, None] * (M @ S))
        rhs.append(rw * (o.y - c))
    G, d = np.vstack(rows), np.hstack(rhs)
    w = np.linalg.solve(np.eye(S.shape[1]) + G.T @ G, G.T @ d)
    return zbar + S @ w


@pytest.mark.parametrize("background", ["prior", "forecast"])
def test_window_equals_the_linear_gaussian_4dvar_solution(background):
    """Linear model, linear prior, linear H: the window state is the exact 4D-Var optimum."""
    rng, prior, model, space = _setup()
    n, k, N = 5, 3, 8
    H = rng.normal(size=(2, n))
    win = WindowReanalysis(model, space, 3, background=background,
                           beta=0.3 if background == "forecast" else 0.0,
                           static_var=0.5 if background == "forecast" else None,
                           iterations=5, tol=1e-12)
    times = [0.0, 2.0, 3.0, 5.0]
    obs_list, forecasts = [], []
    for i, t in enumerate(times):
        o = _obs(rng, H, 0.2 + 0.1 * i)
        Zf = rng.normal(size=(N, k)) + 0.3
        Za = rng.normal(size=(N, k))
        Ea = space.decode(Za) + 0.01 * rng.normal(size=(N, n))
        E, Z, info = win(t, o, Zf, Za, Ea)
        obs_list.append(o)
        forecasts.append(Zf)
        first = max(0, i - 2)                       # the window holds the last 3 times
        steps = [int(times[j] - times[first]) for j in range(first, i + 1)]
        if background == "prior":
            zbar, S = np.zeros(k), np.eye(k)
        else:
            Zs = forecasts[first]
            zbar = Zs.mean(axis=0)
            S = np.hstack([np.sqrt(0.7 / (N - 1)) * (Zs - zbar).T, np.sqrt(0.3 * 0.5) * np.eye(k)])
        z = _window_linear_solution(prior, model, obs_list[first:], steps, zbar, S)
        x_end = np.linalg.matrix_power(model.A, steps[-1]) @ space.decode(z[None])[0]
        np.testing.assert_allclose(E.mean(axis=0), x_end, rtol=1e-7, atol=1e-7)
        # the members keep the filter's anomalies; their codes are the encoder's
        np.testing.assert_allclose(E - E.mean(axis=0), Ea - Ea.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(Z, space.codes(E), atol=1e-12)
        assert info["window_times"] == len(steps)
        # the misfit is the one of the optimum, per observation
        res = np.hstack([(o.y - o.h(np.linalg.matrix_power(model.A, s)
                                    @ space.decode(z[None])[0]))
                         / np.sqrt(np.diag(o.R)) for o, s in zip(obs_list[first:], steps,
                                                                   strict=True)])
        assert info["window_misfit"] == pytest.approx(res @ res / res.size, rel=1e-6)


def test_window_of_one_time_is_the_latent_map_of_that_time():
    """length 1, prior background: the analysis mean is G of the Gaussian MAP of one time."""
    rng, prior, model, space = _setup(seed=4)
    H = rng.normal(size=(4, 5))
    o = _obs(rng, H, 0.3)
    win = WindowReanalysis(model, space, 1, iterations=5, tol=1e-12)
    Za = rng.normal(size=(6, 3))
    E, _, _ = win(1.0, o, Za, Za, space.decode(Za))
    W, b = prior.W.numpy(), prior.b.numpy()
    G = H @ W / np.sqrt(0.3)
    z = np.linalg.solve(np.eye(3) + G.T @ G, G.T @ ((o.y - H @ b) / np.sqrt(0.3)))
    np.testing.assert_allclose(E.mean(axis=0), W @ z + b, rtol=1e-8, atol=1e-8)


def test_window_in_a_cycle_writes_its_diagnostics_and_uses_the_model():
    """A short cycled run: the window grows to its length and its misfit is reported."""
    rng, prior, model, space = _setup(seed=5)
    op = Subset(5, [0, 2, 4])
    win = WindowReanalysis(model, space, 2, iterations=5)
    E0 = space.decode(rng.normal(size=(8, 3)))
    cyc = Cycle(model, ETKF(), op, E0, space=space, window=win)
    truth = space.decode(rng.normal(size=(1, 3)))[0]
    times = []
    for t in (1.0, 2.0, 3.0):
        cyc.forecast(t)
        truth = model.step(truth, 1)[0]
        y = op(truth[None])[0] + 0.1 * rng.normal(size=3)
        rec = cyc.analyse(y, np.full(3, 0.01), truth)
        times.append(rec.extra["window"]["window_times"])
        out = cyc.output_values(rec)
        assert set(WINDOW_SCALARS) <= set(out)
        assert np.isfinite(out["window_misfit"])
    assert times == [1.0, 2.0, 2.0]


def test_window_rejects_bad_input():
    rng, prior, model, space = _setup()
    with pytest.raises(ValueError, match="manifold mode"):
        WindowReanalysis(model, StateSpace(5), 2)
    with pytest.raises(ValueError, match="length"):
        WindowReanalysis(model, space, 0)
    with pytest.raises(ValueError, match="background must be one of"):
        WindowReanalysis(model, space, 2, background="climatology")
    with pytest.raises(ValueError, match="background='forecast'"):
        WindowReanalysis(model, space, 2, beta=0.2, static_var=1.0)
    with pytest.raises(ValueError, match="static_var"):
        WindowReanalysis(model, space, 2, background="forecast", beta=0.2)
    win = WindowReanalysis(model, space, 2)
    Za = rng.normal(size=(4, 3))
    o = _obs(rng, rng.normal(size=(2, 5)), 0.5)
    win(2.0, o, Za, Za, space.decode(Za))
    with pytest.raises(ValueError, match="window times must increase"):
        win(2.0, o, Za, Za, space.decode(Za))
    with pytest.raises(ValueError, match="WindowReanalysis built on this run's latent"):
        Cycle(model, ETKF(), Subset(5, [0]), space.decode(Za), window=win)


def test_central_differences_are_exact_for_quadratics_and_beat_forward_ones():
    """batch_jacobian('central'): second-order accurate (exact for a quadratic map)."""
    from latentda.autodiff import batch_jacobian

    rng = np.random.default_rng(9)
    A = torch.as_tensor(rng.normal(size=(4, 3)))
    Q = torch.as_tensor(rng.normal(size=(4, 3, 3)))

    def F(z: torch.Tensor) -> torch.Tensor:      # (B, 3) -> (B, 4), quadratic
        return z @ A.T + torch.einsum("bi,mij,bj->bm", z, Q, z)

    z = torch.as_tensor(rng.normal(size=(2, 3)))
    exact = A[None] + torch.einsum("mij,bj->bmi", Q + Q.transpose(1, 2), z)
    central = batch_jacobian(F, z, "central", torch.float32)   # step about 5e-3
    forward = batch_jacobian(F, z, "fd", torch.float32)         # step about 3e-4
    assert central.shape == (2, 4, 3)
    torch.testing.assert_close(central, exact, rtol=0, atol=1e-12)
    assert float((forward - exact).abs().max()) > 1e-6
    with pytest.raises(ValueError, match="'central'"):
        batch_jacobian(F, z, "backward")
