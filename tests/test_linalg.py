"""Tests of latentda.linalg: safe functions of symmetric matrices."""

from __future__ import annotations

import numpy as np
import pytest

from latentda.linalg import (
    DEFAULT_REL_FLOOR,
    check_spd,
    is_diagonal,
    sym_eigh,
    sym_inv,
    sym_inv_sqrt,
    sym_sqrt,
)


def _spd(rng: np.random.Generator, n: int, cond: float = 1e3) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = np.geomspace(1.0, cond, n)
    return (Q * w) @ Q.T


@pytest.mark.parametrize("n", [1, 3, 17])
def test_sqrt_squares_to_matrix(n: int) -> None:
    A = _spd(np.random.default_rng(n), n)
    S, jitter = sym_sqrt(A, return_jitter=True)
    assert jitter == 0.0
    np.testing.assert_array_equal(S, S.T)
    np.testing.assert_allclose(S @ S, A, rtol=0, atol=1e-11 * np.abs(A).max())
    assert np.linalg.eigvalsh(S).min() > 0


def test_inverse_and_inverse_sqrt() -> None:
    A = _spd(np.random.default_rng(1), 12, cond=1e4)
    Ai = sym_inv(A)
    Aih = sym_inv_sqrt(A)
    eye = np.eye(12)
    np.testing.assert_allclose(Ai @ A, eye, atol=1e-9)
    np.testing.assert_allclose(Aih @ A @ Aih, eye, atol=1e-9)
    np.testing.assert_allclose(Aih @ Aih, Ai, rtol=1e-9, atol=1e-12)
    # the square root of the inverse is the inverse of the square root
    np.testing.assert_allclose(sym_sqrt(A) @ Aih, eye, atol=1e-9)


def test_floor_on_singular_matrix() -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 3))
    A = X @ X.T  # rank 3: three zero eigenvalues (up to round-off)
    lam_max = np.linalg.eigvalsh(A).max()
    floor = DEFAULT_REL_FLOOR * lam_max
    Ai, jitter = sym_inv(A, return_jitter=True)
    assert np.isfinite(Ai).all()
    # the jitter raised the (near-)zero eigenvalues to the floor
    assert floor * 0.99 < jitter < floor * 1.01 + 1e-13 * lam_max
    w_inv = np.linalg.eigvalsh(Ai)
    assert w_inv.max() == pytest.approx(1.0 / floor, rel=1e-3)
    # the square root of a singular matrix still squares to it, to within the floor
    S, jitter_s = sym_sqrt(A, return_jitter=True)
    assert jitter_s > 0
    np.testing.assert_allclose(S @ S, A, atol=10 * floor + 1e-12 * lam_max)
    # with a smaller floor the jitter shrinks accordingly
    _, jitter_small = sym_inv(A, rel_floor=1e-14, return_jitter=True)
    assert jitter_small < jitter


def test_indefinite_matrix_errors_when_validated() -> None:
    B = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues -1, 3
    for fun in (sym_sqrt, sym_inv_sqrt, sym_inv):
        with pytest.raises(ValueError, match=r"matrix B is not positive definite "
                                             r"\(smallest eigenvalue -1"):
            fun(B, name="B", validate=True)
    with pytest.raises(ValueError, match="matrix B is not positive definite"):
        check_spd(B, "B")
    # without validation the negative eigenvalue is floored and the jitter says by how much
    _, jitter = sym_sqrt(B, return_jitter=True)
    assert jitter == pytest.approx(1.0 + 3.0 * DEFAULT_REL_FLOOR)


def test_validation_rejects_singular_and_asymmetric() -> None:
    with pytest.raises(ValueError, match="matrix R is not positive definite"):
        check_spd(np.diag([1.0, 0.0]), "R")
    with pytest.raises(ValueError, match="matrix R is not symmetric"):
        check_spd(np.array([[2.0, 1.0], [0.0, 2.0]]), "R")
    check_spd(_spd(np.random.default_rng(3), 5), "R")  # no error


@pytest.mark.parametrize("bad, match", [
    (np.ones((2, 3)), "matrix M must be square"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "matrix M must be finite"),
    (np.array([["a"]]), "matrix M must be real"),
])
def test_bad_input_names_matrix(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sym_sqrt(bad, name="M")


def test_zero_matrix_has_no_inverse() -> None:
    with pytest.raises(ValueError, match="matrix Z is not positive definite"):
        sym_inv(np.zeros((3, 3)), name="Z")
    np.testing.assert_array_equal(sym_sqrt(np.zeros((3, 3))), np.zeros((3, 3)))


def test_diagonal_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    d = np.array([4.0, 9.0, 0.25])
    A = np.diag(d)

    def no_eigh(*args: object, **kwargs: object) -> None:
        raise AssertionError("eigh must not be called for a diagonal matrix")

    monkeypatch.setattr(np.linalg, "eigh", no_eigh)
    np.testing.assert_array_equal(sym_sqrt(A), np.diag(np.sqrt(d)))
    np.testing.assert_array_equal(sym_inv_sqrt(A), np.diag(1.0 / np.sqrt(d)))
    np.testing.assert_array_equal(sym_inv(A), np.diag(1.0 / d))
    w, V, jitter = sym_eigh(A)
    np.testing.assert_array_equal(w, np.sort(d))
    np.testing.assert_array_equal((V * w) @ V.T, A)
    assert jitter == 0.0


def test_is_diagonal() -> None:
    assert is_diagonal(np.eye(4))
    assert is_diagonal(np.array([[3.0]]))
    A = np.eye(4)
    A[3, 0] = 1e-300
    assert not is_diagonal(A)
    A = np.eye(4)
    A[0, 1] = 1.0
    assert not is_diagonal(A)


def test_input_not_modified() -> None:
    A = _spd(np.random.default_rng(4), 5)
    A[0, 1] += 1e-14  # slightly asymmetric: the symmetric part is used
    A0 = A.copy()
    sym_inv(A)
    sym_sqrt(A)
    np.testing.assert_array_equal(A, A0)
