"""Numerically safe functions of symmetric (positive semi-definite) matrices.

Every function symmetrises its input, takes ``numpy.linalg.eigh`` and raises the
eigenvalues below a *relative* floor (``rel_floor`` times the largest eigenvalue
magnitude) up to that floor before applying the scalar function. The largest
amount added to any eigenvalue is the *jitter*; ask for it with
``return_jitter=True`` (it is 0.0 when no eigenvalue was raised).

With ``validate=True`` a matrix that is not symmetric or not numerically positive
definite (smallest eigenvalue <= the floor) raises a ``ValueError`` naming it,
instead of being floored. Diagonal matrices take a cheap path (no ``eigh``).

Filters use these helpers, never raw ``scipy.linalg.sqrtm`` or ``numpy.linalg.inv``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "DEFAULT_REL_FLOOR",
    "is_diagonal",
    "symmetrize",
    "sym_eigh",
    "sym_funm",
    "sym_sqrt",
    "sym_inv_sqrt",
    "sym_inv",
    "check_spd",
]

#: default relative eigenvalue floor (times the largest eigenvalue magnitude)
DEFAULT_REL_FLOOR: float = 1e-12

#: relative asymmetry tolerated by ``validate=True`` (max |A - A^T| / max |A|)
_SYM_RTOL = 1e-8


def _square(name: str, A: np.ndarray | list) -> np.ndarray:
    arr = np.asarray(A)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"matrix {name} must be real (got dtype {arr.dtype})")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"matrix {name} must be square with shape (m, m), m >= 1 "
                         f"(got shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"matrix {name} must be finite (it contains NaN or inf)")
    return arr


def is_diagonal(A: np.ndarray) -> bool:
    """Return True when every off-diagonal entry of the square matrix ``A`` is zero."""
    A = np.asarray(A)
    m = A.shape[0]
    if m <= 1:
        return True
    # the off-diagonal entries, without building a mask: drop the first element,
    # then each row of the (m-1, m+1) view starts with m off-diagonal entries
    off = A.reshape(-1)[1:].reshape(m - 1, m + 1)[:, :m]
    return not np.any(off)


def symmetrize(A: np.ndarray) -> np.ndarray:
    """Return ``(A + A.T) / 2`` as a new float64 array."""
    A = np.asarray(A, dtype=np.float64)
    return 0.5 * (A + A.T)


def _check_symmetric(name: str, A: np.ndarray) -> None:
    scale = float(np.max(np.abs(A)))
    asym = float(np.max(np.abs(A - A.T)))
    if asym > _SYM_RTOL * scale:
        raise ValueError(f"matrix {name} is not symmetric (max |{name} - {name}.T| = {asym:.3g}, "
                         f"max |{name}| = {scale:.3g}); pass a symmetric matrix")


def _floor_eigs(name: str, w: np.ndarray, rel_floor: float, validate: bool,
                ) -> tuple[np.ndarray, float]:
    scale = float(np.max(np.abs(w)))
    floor = rel_floor * scale
    wmin = float(np.min(w))
    if validate and (wmin <= floor or scale == 0.0):
        raise ValueError(
            f"matrix {name} is not positive definite (smallest eigenvalue {wmin:.6g}, "
            f"largest {float(np.max(w)):.6g}, relative floor {rel_floor:g}); "
            "pass a symmetric positive-definite matrix"
        )
    if wmin >= floor:
        return w, 0.0
    return np.maximum(w, floor), floor - wmin


def sym_eigh(A: np.ndarray, *, name: str = "A", rel_floor: float = DEFAULT_REL_FLOOR,
             validate: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigen-decomposition of the symmetrised matrix with floored eigenvalues.

    Parameters
    ----------
    A : ndarray, shape (m, m)
        Symmetric (positive semi-definite) matrix; its symmetric part is used.
    name : str
        Name used in error messages.
    rel_floor : float
        Eigenvalues below ``rel_floor * max|eigenvalue|`` are raised to that value.
    validate : bool
        Raise instead of flooring when ``A`` is not symmetric or not positive definite.

    Returns
    -------
    w : ndarray, shape (m,)
        Floored eigenvalues, ascending.
    V : ndarray, shape (m, m)
        Orthonormal eigenvectors (columns).
    jitter : float
        Largest amount added to an eigenvalue by the floor (0.0 if none).

    Raises
    ------
    ValueError
        If ``A`` is not a finite square matrix, or (``validate``) not symmetric
        positive definite.
    """
    A = _square(name, A)
    if validate:
        _check_symmetric(name, A)
    if is_diagonal(A):
        d = np.diag(A).copy()
        order = np.argsort(d, kind="stable")
        w, jitter = _floor_eigs(name, d[order], rel_floor, validate)
        V = np.eye(A.shape[0])[:, order]
        return w, V, jitter
    w, V = np.linalg.eigh(symmetrize(A))
    w, jitter = _floor_eigs(name, w, rel_floor, validate)
    return w, V, jitter


