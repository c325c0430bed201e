"""Shift-equivariant networks for fields with one centre of symmetry (``arch.kind: shift2d``).

A single Gaussian bump released at rest on a doubly periodic, constant-``f`` plane
stays point-symmetric about its release point ``p`` for ever (the equations are
invariant under translations and under the point reflection ``x -> 2p - x``, which
flips the sign of the velocity). Its state is therefore ``S_p c``: a *centred* field
``c`` (which depends on amplitude, width and time since release only) translated to
``p``. A generic convolutional code has to spend most of its capacity on where the
pattern is; this architecture builds the translation in:

- **decoder** ``z = [z_pos (4), z_c (k - 4)]``: the position is read as two angles on
  the torus, ``theta_x = atan2(z_1, z_0)`` and ``theta_y = atan2(z_3, z_2)`` (so
  ``z_pos ~ N(0, I)`` is a uniform position and moving a bump across the periodic
  boundary is a smooth path in ``z``); a content network (``arch.content``: periodic
  convolutions, or an MLP on a fitted principal-component basis,
  :mod:`latentda.priors.basis`) maps ``z_c`` to the centred fields, which an exact
  Fourier phase shift moves to ``p``;
- **encoder**: the centre of symmetry is estimated without learning, as the maximum of
  the signed auto-convolution ``C(s) = sum_f sign_f sum_x u_f(x) u_f(s - x)`` (which
  peaks at ``s = 2p`` for point-symmetric fields), on the grid and then refined by
  Newton steps on its Fourier series; ``2p`` leaves four candidates ``p + {0, L/2}^2``
  (the fields are symmetric about all four). The fields are translated once, to the
  first candidate; on an even grid the other three are exact half-grid rolls of it
  (one FFT pair instead of four; the Newton derivatives are separable contractions
  too), which halved the encoder's time. With ``arch.pv`` (rotating shallow water:
  ``{f0, H, dx, dy}``) the candidate with the largest linear potential-vorticity anomaly
  ``q = zeta - f0 h' / H`` near it is chosen: ``q`` is conserved by the linear dynamics,
  so the released bump's PV stays at the release point for ever while the gravity waves
  carry none. Without it, the candidate whose centred fields the current network
  reconstructs best is chosen (hard EM, without gradient; 2-3x the training cost). The
  content encoder maps the centred fields to ``z_c``; the position part of the
  posterior mean is ``rho (cos theta_x, sin theta_x, cos theta_y, sin theta_y)`` with
  ``rho = sqrt(pi / 2)`` (the mean radius of a 2-D standard normal) and one learned
  log-variance.

``sign_f`` is the parity of field ``f`` under point reflection (``+1`` for the height,
``-1`` for velocities) and ``stagger`` the offset of each field's grid from the cell
centres in cells (``(x, y)``; ``-0.5`` for the C-grid faces), both from ``arch``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

RHO = math.sqrt(math.pi / 2.0)


def _freqs(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Signed integer frequencies of an ``n``-point FFT."""
    return torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)


