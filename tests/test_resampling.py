"""Resampling kernels: unbiased offspring counts, variance ordering, log-weight helpers."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.filters.resampling import SCHEMES, ess, normalize_log_weights, resample

W8 = np.array([0.31, 0.0, 0.02, 0.17, 0.125, 0.005, 0.25, 0.12])  # one zero weight


def offspring(scheme: str, w: np.ndarray, reps: int, n_out: int | None = None,
              seed: int = 0) -> np.ndarray:
    """Offspring counts of ``reps`` independent resamplings, shape (reps, N)."""
    rng = np.random.default_rng(seed)
    N = w.size
    return np.stack([np.bincount(resample(w, rng, scheme, n_out), minlength=N)
                     for _ in range(reps)])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n_out", [None, 13])
def test_each_scheme_is_unbiased(scheme: str, n_out: int | None) -> None:
    reps = 8000
    n = W8.size if n_out is None else n_out
    C = offspring(scheme, W8, reps, n_out, seed=1)
    assert (C.sum(axis=1) == n).all()
    expected = n * W8
    # the multinomial variance n w (1 - w) bounds every scheme's count variance
    se = np.sqrt(n * W8 * (1 - W8) / reps)
    np.testing.assert_array_less(np.abs(C.mean(axis=0) - expected), 5 * se + 1e-12)
    assert (C[:, W8 == 0] == 0).all()


def test_low_variance_schemes_beat_multinomial() -> None:
    reps = 8000
    n = W8.size
    var = {s: offspring(s, W8, reps, seed=2).var(axis=0, ddof=1).sum() for s in SCHEMES}
    theory = float(n * np.sum(W8 * (1 - W8)))  # multinomial: sum_i n w_i (1 - w_i)
    # sample variance of a count over `reps` draws: relative standard error ~ sqrt(2/reps)
    assert abs(var["multinomial"] / theory - 1) < 5 * np.sqrt(2 / reps) * 2
    for s in ("systematic", "stratified", "residual"):
        assert var[s] < 0.7 * var["multinomial"], (s, var)


def test_exact_count_properties() -> None:
    rng = np.random.default_rng(3)
    for n_out in (8, 21, 100):
        lo = np.floor(n_out * W8)
        for _ in range(200):
            c = np.bincount(resample(W8, rng, "systematic", n_out), minlength=8)
            assert ((c == lo) | (c == lo + 1)).all()  # floor or ceil of n w
            c = np.bincount(resample(W8, rng, "residual", n_out), minlength=8)
            assert (c >= lo).all()  # the deterministic copies are always there
            for s in SCHEMES:
                idx = resample(W8, rng, s, n_out)
                assert idx.dtype == np.int64 and idx.shape == (n_out,)
                assert (np.diff(idx) >= 0).all()  # sorted ancestors


def test_degenerate_and_extreme_weights() -> None:
    rng = np.random.default_rng(4)
    w = np.zeros(50)
    w[17] = 1.0
    for s in SCHEMES:
        assert (resample(w, rng, s) == 17).all()
    # trailing zero weights never chosen even when positions round up to 1
    w = np.r_[np.full(1000, 1e-3), np.zeros(5)]
    w /= w.sum()
    for s in SCHEMES:
        assert resample(w, rng, s, 100_000).max() < 1000


def test_seed_reproducible() -> None:
    for s in SCHEMES:
        a = resample(W8, np.random.default_rng(9), s, 30)
        b = resample(W8, np.random.default_rng(9), s, 30)
        np.testing.assert_array_equal(a, b)


def test_normalize_log_weights_no_underflow() -> None:
    logw = np.array([-1e4, -1e4 + np.log(2.0), -np.inf, -1e4 - 800.0])
    w, lz = normalize_log_weights(logw)
    np.testing.assert_allclose(w[:2], [1 / 3, 2 / 3], rtol=1e-12)
    assert w[2] == 0.0 and 0.0 <= w[3] < 1e-300
    assert lz == pytest.approx(-1e4 + np.log(3.0), rel=1e-15)
    assert abs(w.sum() - 1.0) < 1e-15


def test_ess_values() -> None:
    assert ess(np.full(10, 0.1)) == pytest.approx(10.0)
    assert ess(np.r_[1.0, np.zeros(9)]) == 1.0
    w = np.random.default_rng(0).random(30)
    assert ess(w) == pytest.approx(ess(w * 1e-200)) == pytest.approx(w.sum() ** 2 / (w @ w))


@pytest.mark.parametrize("call, match", [
    (lambda: resample(np.zeros(4), 0), "all zero"),
    (lambda: resample(np.array([0.5, np.nan, 0.5]), 0), "finite"),
    (lambda: resample(np.array([0.5, np.inf]), 0), "finite"),
    (lambda: resample(np.array([1.5, -0.5]), 0), ">= 0"),
    (lambda: resample(np.array([0.2, 0.2]), 0), "normalized"),
    (lambda: resample(np.ones((2, 2)) / 4, 0), "shape"),
    (lambda: resample(np.array([]), 0), "shape"),
    (lambda: resample(W8, 0, "sytematic"), "scheme must be one of"),
    (lambda: resample(W8, 0, n_out=0), "n_out must be >= 1"),
    (lambda: resample(W8, "seed"), "rng must be"),
    (lambda: normalize_log_weights(np.full(3, -np.inf)), "tempering"),
    (lambda: normalize_log_weights(np.array([0.0, np.nan])), "NaN"),
    (lambda: normalize_log_weights(np.array([0.0, np.inf])), r"\+inf"),
    (lambda: ess(np.zeros(3)), "all zero"),
])
def test_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
