"""Network building blocks that respect each system's geometry.

- ``conv1d``: periodic (circular) 1-D convolutions for Lorenz-96, translation
  equivariant on the ring until the dense bottleneck;
- ``conv2d``: periodic 2-D convolutions for shallow water, fields as channels,
  stride-2 circular convolutions in the encoder and nearest up-sampling +
  circular convolution in the decoder (transposed convolutions cannot pad
  circularly);
- ``shift2d``: networks for the *centred* fields of a point-symmetric pattern, with
  its position as an exact Fourier shift (:mod:`latentda.priors.shift`; the
  single-bump shallow-water family); the centred fields go through ``conv2d``
  networks (``content: conv``) or MLPs on a fitted principal-component basis
  (``content: basis``, :mod:`latentda.priors.basis`);
- ``mlp``: small multilayer perceptrons (Lotka–Volterra);
- ``linear``: one affine map (analytic references in tests).

Every builder takes a JSON-serialisable ``arch`` dict, so a prior's config
rebuilds the same network. ``encoder_net(arch, n, out)`` maps ``(B, n) -> (B, out)``
and ``decoder_net(arch, k, n)`` maps ``(B, k) -> (B, n)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentda.priors.basis import BasisDecoder, BasisEncoder
from latentda.priors.shift import (
    ShiftDecoder,
    ShiftEncoder,
    check_shift_arch,
    check_shift_latent,
)

ARCH_KINDS = ("linear", "mlp", "conv1d", "conv2d", "shift2d")


def check_arch(arch: dict[str, Any], state_dim: int) -> dict[str, Any]:
    """Validate an architecture dict and fill its defaults.

    Raises
    ------
    ValueError
        Naming the ``arch`` field at fault.
    """
    if not isinstance(arch, dict) or "kind" not in arch:
        raise ValueError(f"arch must be a mapping with a 'kind' in {ARCH_KINDS} (got {arch!r})")
    kind = arch["kind"]
    if kind == "linear":
        out = {"kind": "linear"} | arch
    elif kind == "mlp":
        out = {"kind": "mlp", "hidden": [128, 128]} | arch
        if not out["hidden"] or any(int(h) < 1 for h in out["hidden"]):
            raise ValueError(f"arch.hidden must be a non-empty list of positive widths "
                             f"(got {out['hidden']!r})")
    elif kind == "conv1d":
        out = {"kind": "conv1d", "channels": 32, "blocks": 2, "kernel": 5, "linear_path": True
               } | arch
    elif kind in ("conv2d", "shift2d"):
        out = {"kind": kind, "fields": 3, "channels": [16, 32, 64], "kernel": 3,
               "linear_path": False} | arch
        if kind == "shift2d":
            out = check_shift_arch(out)
        for key in ("ny", "nx"):
            if key not in out:
                raise ValueError(f"arch.{key} is required for {kind} (the grid shape)")
        F, ny, nx = int(out["fields"]), int(out["ny"]), int(out["nx"])
        if F * ny * nx != state_dim:
            raise ValueError(f"arch fields*ny*nx = {F}*{ny}*{nx} = {F * ny * nx} must equal "
                             f"the state dimension {state_dim}")
        down = 2 ** len(out["channels"])
        if ny % down or nx % down:
            raise ValueError(f"arch: ny and nx must be divisible by 2**len(channels) = {down} "
                             f"(got {ny}x{nx})")
    else:
        raise ValueError(f"arch.kind must be one of {ARCH_KINDS} (got {kind!r})")
    if kind == "conv1d" and int(out["kernel"]) % 2 == 0:
        raise ValueError(f"arch.kernel must be odd (got {out['kernel']})")
    return out


def _mlp(sizes: list[int], act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _ResBlock1d(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(c, c, k, padding=k // 2, padding_mode="circular")
        self.c2 = nn.Conv1d(c, c, k, padding=k // 2, padding_mode="circular")
        self.act = nn.GELU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.c2(self.act(self.c1(self.act(h))))


class _ResBlock2d(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, k, padding=k // 2, padding_mode="circular")
        self.c2 = nn.Conv2d(c, c, k, padding=k // 2, padding_mode="circular")
        self.act = nn.GELU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.c2(self.act(self.c1(self.act(h))))


class Conv1dEncoder(nn.Module):
    """Ring of ``n`` values -> circular convs + residual blocks -> dense ``out``."""

    def __init__(self, n: int, out: int, channels: int, blocks: int, kernel: int,
                 linear_path: bool) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, channels, kernel, padding=kernel // 2, padding_mode="circular")
        self.blocks = nn.Sequential(*[_ResBlock1d(channels, kernel) for _ in range(blocks)])
        self.head = nn.Linear(channels * n, out)
        self.lin = nn.Linear(n, out) if linear_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x[:, None, :]))
        out = self.head(torch.nn.functional.gelu(h).flatten(1))
        return out if self.lin is None else out + self.lin(x)


class Conv1dDecoder(nn.Module):
    """Dense ``k -> channels * n``, residual blocks of circular convs, conv to 1 channel."""

    def __init__(self, k: int, n: int, channels: int, blocks: int, kernel: int,
                 linear_path: bool) -> None:
        super().__init__()
        self.n, self.c = n, channels
        self.head = nn.Linear(k, channels * n)
        self.blocks = nn.Sequential(*[_ResBlock1d(channels, kernel) for _ in range(blocks)])
        self.out = nn.Conv1d(channels, 1, kernel, padding=kernel // 2, padding_mode="circular")
        self.lin = nn.Linear(k, n) if linear_path else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.head(z).view(-1, self.c, self.n))
        x = self.out(torch.nn.functional.gelu(h))[:, 0]
        return x if self.lin is None else x + self.lin(z)


class Conv2dEncoder(nn.Module):
    """Fields as channels; each level: a stride-2 circular conv, then a residual block.

    All the work happens at half resolution and below (64x64 -> 32 -> 16 -> 8 for
    three levels), which keeps a 64x64 shallow-water prior trainable on a CPU.
    """

    def __init__(self, n: int, out: int, fields: int, ny: int, nx: int, channels: list[int],
                 kernel: int, linear_path: bool) -> None:
        super().__init__()
        self.shape = (fields, ny, nx)
        layers: list[nn.Module] = []
        c_in = fields
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1, padding_mode="circular"),
                       _ResBlock2d(c, kernel)]
            c_in = c
        self.body = nn.Sequential(*layers)
        down = 2 ** len(channels)
        self.head = nn.Linear(c_in * (ny // down) * (nx // down), out)
        self.lin = nn.Linear(n, out) if linear_path else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x.view(-1, *self.shape))
        out = self.head(torch.nn.functional.gelu(h).flatten(1))
        return out if self.lin is None else out + self.lin(x)


class Conv2dDecoder(nn.Module):
    """Dense to the coarsest grid; per level a residual block, nearest x2 up-sampling and a
    circular conv; a final circular conv to the fields at full resolution."""

    def __init__(self, k: int, n: int, fields: int, ny: int, nx: int, channels: list[int],
                 kernel: int, linear_path: bool) -> None:
        super().__init__()
        down = 2 ** len(channels)
        rev = list(reversed(channels))
        self.c0, self.hw = rev[0], (ny // down, nx // down)
        self.head = nn.Linear(k, rev[0] * self.hw[0] * self.hw[1])
        layers: list[nn.Module] = []
        for i, c in enumerate(rev):
            c_out = rev[i + 1] if i + 1 < len(rev) else rev[-1]
            layers += [_ResBlock2d(c, kernel), nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c, c_out, kernel, padding=kernel // 2, padding_mode="circular")]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(rev[-1], fields, kernel, padding=kernel // 2,
                             padding_mode="circular")
        self.lin = nn.Linear(k, n) if linear_path else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(-1, self.c0, *self.hw)
        x = self.out(torch.nn.functional.gelu(self.body(h))).flatten(1)
        return x if self.lin is None else x + self.lin(z)


def encoder_net(arch: dict[str, Any], n: int, out: int) -> nn.Module:
    """Network ``(B, n) -> (B, out)`` of the given architecture."""
    a = check_arch(arch, n)
    if a["kind"] == "linear":
        return nn.Linear(n, out)
    if a["kind"] == "mlp":
        return _mlp([n, *map(int, a["hidden"]), out])
    if a["kind"] == "conv1d":
        return Conv1dEncoder(n, out, int(a["channels"]), int(a["blocks"]), int(a["kernel"]),
                             bool(a["linear_path"]))
    if a["kind"] == "shift2d":
        k = out // 2
        check_shift_latent(k)  # before the content network is sized by it
        if a["content"] == "basis":
            m, hidden = int(a["modes"]), [int(h) for h in a["hidden"]]
            content: nn.Module = BasisEncoder(2 * (k - 4), m,
                                              _mlp([m, *reversed(hidden), 2 * (k - 4)]))
        else:
            content = _conv2d_encoder(a, n, 2 * (k - 4))
        return ShiftEncoder(k, n, content, int(a["fields"]),
                            int(a["ny"]), int(a["nx"]), a["sign"], a["stagger"],
                            a.get("pv"))
    return _conv2d_encoder(a, n, out)


def _conv2d_encoder(a: dict[str, Any], n: int, out: int) -> Conv2dEncoder:
    return Conv2dEncoder(n, out, int(a["fields"]), int(a["ny"]), int(a["nx"]),
                         [int(c) for c in a["channels"]], int(a["kernel"]),
                         bool(a["linear_path"]))


def decoder_net(arch: dict[str, Any], k: int, n: int) -> nn.Module:
    """Network ``(B, k) -> (B, n)`` of the given architecture (mirror of the encoder)."""
    a = check_arch(arch, n)
    if a["kind"] == "linear":
        return nn.Linear(k, n)
    if a["kind"] == "mlp":
        return _mlp([k, *reversed([int(h) for h in a["hidden"]]), n])
    if a["kind"] == "conv1d":
        return Conv1dDecoder(k, n, int(a["channels"]), int(a["blocks"]), int(a["kernel"]),
                             bool(a["linear_path"]))
    if a["kind"] == "shift2d":
        check_shift_latent(k)
        if a["content"] == "basis":
            m, hidden = int(a["modes"]), [int(h) for h in a["hidden"]]
            content = BasisDecoder(k - 4, n, m, _mlp([k - 4, *hidden, m]))
        else:
            content = _conv2d_decoder(a, k - 4, n)
        return ShiftDecoder(k, n, content, int(a["fields"]),
                            int(a["ny"]), int(a["nx"]))
    return _conv2d_decoder(a, k, n)


def _conv2d_decoder(a: dict[str, Any], k: int, n: int) -> Conv2dDecoder:
    return Conv2dDecoder(k, n, int(a["fields"]), int(a["ny"]), int(a["nx"]),
                         [int(c) for c in a["channels"]], int(a["kernel"]),
                         bool(a["linear_path"]))


def roll_augment(x: torch.Tensor, arch: dict[str, Any], generator: torch.Generator
                 ) -> torch.Tensor:
    """Random cyclic shift of a batch, the symmetry of the periodic systems.

    ``conv1d``: one shift of the ring per sample; ``conv2d``: one (dy, dx) shift of all
    fields per sample; ``mlp``: no augmentation (returns ``x``).
    """
    kind = arch.get("kind")
    B = x.shape[0]
    if kind == "conv1d":
        n = x.shape[1]
        s = torch.randint(0, n, (B, 1), generator=generator).to(x.device)
        idx = (torch.arange(n, device=x.device)[None, :] - s) % n
        return torch.gather(x, 1, idx)
    if kind == "conv2d":
        F, ny, nx = int(arch["fields"]), int(arch["ny"]), int(arch["nx"])
        sy = torch.randint(0, ny, (B, 1, 1), generator=generator).to(x.device)
        sx = torch.randint(0, nx, (B, 1, 1), generator=generator).to(x.device)
        iy = (torch.arange(ny, device=x.device)[None, :, None] - sy) % ny
        ix = (torch.arange(nx, device=x.device)[None, None, :] - sx) % nx
        flat = (iy * nx + ix).reshape(B, 1, ny * nx).expand(B, F, ny * nx)
        return torch.gather(x.view(B, F, ny * nx), 2, flat).reshape(B, -1)
    return x