def fourier_shift(u: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Translate periodic fields by ``(dx, dy)`` cells (fractional): ``out(x) = u(x - d)``.

    Parameters
    ----------
    u : Tensor, shape (B, F, ny, nx)
    dx, dy : Tensor, shape (B,)
        Shifts in cells along x and y (differentiable).
    """
    B, F, ny, nx = u.shape
    real = u.dtype
    kx = _freqs(nx, u.device, real)
    ky = _freqs(ny, u.device, real)
    phase = -2.0 * math.pi * (kx[None, None, :] * dx[:, None, None] / nx
                              + ky[None, :, None] * dy[:, None, None] / ny)
    U = torch.fft.fft2(u)
    return torch.fft.ifft2(U * torch.polar(torch.ones_like(phase), phase)[:, None]).real


@torch.no_grad()
def symmetry_centre(u: torch.Tensor, sign: list[float], stagger: list[list[float]],
                    newton: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Twice the centre of point symmetry of periodic fields, in cells of the centre grid.

    Returns ``(sx, sy)`` with ``s = 2 p`` modulo the grid size, where ``p`` is the centre
    in cell-centre index units (cell ``i`` has its centre at ``i``).

    Parameters
    ----------
    u : Tensor, shape (B, F, ny, nx)
    sign : list of float
        Parity of each field under point reflection.
    stagger : list of (ox, oy)
        Offset of each field's grid from the cell centres, in cells.
    newton : int
        Newton steps on the Fourier series of the auto-convolution after the grid maximum.
    """
    B, F, ny, nx = u.shape
    ud = u.double()
    kx = _freqs(nx, u.device, torch.float64)
    ky = _freqs(ny, u.device, torch.float64)
    U = torch.fft.fft2(ud)
    G = torch.zeros((B, ny, nx), dtype=torch.complex128, device=u.device)
    for f in range(F):
        ox, oy = (float(v) for v in stagger[f])
        # field f sits at cell-centre coordinates i + o: its auto-convolution peaks at
        # s = 2p - 2o; translate it by +2o so that every field peaks at 2p
        ph = -2.0 * math.pi * (kx[None, :] * (2.0 * ox) / nx + ky[:, None] * (2.0 * oy) / ny)
        G = G + float(sign[f]) * U[:, f] ** 2 * torch.polar(torch.ones_like(ph), ph)
    C = torch.fft.ifft2(G).real                                    # (B, ny, nx)
    idx = C.flatten(1).argmax(1)
    sy, sx = (idx // nx).double(), (idx % nx).double()
    # Newton on the Fourier series C(s) = sum_k G_k exp(i w.s) / (nx ny); the phase
    # factorizes, so every derivative is two small contractions (x, then y)
    wx, wy = 2.0 * math.pi * kx / nx, 2.0 * math.pi * ky / ny
    Gn = G / (nx * ny)
    for _ in range(int(newton)):
        ex = torch.polar(torch.ones_like(sx)[:, None].expand(B, nx), wx * sx[:, None])
        ey = torch.polar(torch.ones_like(sy)[:, None].expand(B, ny), wy * sy[:, None])
        T = torch.matmul(Gn, torch.stack([ex, wx * ex, wx * wx * ex], -1))  # (B, ny, 3)
        T0, T1, T2 = T[..., 0], T[..., 1], T[..., 2]
        gx = -(ey * T1).sum(1).imag
        gy = -(wy * ey * T0).sum(1).imag
        hxx = -(ey * T2).sum(1).real
        hyy = -(wy * wy * ey * T0).sum(1).real
        hxy = -(wy * ey * T1).sum(1).real
        det = hxx * hyy - hxy * hxy
        ok = (hxx < 0) & (det > 0)
        stx = torch.where(ok, -(hyy * gx - hxy * gy) / torch.where(ok, det, 1.0), 0.0)
        sty = torch.where(ok, -(hxx * gy - hxy * gx) / torch.where(ok, det, 1.0), 0.0)
        sx = sx + stx.clamp(-0.5, 0.5)
        sy = sy + sty.clamp(-0.5, 0.5)
    return sx % nx, sy % ny


def check_shift_latent(k: int) -> None:
    """``shift2d`` needs 4 position coordinates and at least one content coordinate."""
    if k < 5:
        raise ValueError(f"latent_dim must be >= 5 for arch.kind shift2d (4 position "
                         f"coordinates + content; got {k})")


def _angles(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.atan2(z[:, 1], z[:, 0]), torch.atan2(z[:, 3], z[:, 2])


class ShiftDecoder(nn.Module):
    """``[z_pos, z_c] -> S_p g(z_c)``: a content decoder of centred fields, shifted to
    ``p``."""

    def __init__(self, k: int, n: int, content: nn.Module, fields: int, ny: int, nx: int
                 ) -> None:
        super().__init__()
        check_shift_latent(k)
        self.k, self.shape = k, (fields, ny, nx)
        self.content = content

    def centred(self, zc: torch.Tensor) -> torch.Tensor:
        """Centred fields ``(B, F, ny, nx)`` of content codes ``(B, k - 4)``."""
        return self.content(zc).view(-1, *self.shape)

    def place(self, c: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
        """Move centred fields (centre at cell ``n/2``) to the centre ``(px, py)`` (cells)."""
        _, ny, nx = self.shape
        return fourier_shift(c, px - nx / 2, py - ny / 2).flatten(1)

    @torch.no_grad()
    def initialize_from_data(self, u: torch.Tensor, encoder: ShiftEncoder,
                             chunk: int = 256) -> float | None:
        """Fit a data-dependent content network (``content: basis``) to standardized
        training states ``u`` ``(N, n)``, centred by ``encoder``; returns the fraction of
        the centred variance its basis leaves out (``None`` for other content networks)."""
        if not hasattr(self.content, "basis"):
            return None
        F, ny, nx = self.shape
        parts = []
        for i in range(0, u.shape[0], chunk):
            b = u[i: i + chunk].view(-1, F, ny, nx)
            parts.append(encoder.centre_and_centred(b)[2].flatten(1))
        return self.content.basis.fit(torch.cat(parts))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, ny, nx = self.shape
        tx, ty = _angles(z)
        px = tx / (2.0 * math.pi) * nx
        py = ty / (2.0 * math.pi) * ny
        return self.place(self.centred(z[:, 4:]), px, py)


class ShiftEncoder(nn.Module):
    """Centre of symmetry (no learning) + content encoder of the centred fields.

    Output ``(B, 2k)``: posterior means then log-variances, as every encoder here.
    The decoder must be attached (:meth:`attach`) for the choice among the four
    symmetric candidate centres.
    """

    def __init__(self, k: int, n: int, content: nn.Module, fields: int, ny: int, nx: int,
                 sign: list[float], stagger: list[list[float]],
                 pv: dict[str, float] | None = None) -> None:
        super().__init__()
        check_shift_latent(k)
        self.k, self.shape = k, (fields, ny, nx)
        self.sign = [float(s) for s in sign]
        self.stagger = [[float(v) for v in o] for o in stagger]
        self.content = content
        self.pv = None if pv is None else {k: float(pv[k]) for k in ("f0", "H", "dx", "dy")}
        self.pos_logvar = nn.Parameter(torch.tensor(-6.0))
        # not submodules (no double registration): the decoder for the hard-EM choice, the
        # prior for the physical units of the PV choice
        self._decoder: list[ShiftDecoder] = []
        self._owner: list[nn.Module] = []

    def attach(self, decoder: ShiftDecoder, owner: nn.Module | None = None) -> None:
        """Use ``decoder`` (and ``owner.shift``/``owner.scale``, the standardization) to
        choose among the symmetric candidate centres."""
        self._decoder = [decoder]
        self._owner = [] if owner is None else [owner]
        if hasattr(self.content, "use"):   # content: basis, the decoder's
            self.content.use(decoder.content.basis)

    def _pv_choice(self, cands: list[torch.Tensor]) -> torch.Tensor:
        """Index of the candidate with the largest PV anomaly in a 7x7 window at its centre.

        Only the window (and the row and column before it, for the backward differences
        of the vorticity) is converted to physical units and differenced.
        """
        F, ny, nx = self.shape
        owner = self._owner[0]
        pv = self.pv
        ys, xs = slice(ny // 2 - 4, ny // 2 + 4), slice(nx // 2 - 4, nx // 2 + 4)
        scale = owner.scale.view(F, ny, nx)[:, ys, xs]
        shift = owner.shift.view(F, ny, nx)[:, ys, xs]
        energies = []
        for c in cands:
            x = c[:, :, ys, xs] * scale + shift
            h, u, v = x[:, 0, 1:, 1:] - pv["H"], x[:, 1], x[:, 2]
            zeta = ((v[:, 1:, 1:] - v[:, 1:, :-1]) / pv["dx"]
                    - (u[:, 1:, 1:] - u[:, :-1, 1:]) / pv["dy"])
            q = zeta - pv["f0"] * h / pv["H"]
            energies.append(q.pow(2).sum((1, 2)))
        return torch.stack(energies, 1).argmax(1)

    def centre(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre ``(px, py)`` in cells of each field set ``(B, F, ny, nx)``."""
        px, py, _ = self.centre_and_centred(u)
        return px, py

    def centre_and_centred(self, u: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The centre ``(px, py)`` and the fields translated so that it sits mid-grid."""
        _, ny, nx = self.shape
        sx, sy = symmetry_centre(u, self.sign, self.stagger)
        px0, py0 = (sx / 2).to(u.dtype), (sy / 2).to(u.dtype)
        offsets = [(a, b) for a in (0, 1) for b in (0, 1)]
        cands = [(px0 + a * nx / 2, py0 + b * ny / 2) for a, b in offsets]
        if not self._decoder:
            return cands[0][0], cands[0][1], fourier_shift(u, nx / 2 - px0, ny / 2 - py0)
        dec = self._decoder[0]
        with torch.no_grad():
            c0 = fourier_shift(u, nx / 2 - px0, ny / 2 - py0)
            if nx % 2 == 0 and ny % 2 == 0:
                # the candidates differ by half the grid, an exact roll of one translation
                centred = [torch.roll(c0, (-b * ny // 2, -a * nx // 2), (-2, -1))
                           for a, b in offsets]
            else:
                centred = [fourier_shift(u, nx / 2 - px, ny / 2 - py) for px, py in cands]
            if self.pv is not None and self._owner:
                best = self._pv_choice(centred)
            else:
                errs = []
                for c in centred:
                    zc = self.content(c.flatten(1))[:, : self.k - 4]
                    errs.append(((dec.centred(zc) - c) ** 2).flatten(1).sum(1))
                best = torch.stack(errs, 1).argmin(1)
        px = torch.stack([c[0] for c in cands], 1).gather(1, best[:, None])[:, 0]
        py = torch.stack([c[1] for c in cands], 1).gather(1, best[:, None])[:, 0]
        if torch.is_grad_enabled() and u.requires_grad:  # differentiable through u
            return px, py, fourier_shift(u, nx / 2 - px, ny / 2 - py)
        c = torch.stack(centred, 1)[torch.arange(u.shape[0], device=u.device), best]
        return px, py, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F, ny, nx = self.shape
        u = x.view(-1, F, ny, nx)
        px, py, c = self.centre_and_centred(u)
        h = self.content(c.flatten(1))
        m = self.k - 4
        tx, ty = 2.0 * math.pi * px / nx, 2.0 * math.pi * py / ny
        mu_pos = RHO * torch.stack([tx.cos(), tx.sin(), ty.cos(), ty.sin()], 1)
        lv_pos = self.pos_logvar.expand(u.shape[0], 4)
        return torch.cat([mu_pos, h[:, :m], lv_pos, h[:, m:]], 1)


def check_shift_arch(out: dict[str, Any]) -> dict[str, Any]:
    """Defaults and checks of the ``shift2d``-specific fields (``sign``, ``stagger``)."""
    F = int(out["fields"])
    if "sign" not in out:
        out["sign"] = [1.0] + [-1.0] * (F - 1)
    if "stagger" not in out:
        out["stagger"] = [[0.0, 0.0]] + ([[-0.5, 0.0], [0.0, -0.5]] if F == 3
                                         else [[0.0, 0.0]] * (F - 1))
    if len(out["sign"]) != F or any(float(s) not in (-1.0, 1.0) for s in out["sign"]):
        raise ValueError(f"arch.sign must hold one parity (+1 or -1) per field ({F}); got "
                         f"{out['sign']!r}")
    if len(out["stagger"]) != F or any(len(o) != 2 for o in out["stagger"]):
        raise ValueError(f"arch.stagger must hold one (x, y) offset in cells per field ({F}); "
                         f"got {out['stagger']!r}")
    out.setdefault("content", "conv")
    if out["content"] not in ("conv", "basis"):
        raise ValueError(f"arch.content must be 'conv' or 'basis' (got {out['content']!r})")
    if out["content"] == "basis":
        out = {"modes": 48, "hidden": [256, 256]} | out
        if int(out["modes"]) < 1 or not out["hidden"] or any(int(h) < 1 for h in out["hidden"]):
            raise ValueError(f"arch.modes must be >= 1 and arch.hidden a non-empty list of "
                             f"positive widths (got {out['modes']!r}, {out['hidden']!r})")
        if out.get("pv") is None:
            raise ValueError("arch.content 'basis' needs arch.pv: the basis is fitted to "
                             "centred fields before training, so the centre must be chosen "
                             "without a trained network")
    pv = out.get("pv")
    if pv is not None:
        if F != 3 or not isinstance(pv, dict) or set(pv) != {"f0", "H", "dx", "dy"}:
            raise ValueError(f"arch.pv must be a mapping with exactly f0, H, dx, dy (three "
                             f"fields h, u, v; got {pv!r})")
        if not all(float(pv[k]) > 0 for k in ("H", "dx", "dy")) or float(pv["f0"]) == 0:
            raise ValueError(f"arch.pv needs f0 != 0 and H, dx, dy > 0 (got {pv!r})")
    return out
