"""RealNVP normalizing-flow prior (Dinh, Sohl-Dickstein & Bengio 2017).

The flow is a bijection ``f`` from the standardized state ``u = (x - shift) / scale``
onto a latent ``z`` of the same size with base ``N(0, I)``::

    z = f(u),    x = denormalize(f^-1(z)),
    log p(x) = log N(f(u); 0, I) + log |det df/du| - sum(log scale)

(the last term is the change of variables of the standardization, so ``log p``
is in *physical* units). ``encode(x) = f(u)`` and ``decode(z) = x`` are exact
inverses: the latent space has no reconstruction error.

``f`` is a stack of ``n_layers`` steps, each ``[ActNorm] -> [permutation] ->
affine coupling``:

- **affine coupling** (exact triangular log-det): the variables are split in a
  kept half ``a`` and a transformed half ``b``; ``b' = b * exp(s(a)) + t(a)``
  with ``s = bound * tanh(s_raw / bound)`` (a soft clamp of the log-scale for
  stability), ``log det = sum(s)``. The halves alternate from one step to the
  next. The conditioner's last layer starts at zero, so an untrained flow is
  the identity;
- **ActNorm** (Kingma & Dhariwal 2018): a learned affine map ``y = u exp(l) + c``,
  one ``(l, c)`` per variable (``mlp``/``linear``) or per ring parity
  (``conv1d``); :meth:`RealNVPPrior.initialize_from_data` sets it so that each
  step's input has zero mean and unit variance on the training data;
- **permutation**: a fixed random permutation (``mlp``/``linear`` only), stored
  as a buffer so ``.to(device)`` moves it and checkpoints restore it.

Optionally (``log_vars``), strictly positive variables such as populations enter
the flow as ``log x`` instead of their standardized value: decoded values are then
positive by construction, and a heavy right tail becomes a light one.

Conditioners follow the system's geometry (``arch`` as in
:mod:`latentda.priors.nets`):

- ``conv1d`` (Lorenz-96): the ring's even sites and odd sites alternate as the
  two halves; the conditioner is a stack of periodic (circular-padded) 1-D
  convolutions on the ``n/2`` kept sites, so the whole flow is equivariant
  under cyclic shifts by 2 sites (``n`` must be even; no permutations);
- ``mlp`` (Lotka–Volterra, small states): alternating halves of a permuted
  vector, MLP conditioners of widths ``arch.hidden``;
- ``linear``: affine conditioners (a flow of linear-conditioned couplings).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from latentda._validate import check_float, check_int
from latentda.priors.nets import _ResBlock1d, check_arch
from latentda.priors.prior_base import Prior, register

LOG2PI = math.log(2.0 * math.pi)
FLOW_ARCH_KINDS = ("mlp", "linear", "conv1d")


# ----------------------------------------------------------------------------- layers
class _ActNorm(nn.Module):
    """``y = u * exp(logs[g]) + bias[g]`` with one ``(logs, bias)`` per group ``g``."""

    def __init__(self, groups: torch.Tensor) -> None:
        super().__init__()
        n_groups = int(groups.max()) + 1
        self.register_buffer("groups", groups.clone(), persistent=False)
        self.logs = nn.Parameter(torch.zeros(n_groups))
        self.bias = nn.Parameter(torch.zeros(n_groups))

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logs = self.logs[self.groups]
        y = u * torch.exp(logs) + self.bias[self.groups]
        return y, logs.sum().expand(u.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.bias[self.groups]) * torch.exp(-self.logs[self.groups])

    @torch.no_grad()
    def initialize(self, u: torch.Tensor) -> None:
        """Zero mean, unit variance per group on the batch ``u``."""
        G = self.logs.numel()
        cnt = torch.zeros(G, dtype=u.dtype, device=u.device).index_add_(
            0, self.groups, torch.full_like(self.groups, u.shape[0], dtype=u.dtype))
        mean = torch.zeros(G, dtype=u.dtype, device=u.device).index_add_(
            0, self.groups, u.sum(0)) / cnt
        d = u - mean[self.groups]
        var = torch.zeros(G, dtype=u.dtype, device=u.device).index_add_(
            0, self.groups, (d * d).sum(0)) / cnt
        std = torch.sqrt(var).clamp_min(1e-6)
        self.logs.copy_(-torch.log(std))
        self.bias.copy_(-mean / std)


class _Permute(nn.Module):
    """A fixed permutation of the variables (log-det 0), kept as a buffer."""

    def __init__(self, perm: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("perm", perm.clone())
        self.register_buffer("inv", torch.argsort(perm), persistent=False)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return u[:, self.perm], u.new_zeros(u.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.inv]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.inv = torch.argsort(self.perm)


class _MLPConditioner(nn.Module):
    """Kept half ``(B, n_a)`` -> ``(s_raw, t)``, each ``(B, n_b)``; last layer zero."""

    def __init__(self, n_a: int, n_b: int, hidden: list[int]) -> None:
        super().__init__()
        sizes = [n_a, *hidden, 2 * n_b]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.GELU())
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.n_b = n_b

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(a)
        return h[:, :self.n_b], h[:, self.n_b:]


class _ConvConditioner(nn.Module):
    """Kept sites of the ring ``(B, m)`` -> ``(s_raw, t)`` on the other ``m`` sites.

    Periodic convolutions on the half ring: circular conv ``1 -> C``, ``blocks``
    residual blocks, circular conv ``C -> 2`` (zero-initialized).
    """

    def __init__(self, channels: int, blocks: int, kernel: int) -> None:
        super().__init__()
        p = kernel // 2
        self.inp = nn.Conv1d(1, channels, kernel, padding=p, padding_mode="circular")
        self.blocks = nn.Sequential(*[_ResBlock1d(channels, kernel) for _ in range(blocks)])
        self.out = nn.Conv1d(channels, 2, kernel, padding=p, padding_mode="circular")
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.blocks(self.inp(a[:, None, :]))
        o = self.out(torch.nn.functional.gelu(h))
        return o[:, 0], o[:, 1]


class _AffineCoupling(nn.Module):
    """``b' = b * exp(s(a)) + t(a)`` on the index sets ``kept`` (a) and ``trans`` (b)."""

    def __init__(self, kept: torch.Tensor, trans: torch.Tensor, conditioner: nn.Module,
                 bound: float) -> None:
        super().__init__()
        self.register_buffer("kept", kept.clone(), persistent=False)
        self.register_buffer("trans", trans.clone(), persistent=False)
        self.cond = conditioner
        self.bound = float(bound)

    def _st(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_raw, t = self.cond(a)
        return self.bound * torch.tanh(s_raw / self.bound), t

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(u[:, self.kept])
        b = u[:, self.trans] * torch.exp(s) + t
        return u.index_copy(1, self.trans, b), s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._st(y[:, self.kept])
        b = (y[:, self.trans] - t) * torch.exp(-s)
        return y.index_copy(1, self.trans, b)


# ----------------------------------------------------------------------------- prior
def _check_dtype(dtype: Any) -> torch.dtype:
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64' (got {dtype!r})")
    return getattr(torch, dtype)


@register
class RealNVPPrior(Prior):
    """RealNVP flow with latent size = state size (see the module docstring).

    Parameters
    ----------
    state_dim : int
        ``n`` (>= 2; even for ``conv1d``). The latent size equals ``n``.
    arch : dict, optional
        Conditioner architecture (:func:`latentda.priors.nets.check_arch`):
        ``{"kind": "conv1d", "channels", "blocks", "kernel"}`` (periodic convolutions
        on the ring; ``linear_path`` is ignored), ``{"kind": "mlp", "hidden": [...]}``
        (default ``{"kind": "mlp"}``) or ``{"kind": "linear"}``.
    n_layers : int
        Coupling steps (>= 1; even so every variable is transformed equally often).
    hidden : int, optional
        Shortcut for the conditioner width: ``mlp`` sets every hidden layer of
        ``arch.hidden`` to it, ``conv1d`` sets ``arch.channels``.
    scale_bound : float
        Bound of each coupling's log-scale, ``|s| <= scale_bound`` (> 0).
    permute : bool, optional
        Fixed random permutations before each coupling (default: True for ``mlp``
        and ``linear``; must be False for ``conv1d``, where they would break the
        translation equivariance).
    actnorm : bool
        An ActNorm layer at the start of each step.
    perm_seed : int
        Seed of the permutations (>= 0).
    grad_clip : float, optional
        Gradient-norm clip of a training step (> 0; None: no clipping).
    log_vars : list of int, optional
        Indices of strictly positive variables (populations, concentrations) that
        the flow models in log space: ``w_i = log x_i`` is the first bijection, so
        decoded values are positive by construction and heavy right tails become
        light ones. States with such a variable ``<= 0`` have ``log_prob = -inf``
        (``encode`` clamps them to the smallest positive number).
    dtype : str
        ``float32`` (default) or ``float64``.

    Raises
    ------
    ValueError
        Naming the parameter at fault.
    """

    family = "flow"

    def __init__(self, state_dim: int, arch: dict[str, Any] | None = None, n_layers: int = 8,
                 hidden: int | None = None, scale_bound: float = 2.0,
                 permute: bool | None = None, actnorm: bool = True, perm_seed: int = 0,
                 grad_clip: float | None = 10.0, log_vars: list[int] | None = None,
                 dtype: str = "float32") -> None:
        tdtype = _check_dtype(dtype)
        n = check_int("state_dim", state_dim, min_value=2)
        super().__init__(n, n, tdtype)
        arch = dict(arch or {"kind": "mlp"})
        if arch.get("kind") not in FLOW_ARCH_KINDS:
            raise ValueError(f"arch.kind must be one of {FLOW_ARCH_KINDS} for the flow family "
                             f"(got {arch.get('kind')!r})")
        if hidden is not None:
            hidden = check_int("hidden", hidden, min_value=1)
            if arch["kind"] == "mlp":
                arch["hidden"] = [hidden] * len(arch.get("hidden", [0, 0]))
            elif arch["kind"] == "conv1d":
                arch["channels"] = hidden
        arch = check_arch(arch, n)
        kind = arch["kind"]
        if kind == "conv1d":
            if n % 2:
                raise ValueError(f"state_dim must be even for arch kind conv1d (the ring is "
                                 f"split into even and odd sites; got {n})")
            for key in ("channels", "blocks", "kernel"):
                check_int(f"arch.{key}", arch[key], min_value=0 if key == "blocks" else 1)
        n_layers = check_int("n_layers", n_layers, min_value=1)
        scale_bound = check_float("scale_bound", scale_bound, positive=True)
        if permute is None:
            permute = kind != "conv1d"
        if not isinstance(permute, bool):
            raise ValueError(f"permute must be True, False or None (got {permute!r})")
        if permute and kind == "conv1d":
            raise ValueError("permute must be False for arch kind conv1d (random permutations "
                             "break the ring's translation equivariance)")
        if not isinstance(actnorm, bool):
            raise ValueError(f"actnorm must be True or False (got {actnorm!r})")
        perm_seed = check_int("perm_seed", perm_seed, min_value=0)
        if grad_clip is not None:
            grad_clip = check_float("grad_clip", grad_clip, positive=True)
        if log_vars is not None:
            if not isinstance(log_vars, list | tuple) or any(
                    isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in log_vars
            ) or len(set(log_vars)) != len(log_vars) or not all(0 <= i < n for i in log_vars):
                raise ValueError(f"log_vars must be a list of distinct variable indices in "
                                 f"[0, {n - 1}] (got {log_vars!r})")
            log_vars = sorted(int(i) for i in log_vars) or None
        self.log_vars = log_vars
        self.register_buffer("log_idx", torch.tensor(log_vars or [], dtype=torch.long),
                             persistent=False)
        self.arch = arch
        self.n_layers, self.scale_bound = n_layers, scale_bound
        self.permute, self.actnorm = permute, actnorm
        self.perm_seed, self.grad_clip = perm_seed, grad_clip
        self._dtype_name = dtype

        idx = torch.arange(n)
        gen = torch.Generator().manual_seed(self.perm_seed)
        steps: list[nn.Module] = []
        for i in range(self.n_layers):
            if actnorm:
                steps.append(_ActNorm(idx % 2 if kind == "conv1d" else idx))
            if permute:
                steps.append(_Permute(torch.randperm(n, generator=gen)))
            if kind == "conv1d":
                p = i % 2
                kept, trans = idx[p::2], idx[1 - p::2]
                cond: nn.Module = _ConvConditioner(int(arch["channels"]), int(arch["blocks"]),
                                                   int(arch["kernel"]))
            else:
                half = n // 2
                kept, trans = (idx[:half], idx[half:]) if i % 2 == 0 else (idx[half:],
                                                                           idx[:half])
                hid = [] if kind == "linear" else [int(h) for h in arch["hidden"]]
                cond = _MLPConditioner(len(kept), len(trans), hid)
            steps.append(_AffineCoupling(kept, trans, cond, self.scale_bound))
        self.steps = nn.ModuleList(steps)
        self.steps.to(self.dtype)

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "arch": self.arch, "n_layers": self.n_layers,
                "hidden": None, "scale_bound": self.scale_bound, "permute": self.permute,
                "actnorm": self.actnorm, "perm_seed": self.perm_seed,
                "grad_clip": self.grad_clip, "log_vars": self.log_vars,
                "dtype": self._dtype_name}

    # ------------------------------------------------------------------ the flow
    def _steps_forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = v.new_zeros(v.shape[0])
        for step in self.steps:
            v, ld = step(v)
            logdet = logdet + ld
        return v, logdet

    def _steps_inverse(self, z: torch.Tensor) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z

    def _safe_log(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))

    def forward_and_logdet(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f(u)`` and ``log |det df/du|`` per row, on *standardized* states ``u``."""
        if self.log_vars is None:
            return self._steps_forward(u)
        L = self.log_idx
        w = self._safe_log(u[:, L] * self.scale[L] + self.shift[L])
        z, logdet = self._steps_forward(u.index_copy(1, L, w))
        return z, logdet + (torch.log(self.scale[L]) - w).sum(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``u = f^-1(z)``: latent -> *standardized* state."""
        v = self._steps_inverse(z)
        if self.log_vars is None:
            return v
        L = self.log_idx
        return v.index_copy(1, L, (torch.exp(v[:, L]) - self.shift[L]) / self.scale[L])

    def _x_to_v(self, x: torch.Tensor) -> torch.Tensor:
        """Physical state -> flow input: standardized, log variables as ``log x``."""
        v = self.normalize(x)
        if self.log_vars is not None:
            v = v.index_copy(1, self.log_idx, self._safe_log(x[:, self.log_idx]))
        return v

    def encode_t(self, x: torch.Tensor) -> torch.Tensor:
        return self._steps_forward(self._x_to_v(x))[0]

    def decode_t(self, z: torch.Tensor) -> torch.Tensor:
        v = self._steps_inverse(z)
        x = self.denormalize(v)
        if self.log_vars is not None:  # exp directly: positive, no cancellation
            x = x.index_copy(1, self.log_idx, torch.exp(v[:, self.log_idx]))
        return x

    def _log_prob_n(self, u: torch.Tensor) -> torch.Tensor:
        """``log p(u)`` of standardized states (network dtype)."""
        z, logdet = self.forward_and_logdet(u)
        return -0.5 * (z * z).sum(1) - 0.5 * self.state_dim * LOG2PI + logdet

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` per state in physical units (float64; ``-inf`` off the support).

        ``log N(z; 0, I) + log|det dz/dv| + log|det dv/dx|`` with ``v`` the flow input:
        ``dv_i/dx_i = 1 / scale_i``, or ``1 / x_i`` for a log variable.
        """
        z, logdet = self._steps_forward(self._x_to_v(x))
        lp = (-0.5 * (z * z).sum(1) + logdet).double() - 0.5 * self.state_dim * LOG2PI
        if self.log_vars is None:
            return lp - torch.log(self.scale.double()).sum()
        keep = torch.ones(self.state_dim, dtype=torch.bool, device=x.device)
        keep[self.log_idx] = False
        xl = x[:, self.log_idx].double()
        lp = lp - torch.log(self.scale.double()[keep]).sum() - self._safe_log(xl).sum(1)
        return torch.where((xl > 0).all(1), lp, -math.inf)

    @torch.no_grad()
    def initialize_from_data(self, X: np.ndarray, max_states: int = 8192) -> None:
        """Data-dependent ActNorm init: each step's input gets zero mean, unit variance.

        Parameters
        ----------
        X : ndarray, shape (N, n)
            Physical training states (the first ``max_states`` are used); the
            normalization must already be set.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.state_dim or X.shape[0] < 2:
            raise ValueError(f"X must have shape (N >= 2, {self.state_dim}) (got {X.shape})")
        u = self._x_to_v(torch.as_tensor(X[:int(max_states)], dtype=self.dtype,
                                         device=self.device))
        for step in self.steps:
            if isinstance(step, _ActNorm):
                step.initialize(u)
            u = step(u)[0]

    # ------------------------------------------------------------------ training
    def training_loss(self, xn: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean negative log-likelihood of a standardized batch (nats per state)."""
        nll = -self._log_prob_n(xn).mean()
        return nll, {"nll_standardized": float(nll.detach())}

    @torch.no_grad()
    def validation_metrics(self, X: np.ndarray) -> dict[str, float]:
        """``val_loss`` = ``nll``: mean ``-log p(x)`` per state, physical units (nats)."""
        X = np.asarray(X, dtype=np.float64)
        lp = np.concatenate([self.log_prob(X[i:i + 1024]) for i in range(0, X.shape[0], 1024)])
        nll = float(-lp.mean()) if np.isfinite(lp).all() else math.inf
        return {"val_loss": nll, "nll": nll}
