"""Amortized neural posterior estimation (NPE) with a conditional normalizing flow.

:class:`ConditionalFlow` is a density ``q(theta | s)`` over ``theta`` in ``R^d`` given a
context ``s`` in ``R^p``: an embedding network ``e(s)``, concatenated with ``s`` itself
(a linear path) into ``h = [e(s), s]``, feeds

1. a conditional element-wise affine layer ``u = (theta - mu(h)) * exp(-log_sigma(h))``
   (alone it is a conditional diagonal Gaussian), then
2. ``n_layers`` conditional affine coupling layers (RealNVP, Dinh et al. 2017) with
   alternating masks: the masked half ``u_B`` becomes ``u_B * exp(a) + b`` with
   ``(a, b) = net(u_A, h)`` and ``a`` soft-clamped to ``[-clamp, clamp]``,

onto a standard normal base, so ``log q(theta | s) = log N(z; 0, I) + sum log|det|`` is exact
and sampling inverts the layers. The maths of each layer (``forward``/``inverse`` with
log-determinants) lives in the layer modules; :class:`NeuralPosterior` owns the data
transforms and training:

- ``theta``: optionally mapped from a box ``[low, high]`` to ``R^d`` by a logit (so samples
  always lie in the prior's support; the Jacobian enters ``log_prob``), then standardized;
- ``s``: standardized by its training median and inter-quartile scale and, by default,
  squashed by ``asinh`` so heavy-tailed summaries do not dominate; or (``input_transform=
  "quantile"``) mapped to normal scores through its training quantiles, piecewise linearly,
  so every summary enters marginally standard normal whatever its skew or tails (any fixed
  invertible map of ``s`` leaves the posterior unchanged; only the ease of learning
  changes);
- training maximizes ``log q(theta_i | s_i)`` over simulated pairs with Adam, early stopping
  on a validation split (the best weights are kept); ``input_noise`` adds fresh Gaussian
  noise to ``s`` in every batch, i.e. trains for the noisy-summary model
  ``s_obs = s + noise`` (the Gaussian-kernel ABC posterior of
  :mod:`latentda.inference.smc_abc`).

:class:`NeuralPosteriorEnsemble` averages ``K`` independently trained posteriors as an
equal-weight mixture ``(1/K) sum_k q_k(theta | s)``: still amortized (no training per
observation), and the part of each network's error that varies from one training run to
the next (initialization, batch order, its simulations) averages out of the mixture's
moments.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentda._validate import check_float, check_int

__all__ = ["ConditionalAffineCoupling", "ConditionalElementwiseAffine", "ConditionalFlow",
           "NeuralPosterior", "NeuralPosteriorEnsemble"]

_LOG_2PI = math.log(2.0 * math.pi)


def _mlp(n_in: int, n_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    last = nn.Linear(width, n_out)
    nn.init.zeros_(last.weight)  # every layer starts as the identity
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class ConditionalElementwiseAffine(nn.Module):
    """``u = (x - mu(h)) * exp(-log_sigma(h))`` with ``(mu, log_sigma) = net(h)``."""

    def __init__(self, dim: int, context_dim: int, hidden: int, depth: int = 2,
                 clamp: float = 8.0) -> None:
        super().__init__()
        self.dim = dim
        self.clamp = clamp
        self.net = _mlp(context_dim, 2 * dim, hidden, depth)

    def _params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, ls = self.net(h).chunk(2, dim=-1)
        return mu, self.clamp * torch.tanh(ls / self.clamp)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map towards the base; returns ``(u, log|det du/dx|)``."""
        mu, ls = self._params(h)
        return (x - mu) * torch.exp(-ls), -ls.sum(dim=-1)

    def inverse(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Map from the base side back."""
        mu, ls = self._params(h)
        return u * torch.exp(ls) + mu


class ConditionalAffineCoupling(nn.Module):
    """RealNVP coupling: ``y_A = x_A``, ``y_B = x_B * exp(a) + b``, ``(a, b) = net(x_A, h)``.

    Parameters
    ----------
    mask : sequence of bool, length d
        True for the conditioning half ``A`` (copied), False for the transformed half ``B``.
    context_dim : int
        Size of the context embedding ``h``.
    hidden, depth : int
        Width and number of hidden layers of the conditioner.
    clamp : float
        Bound on ``|a|`` (soft, through ``tanh``).
    """

    def __init__(self, mask: Any, context_dim: int, hidden: int, depth: int = 2,
                 clamp: float = 3.0) -> None:
        super().__init__()
        m = torch.as_tensor(np.asarray(mask, dtype=bool))
        self.register_buffer("idx_a", torch.nonzero(m).flatten())
        self.register_buffer("idx_b", torch.nonzero(~m).flatten())
        self.clamp = clamp
        n_a, n_b = int(m.sum()), int((~m).sum())
        if n_b == 0:
            raise ValueError("mask must leave at least one dimension to transform")
        self.net = _mlp(n_a + context_dim, 2 * n_b, hidden, depth)

    def _params(self, xa: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.net(torch.cat([xa, h], dim=-1)).chunk(2, dim=-1)
        return self.clamp * torch.tanh(a / self.clamp), b

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map towards the base; returns ``(y, log|det dy/dx|)``."""
        a, b = self._params(x[:, self.idx_a], h)
        y = x.clone()
        y[:, self.idx_b] = x[:, self.idx_b] * torch.exp(a) + b
        return y, a.sum(dim=-1)

    def inverse(self, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`forward` (the conditioning half is unchanged)."""
        a, b = self._params(y[:, self.idx_a], h)
        x = y.clone()
        x[:, self.idx_b] = (y[:, self.idx_b] - b) * torch.exp(-a)
        return x


def _masks(d: int, n: int) -> list[np.ndarray]:
    """Alternating masks: halves, then their complements, then even/odd, ..."""
    if d == 1:
        return []
    base = [np.arange(d) < d // 2, np.arange(d) % 2 == 0]
    out: list[np.ndarray] = []
    k = 0
    while len(out) < n:
        m = base[(k // 2) % 2]
        out.append(m if k % 2 == 0 else ~m)
        k += 1
    return out


class ConditionalFlow(nn.Module):
    """Conditional normalizing flow ``q(x | s)`` on ``R^d`` (standardized coordinates).

    Parameters
    ----------
    dim : int
        Dimension ``d`` of ``x`` (>= 1).
    context_dim : int
        Dimension ``p`` of ``s`` (>= 1).
    n_layers : int
        Number of coupling layers (>= 0; ignored when ``d == 1``).
    hidden : int
        Width of every hidden layer.
    embed_dim : int
        Size of the context embedding.
    depth : int
        Hidden layers per conditioner network.
    """

    def __init__(self, dim: int, context_dim: int, n_layers: int = 6, hidden: int = 64,
                 embed_dim: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Sequential(nn.Linear(context_dim, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden), nn.SiLU(),
                                   nn.Linear(hidden, embed_dim))
        ctx = embed_dim + context_dim
        self.first = ConditionalElementwiseAffine(dim, ctx, hidden, depth)
        self.couplings = nn.ModuleList(
            ConditionalAffineCoupling(m, ctx, hidden, depth) for m in _masks(dim, n_layers))

    def context(self, s: torch.Tensor) -> torch.Tensor:
        """Conditioner input: the learned embedding of ``s`` next to ``s`` itself."""
        return torch.cat([self.embed(s), s], dim=-1)

    def log_prob(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``log q(x | s)`` for rows of ``x`` (n, d) and ``s`` (n, p); shape (n,)."""
        h = self.context(s)
        z, ld = self.first(x, h)
        for layer in self.couplings:
            z, l_ = layer(z, h)
            ld = ld + l_
        return ld - 0.5 * (z * z).sum(dim=-1) - 0.5 * self.dim * _LOG_2PI

    def sample(self, s: torch.Tensor, generator: torch.Generator | None = None,
               ) -> torch.Tensor:
        """One draw ``x ~ q(. | s_i)`` per row of ``s`` (n, p); shape (n, d)."""
        h = self.context(s)
        z = torch.randn(s.shape[0], self.dim, generator=generator, dtype=s.dtype,
                        device=s.device)
        for layer in reversed(self.couplings):
            z = layer.inverse(z, h)
        return self.first.inverse(z, h)


def _quantile_knots(c: np.ndarray, n_knots: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per column: strictly increasing quantiles of ``c`` and their normal scores."""
    z = np.linspace(-3.5, 3.5, n_knots)
    probs = 0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in z])
    q = np.quantile(c, probs, axis=0)
    xs, zs = [], []
    for j in range(c.shape[1]):
        keep = np.concatenate([[True], np.diff(q[:, j]) > 0])   # drop tied knots
        if keep.sum() < 2:                                        # a constant column
            xs.append(np.array([q[0, j] - 1.0, q[0, j] + 1.0]))
            zs.append(np.array([-1.0, 1.0]))
        else:
            xs.append(q[keep, j].copy())
            zs.append(z[keep].copy())
    return xs, zs


def _normal_scores(c: torch.Tensor, xs: list[np.ndarray], zs: list[np.ndarray]) -> torch.Tensor:
    """Piecewise-linear map of each column through its knots ``(xs[j], zs[j])``, extrapolated
    linearly with the end segments (monotone, invertible)."""
    cols = []
    for j in range(c.shape[1]):
        kx = torch.as_tensor(xs[j], dtype=c.dtype)
        kz = torch.as_tensor(zs[j], dtype=c.dtype)
        v = c[:, j].contiguous()
        i = torch.searchsorted(kx, v).clamp(1, kx.numel() - 1)
        x0, x1, z0, z1 = kx[i - 1], kx[i], kz[i - 1], kz[i]
        cols.append(z0 + (v - x0) * (z1 - z0) / (x1 - x0))
    return torch.stack(cols, dim=1)


class NeuralPosterior:
    """Amortized posterior ``q(theta | s)``: a :class:`ConditionalFlow` and its data transforms.

    Parameters
    ----------
    theta_dim : int
        Number of parameters ``d`` (>= 1).
    s_dim : int
        Number of summaries ``p`` (>= 1).
    bounds : tuple of array_like, optional
        ``(low, high)`` of a box prior: ``theta`` is modelled through
        ``logit((theta - low) / (high - low))``, so every sample lies inside.
    squash_inputs : bool
        Apply ``asinh`` to the standardized summaries (used when ``input_transform`` is
        None).
    input_transform : {"asinh", "none", "quantile"}, optional
        How each summary enters the network: ``"asinh"`` of the median/IQR-standardized
        value, the standardized value itself (``"none"``), or its normal score
        ``Phi^-1(F(s))`` with ``F`` the training split's empirical CDF, interpolated
        linearly between ``n_knots`` quantiles (at normal scores evenly spaced on
        [-3.5, 3.5]) and extrapolated linearly beyond them (``"quantile"``). Default:
        ``"asinh"`` if ``squash_inputs`` else ``"none"``.
    n_knots : int
        Quantile knots per summary for ``"quantile"`` (>= 3).
    n_layers, hidden, embed_dim, depth : int
        Flow size (see :class:`ConditionalFlow`).
    dtype : {"float32", "float64"}
        Precision of the network (the data transforms and returned log-densities are
        float64; float32 trains about 1.5x faster on CPU).
    seed : int
        Seed of the weight initialization.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> s = rng.standard_normal((500, 1))
    >>> theta = 2 * s + 0.5 * rng.standard_normal((500, 1))
    >>> q = NeuralPosterior(1, 1, squash_inputs=False, hidden=16)
    >>> _ = q.fit(theta, s, max_epochs=2)
    >>> q.sample(np.array([1.0]), 10, seed=0).shape
    (10, 1)
    """

    def __init__(self, theta_dim: int, s_dim: int, *, bounds: tuple[Any, Any] | None = None,
                 squash_inputs: bool = True, input_transform: str | None = None,
                 n_knots: int = 71, n_layers: int = 6, hidden: int = 64,
                 embed_dim: int = 32, depth: int = 2, dtype: str = "float32",
                 seed: int = 0) -> None:
        self.theta_dim = check_int("theta_dim", theta_dim, min_value=1)
        self.s_dim = check_int("s_dim", s_dim, min_value=1)
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64' (got {dtype!r})")
        self._dtype = torch.float32 if dtype == "float32" else torch.float64
        if not isinstance(squash_inputs, bool | np.bool_):
            raise ValueError(f"squash_inputs must be True or False (got {squash_inputs!r})")
        self.squash_inputs = bool(squash_inputs)
        if input_transform is None:
            input_transform = "asinh" if self.squash_inputs else "none"
        if input_transform not in ("asinh", "none", "quantile"):
            raise ValueError(f"input_transform must be 'asinh', 'none' or 'quantile' "
                             f"(got {input_transform!r})")
        self.input_transform = input_transform
        n_knots = check_int("n_knots", n_knots, min_value=3)
        self.config = {
            "theta_dim": self.theta_dim, "s_dim": self.s_dim,
            "n_layers": check_int("n_layers", n_layers, min_value=0),
            "hidden": check_int("hidden", hidden, min_value=1),
            "embed_dim": check_int("embed_dim", embed_dim, min_value=1),
            "depth": check_int("depth", depth, min_value=1),
            "squash_inputs": self.squash_inputs,
            "input_transform": self.input_transform,
            "n_knots": n_knots,
            "dtype": dtype,
            "seed": check_int("seed", seed, min_value=0),
        }
        if bounds is not None:
            try:
                low, high = bounds
                low = np.asarray(low, dtype=np.float64).reshape(-1)
                high = np.asarray(high, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"bounds must be (low, high), each of {theta_dim} numbers "
                                 f"(got {bounds!r})") from None
            if (low.size != theta_dim or high.size != theta_dim
                    or not (np.isfinite(low).all() and np.isfinite(high).all())
                    or np.any(high <= low)):
                raise ValueError(f"bounds must be (low, high), each of {theta_dim} finite "
                                 f"numbers with high > low (got {bounds!r})")
            self.config["bounds"] = (low.tolist(), high.tolist())
        else:
            self.config["bounds"] = None
        torch.manual_seed(self.config["seed"])
        self.flow = ConditionalFlow(theta_dim, s_dim, self.config["n_layers"],
                                    self.config["hidden"], self.config["embed_dim"],
                                    self.config["depth"]).to(self._dtype)
        self._s_loc = np.zeros(s_dim)
        self._s_scale = np.ones(s_dim)
        self._s_knots: list[np.ndarray] = []
        self._z_knots: list[np.ndarray] = []
        self._x_loc = np.zeros(theta_dim)
        self._x_scale = np.ones(theta_dim)
        self.fitted = False
        self.history: dict[str, Any] = {}

    # ---------------------------------------------------------------- transforms

    def _check_theta(self, theta: Any) -> np.ndarray:
        th = np.asarray(theta, dtype=np.float64)
        if th.ndim == 1:
            th = th[None, :]
        if th.ndim != 2 or th.shape[1] != self.theta_dim or not np.isfinite(th).all():
            raise ValueError(f"theta must be finite with shape (n, {self.theta_dim}) "
                             f"(got {np.shape(theta)})")
        return th

    def _check_s(self, s: Any) -> np.ndarray:
        arr = np.asarray(s, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.s_dim or not np.isfinite(arr).all():
            raise ValueError(f"s must be finite with shape (n, {self.s_dim}) or "
                             f"({self.s_dim},) (got {np.shape(s)})")
        return arr

    def _to_x(self, th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unconstrained standardized ``x`` and ``log|d x / d theta|`` per row."""
        ld = np.full(th.shape[0], -float(np.sum(np.log(self._x_scale))))
        b = self.config["bounds"]
        if b is not None:
            low, high = np.asarray(b[0]), np.asarray(b[1])
            u = (th - low) / (high - low)
            with np.errstate(divide="ignore", invalid="ignore"):
                y = np.log(u) - np.log1p(-u)
                ld = ld + np.sum(-np.log(u) - np.log1p(-u) - np.log(high - low), axis=1)
        else:
            y = th
        return (y - self._x_loc) / self._x_scale, ld

    def _from_x(self, x: np.ndarray) -> np.ndarray:
        y = x * self._x_scale + self._x_loc
        b = self.config["bounds"]
        if b is None:
            return y
        low, high = np.asarray(b[0]), np.asarray(b[1])
        return low + (high - low) / (1.0 + np.exp(-y))

    def _to_c(self, s: np.ndarray) -> np.ndarray:
        c = (s - self._s_loc) / self._s_scale
        if self.input_transform == "asinh":
            return np.arcsinh(c)
        if self.input_transform == "quantile":
            return _normal_scores(torch.as_tensor(c), self._s_knots, self._z_knots).numpy()
        return c

    # ---------------------------------------------------------------- training

    def fit(self, theta: Any, s: Any, *, input_noise: Any = None,
            validation_fraction: float = 0.1, batch_size: int = 256, lr: float = 1e-3,
            weight_decay: float = 0.0, max_epochs: int = 200, patience: int = 20,
            max_seconds: float | None = None, seed: int = 0,
            verbose: bool = False) -> dict[str, Any]:
        """Train on simulated pairs by maximum likelihood with early stopping.

        Parameters
        ----------
        theta : array_like, shape (n, d)
            Parameters drawn from the prior (inside ``bounds`` if given).
        s : array_like, shape (n, p)
            Their simulated summaries.
        input_noise : array_like, shape (p,), optional
            Standard deviations of Gaussian noise added to ``s`` afresh in every batch
            (training for the model ``s_obs = s + noise``).
        validation_fraction : float
            Fraction held out for early stopping, in (0, 0.5].
        batch_size : int
        lr : float
            Initial AdamW learning rate (> 0), cosine-decayed to ``lr / 50`` over
            ``max_epochs`` or ``max_seconds``, whichever runs out first.
        weight_decay : float
            AdamW weight decay (>= 0).
        max_epochs : int
        patience : int
            Epochs without a validation improvement before stopping (>= 1).
        max_seconds : float, optional
            Wall-time budget; training stops after the epoch that exceeds it.
        seed : int
            Split, batch order and noise.
        verbose : bool
            Print one line per epoch.

        Returns
        -------
        dict
            ``train_loss``, ``val_loss`` (per epoch, mean negative log-likelihood in the
            standardized coordinates), ``best_epoch``, ``epochs``, ``seconds``,
            ``stopped`` (``"patience"``, ``"max_epochs"`` or ``"max_seconds"``).
        """
        th = self._check_theta(theta)
        S = self._check_s(s)
        if th.shape[0] != S.shape[0]:
            raise ValueError(f"theta and s must have the same number of rows "
                             f"(got {th.shape[0]} and {S.shape[0]})")
        noise = None
        if input_noise is not None:
            noise = np.asarray(input_noise, dtype=np.float64).reshape(-1)
            if noise.size != self.s_dim or not np.isfinite(noise).all() or np.any(noise < 0):
                raise ValueError(f"input_noise must be {self.s_dim} finite numbers >= 0 "
                                 f"(got {input_noise!r})")
        validation_fraction = check_float("validation_fraction", validation_fraction)
        if not 0.0 < validation_fraction <= 0.5:
            raise ValueError(f"validation_fraction must be in (0, 0.5] "
                             f"(got {validation_fraction})")
        batch_size = check_int("batch_size", batch_size, min_value=1)
        lr = check_float("lr", lr, positive=True)
        weight_decay = check_float("weight_decay", weight_decay, nonnegative=True)
        max_epochs = check_int("max_epochs", max_epochs, min_value=1)
        patience = check_int("patience", patience, min_value=1)
        if max_seconds is not None:
            max_seconds = check_float("max_seconds", max_seconds, positive=True)
        n = th.shape[0]
        n_val = max(1, int(round(validation_fraction * n)))
        if n - n_val < 2:
            raise ValueError(f"need at least {n_val + 2} training pairs (got {n})")
        b = self.config["bounds"]
        if b is not None:
            low, high = np.asarray(b[0]), np.asarray(b[1])
            if np.any(th <= low) or np.any(th >= high):
                raise ValueError("theta must lie strictly inside bounds (low, high)")

        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        perm = rng.permutation(n)
        tr, va = perm[n_val:], perm[:n_val]
        # standardization from the training split (s with noise as it will be seen)
        s_tr = S[tr] if noise is None else S[tr] + noise * rng.standard_normal(S[tr].shape)
        med = np.median(s_tr, axis=0)
        q75, q25 = np.percentile(s_tr, [75, 25], axis=0)
        iqr = (q75 - q25) / 1.349
        std = s_tr.std(axis=0)
        self._s_loc = med
        self._s_scale = np.where(iqr > 0, iqr, np.where(std > 0, std, 1.0))
        if self.input_transform == "quantile":
            self._s_knots, self._z_knots = _quantile_knots(
                (s_tr - self._s_loc) / self._s_scale, self.config["n_knots"])
        self._x_loc = np.zeros(self.theta_dim)
        self._x_scale = np.ones(self.theta_dim)
        y_tr, _ = self._to_x(th[tr])
        self._x_loc = y_tr.mean(axis=0)
        sd = y_tr.std(axis=0)
        self._x_scale = np.where(sd > 0, sd, 1.0)

        dt = self._dtype
        X = torch.as_tensor(self._to_x(th)[0], dtype=dt)
        S_t = torch.as_tensor(S, dtype=dt)
        noise_t = None if noise is None else torch.as_tensor(noise, dtype=dt)
        s_loc = torch.as_tensor(self._s_loc, dtype=dt)
        s_scale = torch.as_tensor(self._s_scale, dtype=dt)
        transform = self.input_transform

        def context(Sb: torch.Tensor, noisy: bool) -> torch.Tensor:
            if noisy and noise_t is not None:
                Sb = Sb + noise_t * torch.randn(Sb.shape, generator=gen, dtype=Sb.dtype)
            c = (Sb - s_loc) / s_scale
            if transform == "asinh":
                return torch.asinh(c)
            if transform == "quantile":
                return _normal_scores(c, self._s_knots, self._z_knots)
            return c

        tr_t = torch.as_tensor(tr)
        Xv = X[torch.as_tensor(va)]
        # the validation noise is drawn once, so the criterion is not itself noisy
        Cv = context(S_t[torch.as_tensor(va)], noisy=True)
        opt = torch.optim.AdamW(self.flow.parameters(), lr=lr, weight_decay=weight_decay)
        best = math.inf
        best_state = copy.deepcopy(self.flow.state_dict())
        best_epoch = 0
        hist_tr: list[float] = []
        hist_va: list[float] = []
        stopped = "max_epochs"
        t0 = time.perf_counter()
        for epoch in range(max_epochs):
            progress = epoch / max_epochs
            if max_seconds is not None:
                progress = max(progress, (time.perf_counter() - t0) / max_seconds)
            for group in opt.param_groups:
                group["lr"] = lr / 50 + (lr - lr / 50) * 0.5 * (1 + math.cos(math.pi * progress))
            self.flow.train()
            order = tr_t[torch.randperm(tr_t.numel(), generator=gen)]
            tot, cnt = 0.0, 0
            for i in range(0, order.numel(), batch_size):
                idx = order[i:i + batch_size]
                loss = -self.flow.log_prob(X[idx], context(S_t[idx], noisy=True)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.flow.parameters(), 10.0)
                opt.step()
                tot += float(loss.detach()) * idx.numel()
                cnt += idx.numel()
            self.flow.eval()
            with torch.no_grad():
                vl = float(-self.flow.log_prob(Xv, Cv).mean())
            hist_tr.append(tot / cnt)
            hist_va.append(vl)
            if verbose:
                print(f"epoch {epoch}: train {tot / cnt:.4f} val {vl:.4f}")
            if vl < best - 1e-4:
                best, best_epoch = vl, epoch
                best_state = copy.deepcopy(self.flow.state_dict())
            elif epoch - best_epoch >= patience:
                stopped = "patience"
                break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                stopped = "max_seconds"
                break
        self.flow.load_state_dict(best_state)
        self.flow.eval()
        self.fitted = True
        self.history = {"train_loss": hist_tr, "val_loss": hist_va, "best_epoch": best_epoch,
                        "epochs": len(hist_tr), "seconds": time.perf_counter() - t0,
                        "stopped": stopped, "n_train": int(tr.size), "n_val": int(n_val)}
        return self.history

    # ---------------------------------------------------------------- inference

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ValueError("the NeuralPosterior is not trained: call fit() or load() first")

    def log_prob(self, theta: Any, s: Any) -> np.ndarray:
        """``log q(theta | s)`` in the original ``theta`` coordinates.

        Parameters
        ----------
        theta : array_like, shape (n, d) or (d,)
        s : array_like, shape (n, p) or (p,)
            One context per row of ``theta``, or one shared context.

        Returns
        -------
        ndarray, shape (n,)
            ``-inf`` outside ``bounds``.
        """
        self._require_fitted()
        th = self._check_theta(theta)
        S = self._check_s(s)
        if S.shape[0] == 1 and th.shape[0] > 1:
            S = np.broadcast_to(S, (th.shape[0], self.s_dim))
        if S.shape[0] != th.shape[0]:
            raise ValueError(f"s must have one row per theta row or a single row "
                             f"(got {S.shape[0]} and {th.shape[0]})")
        x, ld = self._to_x(th)
        out = np.full(th.shape[0], -np.inf)
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            with torch.no_grad():
                lq = self.flow.log_prob(torch.as_tensor(x[ok], dtype=self._dtype),
                                        torch.as_tensor(self._to_c(S[ok]), dtype=self._dtype))
            out[ok] = lq.double().numpy() + ld[ok]
        return out

    def sample(self, s: Any, n: int, seed: int | torch.Generator | None = None,
               ) -> np.ndarray:
        """``n`` draws from ``q(theta | s)``.

        Parameters
        ----------
        s : array_like, shape (p,) or (k, p)
            One context, or ``k`` contexts.
        n : int
            Draws per context (>= 1).
        seed : int or torch.Generator, optional

        Returns
        -------
        ndarray, shape (n, d) for one context, (k, n, d) for ``k`` contexts.
        """
        self._require_fitted()
        single = np.ndim(s) == 1
        S = self._check_s(s)
        n = check_int("n", n, min_value=1)
        gen = seed if isinstance(seed, torch.Generator) else (
            None if seed is None else torch.Generator().manual_seed(check_int("seed", seed,
                                                                              min_value=0)))
        C = np.repeat(self._to_c(S), n, axis=0)
        with torch.no_grad():
            x = self.flow.sample(torch.as_tensor(C, dtype=self._dtype),
                                 generator=gen).double().numpy()
        th = self._from_x(x).reshape(S.shape[0], n, self.theta_dim)
        return th[0] if single else th

    # ---------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        """Config, transforms and network weights (for :meth:`load`)."""
        self._require_fitted()
        return {"config": dict(self.config), "flow": self.flow.state_dict(),
                "s_loc": self._s_loc.tolist(), "s_scale": self._s_scale.tolist(),
                "s_knots": [k.tolist() for k in self._s_knots],
                "z_knots": [k.tolist() for k in self._z_knots],
                "x_loc": self._x_loc.tolist(), "x_scale": self._x_scale.tolist()}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` with ``torch.save``."""
        path = Path(path)
        torch.save(self.state_dict(), path)
        return path

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> NeuralPosterior:
        """Rebuild a trained posterior from :meth:`state_dict`."""
        cfg = dict(state["config"])
        bounds = cfg.pop("bounds")
        q = cls(cfg.pop("theta_dim"), cfg.pop("s_dim"), bounds=bounds, **cfg)
        q.flow.load_state_dict(state["flow"])
        q.flow.eval()
        q._s_loc = np.asarray(state["s_loc"])
        q._s_scale = np.asarray(state["s_scale"])
        q._s_knots = [np.asarray(k, dtype=np.float64) for k in state.get("s_knots", [])]
        q._z_knots = [np.asarray(k, dtype=np.float64) for k in state.get("z_knots", [])]
        q._x_loc = np.asarray(state["x_loc"])
        q._x_scale = np.asarray(state["x_scale"])
        q.fitted = True
        return q

    @classmethod
    def load(cls, path: str | Path) -> NeuralPosterior:
        """Load what :meth:`save` wrote (``weights_only`` loading)."""
        return cls.from_state_dict(torch.load(Path(path), weights_only=True))


class NeuralPosteriorEnsemble:
    """Equal-weight mixture ``(1/K) sum_k q_k(theta | s)`` of trained :class:`NeuralPosterior`.

    Parameters
    ----------
    members : sequence of NeuralPosterior
        ``K >= 1`` trained posteriors with the same ``theta_dim`` and ``s_dim`` (typically
        the same architecture, trained with different seeds and/or simulations).

    Notes
    -----
    :meth:`sample` draws ``n`` samples stratified over the members (``n // K`` or
    ``n // K + 1`` from each, then shuffled), which is an exact sample of the mixture's
    distribution conditional on the counts and has lower variance than drawing the
    component of each sample at random.
    """

    def __init__(self, members: Sequence[NeuralPosterior]) -> None:
        try:
            members = list(members)
        except TypeError:
            raise ValueError(f"members must be a sequence of trained NeuralPosterior "
                             f"(got {type(members).__name__})") from None
        if not members or not all(isinstance(m, NeuralPosterior) for m in members):
            raise ValueError("members must be a non-empty sequence of NeuralPosterior")
        for m in members:
            m._require_fitted()
        dims = {(m.theta_dim, m.s_dim) for m in members}
        if len(dims) != 1:
            raise ValueError(f"members must share theta_dim and s_dim (got {sorted(dims)})")
        self.members = members
        self.theta_dim, self.s_dim = dims.pop()

    def __len__(self) -> int:
        return len(self.members)

    def log_prob(self, theta: Any, s: Any) -> np.ndarray:
        """``log((1/K) sum_k q_k(theta | s))``, shape (n,); see :meth:`NeuralPosterior.log_prob`."""
        lp = np.stack([m.log_prob(theta, s) for m in self.members])
        top = lp.max(axis=0)
        safe = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            return safe + np.log(np.mean(np.exp(lp - safe), axis=0))

    def sample(self, s: Any, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` draws from the mixture, stratified over the members.

        Parameters
        ----------
        s : array_like, shape (p,) or (k, p)
        n : int
            Draws per context (>= 1).
        seed : int, optional

        Returns
        -------
        ndarray, shape (n, d) for one context, (k, n, d) for ``k`` contexts.
        """
        n = check_int("n", n, min_value=1)
        single = np.ndim(s) == 1
        K = len(self.members)
        counts = [n // K + (1 if i < n % K else 0) for i in range(K)]
        gen = None if seed is None else torch.Generator().manual_seed(
            check_int("seed", seed, min_value=0))
        parts = []
        for m, c in zip(self.members, counts, strict=True):
            if c:
                x = m.sample(s, c, seed=gen)
                parts.append(x[None] if single else x)
        x = np.concatenate(parts, axis=1)
        perm = np.random.default_rng(seed).permutation(n)
        x = x[:, perm]
        return x[0] if single else x

    def state_dict(self) -> dict[str, Any]:
        """The members' :meth:`NeuralPosterior.state_dict` (for :meth:`load`)."""
        return {"members": [m.state_dict() for m in self.members]}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` with ``torch.save``."""
        path = Path(path)
        torch.save(self.state_dict(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NeuralPosteriorEnsemble:
        """Load what :meth:`save` wrote (``weights_only`` loading)."""
        state = torch.load(Path(path), weights_only=True)
        return cls([NeuralPosterior.from_state_dict(m) for m in state["members"]])