def sym_funm(A: np.ndarray, f: Callable[[np.ndarray], np.ndarray], *, name: str = "A",
             rel_floor: float = DEFAULT_REL_FLOOR, validate: bool = False,
             return_jitter: bool = False) -> np.ndarray | tuple[np.ndarray, float]:
    """Apply the scalar function ``f`` to the floored eigenvalues of symmetric ``A``.

    Returns ``V @ diag(f(w)) @ V.T`` (exactly symmetric), and the jitter when
    ``return_jitter``. Diagonal input returns a diagonal result without ``eigh``.
    See :func:`sym_eigh` for the parameters.
    """
    A = _square(name, A)
    if is_diagonal(A):
        if validate:
            _check_symmetric(name, A)
        w, jitter = _floor_eigs(name, np.diag(A).copy(), rel_floor, validate)
        out = np.diag(np.asarray(f(w), dtype=np.float64))
    else:
        w, V, jitter = sym_eigh(A, name=name, rel_floor=rel_floor, validate=validate)
        out = (V * f(w)) @ V.T
        out = 0.5 * (out + out.T)
    return (out, jitter) if return_jitter else out


def _needs_positive(name: str, A: np.ndarray) -> None:
    if not np.any(A):
        raise ValueError(f"matrix {name} is not positive definite (it is zero); "
                         "its inverse does not exist")


def sym_sqrt(A: np.ndarray, *, name: str = "A", rel_floor: float = DEFAULT_REL_FLOOR,
             validate: bool = False, return_jitter: bool = False,
             ) -> np.ndarray | tuple[np.ndarray, float]:
    """Symmetric square root ``S`` of a symmetric PSD matrix (``S @ S == A``).

    Eigenvalues below the relative floor are raised to it (see :func:`sym_eigh`).
    """
    return sym_funm(A, np.sqrt, name=name, rel_floor=rel_floor, validate=validate,
                    return_jitter=return_jitter)


def sym_inv_sqrt(A: np.ndarray, *, name: str = "A", rel_floor: float = DEFAULT_REL_FLOOR,
                 validate: bool = False, return_jitter: bool = False,
                 ) -> np.ndarray | tuple[np.ndarray, float]:
    """Symmetric inverse square root ``A^{-1/2}`` of a symmetric positive-definite matrix.

    Eigenvalues below the relative floor are raised to it, so the result is finite
    for singular input (its norm is at most ``(rel_floor * max eig)^{-1/2}``).

    Raises
    ------
    ValueError
        If ``A`` is zero, or (``validate``) not symmetric positive definite.
    """
    _needs_positive(name, _square(name, A))
    return sym_funm(A, lambda w: 1.0 / np.sqrt(w), name=name, rel_floor=rel_floor,
                    validate=validate, return_jitter=return_jitter)


def sym_inv(A: np.ndarray, *, name: str = "A", rel_floor: float = DEFAULT_REL_FLOOR,
            validate: bool = False, return_jitter: bool = False,
            ) -> np.ndarray | tuple[np.ndarray, float]:
    """Inverse of a symmetric positive-definite matrix (floored, exactly symmetric).

    Raises
    ------
    ValueError
        If ``A`` is zero, or (``validate``) not symmetric positive definite.
    """
    _needs_positive(name, _square(name, A))
    return sym_funm(A, lambda w: 1.0 / w, name=name, rel_floor=rel_floor, validate=validate,
                    return_jitter=return_jitter)


def check_spd(A: np.ndarray, name: str = "A", rel_floor: float = DEFAULT_REL_FLOOR) -> None:
    """Raise ``ValueError`` unless ``A`` is finite, symmetric and positive definite.

    "Positive definite" means every eigenvalue exceeds ``rel_floor`` times the
    largest one.
    """
    sym_eigh(A, name=name, rel_floor=rel_floor, validate=True)
