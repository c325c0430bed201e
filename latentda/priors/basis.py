"""Networks on a fixed, data-fitted linear basis (``arch.content: basis`` of ``shift2d``).

Once a pattern is centred (:mod:`latentda.priors.shift`), the family of centred fields
is low-dimensional and smooth (a released shallow-water bump: amplitude, width and
time since release). Its principal components converge fast, so a small multilayer
perceptron that maps the content code to the coefficients of ``modes`` principal
components does the work of a convolutional decoder at a small fraction of the cost:

- decoder: ``c = mean + (mlp(z_c) + W z_c) * coef_scale @ basis``;
- encoder: ``a = (c - mean) @ basis.T / coef_scale``, then ``mlp(a) + W a``;

``basis`` (``modes x n``, orthonormal rows), ``mean`` and ``coef_scale`` (the standard
deviation of each coefficient) are buffers fitted once by :meth:`Basis.fit` from the
centred training fields (their SVD) before training, and saved with the weights.
The decoder owns the :class:`Basis`; the encoder borrows it (:meth:`BasisEncoder.use`),
so the checkpoint holds it once.
"""

from __future__ import annotations

import torch
from torch import nn


class Basis(nn.Module):
    """Principal components of the centred fields: ``mean (n,)``, ``basis (modes, n)``,
    ``coef_scale (modes,)``."""

    def __init__(self, n: int, modes: int) -> None:
        super().__init__()
        if not 1 <= int(modes) <= n:
            raise ValueError(f"arch.modes must be in [1, {n}] (got {modes})")
        self.n, self.modes = int(n), int(modes)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("basis", torch.eye(self.modes, n))
        self.register_buffer("coef_scale", torch.ones(self.modes))

    @torch.no_grad()
    def fit(self, c: torch.Tensor) -> float:
        """Fit to centred standardized fields ``c`` ``(N, n)``; returns the fraction of
        the variance about the mean left out by the ``modes`` components."""
        if c.shape[0] < self.modes:
            raise ValueError(f"arch.modes ({self.modes}) must not exceed the number of "
                             f"training states ({c.shape[0]})")
        c64 = c.double()
        mean = c64.mean(0)
        _, s, vh = torch.linalg.svd(c64 - mean, full_matrices=False)
        sd = s[: self.modes] / max(c.shape[0] - 1, 1) ** 0.5
        self.mean.copy_(mean.to(self.mean.dtype))
        self.basis.copy_(vh[: self.modes].to(self.basis.dtype))
        self.coef_scale.copy_(sd.clamp_min(1e-12).to(self.coef_scale.dtype))
        return float(1.0 - (s[: self.modes] ** 2).sum() / (s**2).sum())

    def coefficients(self, c: torch.Tensor) -> torch.Tensor:
        """Standardized coefficients ``(B, modes)`` of fields ``(B, n)``."""
        return (c - self.mean) @ self.basis.T / self.coef_scale

    def fields(self, a: torch.Tensor) -> torch.Tensor:
        """Fields ``(B, n)`` of standardized coefficients ``(B, modes)``."""
        return self.mean + (a * self.coef_scale) @ self.basis


class BasisDecoder(nn.Module):
    """``(B, k) -> (B, n)``: a network ``net`` (``k -> modes``) with a linear path to the
    coefficients of a basis."""

    def __init__(self, k: int, n: int, modes: int, net: nn.Module) -> None:
        super().__init__()
        self.basis = Basis(n, modes)
        self.net = net
        self.lin = nn.Linear(k, int(modes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.basis.fields(self.net(z) + self.lin(z))


class BasisEncoder(nn.Module):
    """``(B, n) -> (B, out)``: basis coefficients, then a network ``net``
    (``modes -> out``) with a linear path.

    The basis is the decoder's (:meth:`use`); an encoder without one cannot run.
    """

    def __init__(self, out: int, modes: int, net: nn.Module) -> None:
        super().__init__()
        self.modes = int(modes)
        self.net = net
        self.lin = nn.Linear(self.modes, out)
        self._basis: list[Basis] = []   # borrowed, not a submodule

    def use(self, basis: Basis) -> None:
        """Project on ``basis`` (the decoder's)."""
        if basis.modes != self.modes:
            raise ValueError(f"arch.modes: encoder {self.modes} != decoder {basis.modes}")
        self._basis = [basis]

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if not self._basis:
            raise RuntimeError("BasisEncoder has no basis: attach it to its decoder first")
        a = self._basis[0].coefficients(c)
        return self.net(a) + self.lin(a)
