"""The protocol every generative prior implements, and checkpoint save/load.

A prior is a torch module on one ``device``. Its public calls take and return
numpy arrays of shape ``(N, ·)`` (members first), with one transfer to the
device and one back per call, so that filters (numpy, float64) never see torch:

- ``decode(Z) -> X``: the generator ``x = G(z)``;
- ``encode(X) -> Z``: an encoder or a projection onto the generator's range;
- ``sample(n, seed) -> X``; ``log_prob(X)`` where tractable;
- ``latent_dim``, ``state_dim``, ``device``, ``dtype``, ``residual_cov``.

Networks work on standardized states ``(x - shift) / scale``: the buffers
``shift`` and ``scale`` (set once from the training climatology by
:meth:`Prior.set_normalization`) travel with the checkpoint, and
:meth:`Prior.normalize` / :meth:`Prior.denormalize` convert. The off-manifold
residual ``x - G(E(x))`` is measured on held-out climatology by
:meth:`Prior.fit_residual` and stored as the buffers ``res_mean`` and
``res_cov`` (full ``(n, n)`` up to :data:`FULL_RESIDUAL_MAX` variables, the
diagonal ``(n,)`` above).

Training hooks used by :mod:`latentda.priors.training`: ``training_loss(x)``
(standardized batch -> scalar loss and logged floats), ``make_optimizers`` and
``train_step`` (overridden by two-player families such as the WGAN-GP), and
``validation_metrics`` (physical-unit quality numbers on a held-out batch).

Checkpoints hold the family, its constructor config and the ``state_dict``
(loaded with ``weights_only=True``); see :func:`save` and :func:`load`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

#: largest state dimension whose residual covariance is stored in full (else its diagonal)
FULL_RESIDUAL_MAX = 4096

#: family name -> class, filled by :func:`register`
FAMILIES: dict[str, type[Prior]] = {}

#: largest number of state values (rows x state_dim) pushed through a network at once by
#: the numpy wrappers; larger batches are split (memory, not results, changes)
MAX_BATCH_VALUES = 2**22


def register(cls: type[Prior]) -> type[Prior]:
    """Class decorator: make a prior family loadable by name."""
    FAMILIES[cls.family] = cls
    return cls


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available; "
                         "use device: auto (falls back to CPU) or cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:i] (got {device!r})")
    return torch.device(device)


class Prior(torch.nn.Module, ABC):
    """Base class of the generative priors (see the module docstring)."""

    family: ClassVar[str] = "prior"

    def __init__(self, state_dim: int, latent_dim: int, dtype: torch.dtype = torch.float32,
                 ) -> None:
        super().__init__()
        if int(state_dim) < 1 or int(latent_dim) < 1:
            raise ValueError(f"state_dim and latent_dim must be >= 1 (got {state_dim}, "
                             f"{latent_dim})")
        self.state_dim = int(state_dim)
        self.latent_dim = int(latent_dim)
        self._dtype = dtype
        n = self.state_dim
        self.register_buffer("shift", torch.zeros(n, dtype=dtype))
        self.register_buffer("scale", torch.ones(n, dtype=dtype))
        self.register_buffer("res_mean", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("res_cov", torch.zeros((n, n) if n <= FULL_RESIDUAL_MAX else (n,),
                                                    dtype=torch.float64))

    # ---------------------------------------------------------------- standardization
    def set_normalization(self, shift: np.ndarray, scale: np.ndarray) -> None:
        """Set the per-variable standardization ``(x - shift) / scale`` (scale > 0)."""
        shift = np.broadcast_to(np.asarray(shift, dtype=np.float64), (self.state_dim,)).copy()
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (self.state_dim,)).copy()
        if not (np.isfinite(shift).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("normalization shift must be finite and scale finite and > 0")
        with torch.no_grad():
            self.shift.copy_(torch.as_tensor(shift))
            self.scale.copy_(torch.as_tensor(scale))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical -> standardized state."""
        return (x - self.shift) / self.scale

    def denormalize(self, xn: torch.Tensor) -> torch.Tensor:
        """Standardized -> physical state."""
        return xn * self.scale + self.shift

    # ---------------------------------------------------------------- torch-level maps
    @abstractmethod
    def decode_t(self, z: torch.Tensor) -> torch.Tensor:
        """Generator on tensors: ``(N, k) -> (N, n)``."""

    @abstractmethod
    def encode_t(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder / projection on tensors: ``(N, n) -> (N, k)``."""

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """Log density on tensors, where tractable."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable log_prob")

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this prior (JSON-serialisable)."""

    # ---------------------------------------------------------------- projection
    def project_t(self, x: torch.Tensor, z0: torch.Tensor | None = None, steps: int = 200,
                  lam: float = 1e-3, lr: float = 0.05) -> torch.Tensor:
        """``argmin_z ||(x - G(z)) / scale||^2 + lam ||z||^2`` by Adam, batched.

        A fixed budget of ``steps`` Adam iterations from ``z0`` (zeros when None) on
        the standardized misfit, all members at once; each member's code only
        depends on its own state. Used as the encoder of decoder-only priors.
        """
        z = (torch.zeros(x.shape[0], self.latent_dim, dtype=x.dtype, device=x.device)
             if z0 is None else z0.detach().clone())
        z.requires_grad_(True)
        xn = self.normalize(x).detach()
        opt = torch.optim.Adam([z], lr=lr)
        req = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                for _ in range(int(steps)):
                    opt.zero_grad(set_to_none=True)
                    r = self.normalize(self.decode_t(z)) - xn
                    loss = (r * r).sum() + lam * (z * z).sum()
                    loss.backward()
                    opt.step()
        finally:
            for p, r_ in zip(self.parameters(), req, strict=True):
                p.requires_grad_(r_)
        return z.detach()

    # ---------------------------------------------------------------- residual
    @torch.no_grad()
    def reconstruct(self, X: np.ndarray, batch: int = 1024) -> np.ndarray:
        """``G(E(x))`` for a batch of states, in chunks of ``batch`` (float64)."""
        X = np.asarray(X, dtype=np.float64)
        return np.concatenate([self.decode(self.encode(X[i:i + batch]))
                               for i in range(0, X.shape[0], batch)], axis=0)

    def fit_residual(self, X: np.ndarray) -> dict[str, float]:
        """Measure the off-manifold residual ``x - G(E(x))`` on held-out states ``X``.

        Stores its mean and covariance (full up to :data:`FULL_RESIDUAL_MAX`
        variables, else the diagonal) and returns summary numbers: the RMSE and
        the relative error ``||x - G(E(x))|| / ||x - mean(X)||`` over the batch.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.state_dim or X.shape[0] < 2:
            raise ValueError(f"X must have shape (N >= 2, {self.state_dim}) (got {X.shape})")
        Rres = X - self.reconstruct(X)
        mean = Rres.mean(axis=0)
        A = Rres - mean
        if self.state_dim <= FULL_RESIDUAL_MAX:
            cov = A.T @ A / (X.shape[0] - 1)
        else:
            cov = (A * A).sum(axis=0) / (X.shape[0] - 1)
        with torch.no_grad():
            self.res_mean.copy_(torch.as_tensor(mean))
            self.res_cov.copy_(torch.as_tensor(cov))
        anom = X - X.mean(axis=0)
        return {"recon_rmse": float(np.sqrt(np.mean(Rres ** 2))),
                "recon_rel_error": float(np.linalg.norm(Rres) / np.linalg.norm(anom))}

    @property
    def residual_cov(self) -> np.ndarray:
        """Covariance of the off-manifold residual ``x - G(E(x))`` (float64).

        Shape ``(n, n)``, or ``(n,)`` (its diagonal) when ``n`` exceeds
        :data:`FULL_RESIDUAL_MAX`. Zero until :meth:`fit_residual` has run.
        """
        return self.res_cov.detach().cpu().numpy().copy()

    @property
    def residual_mean(self) -> np.ndarray:
        """Mean of the off-manifold residual on held-out climatology (float64)."""
        return self.res_mean.detach().cpu().numpy().copy()

    # ---------------------------------------------------------------- training hooks
    def training_loss(self, xn: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a standardized batch and numbers to log (single-optimizer families)."""
        raise NotImplementedError(f"{type(self).__name__} is not trained by gradient descent")

    def make_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """Optimizers used by :meth:`train_step` (default: one Adam over all parameters)."""
        return [torch.optim.Adam(self.parameters(), lr=lr)]

    def train_step(self, xn: torch.Tensor, optimizers: list[torch.optim.Optimizer],
                   step: int) -> dict[str, float]:
        """One optimisation step on a standardized batch; returns logged floats."""
        (opt,) = optimizers
        opt.zero_grad(set_to_none=True)
        loss, logs = self.training_loss(xn)
        loss.backward()
        clip = getattr(self, "grad_clip", None)
        if clip is not None:  # a family may set a gradient-norm cap
            torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        opt.step()
        return {"loss": float(loss.detach()), **logs}

    @torch.no_grad()
    def validation_metrics(self, X: np.ndarray) -> dict[str, float]:
        """Quality on held-out physical states; the trainer early-stops on ``val_loss``.

        Default: reconstruction RMSE ``||x - G(E(x))||`` (physical units) as
        ``val_loss`` and ``recon_rmse``.
        """
        X = np.asarray(X, dtype=np.float64)
        rmse = float(np.sqrt(np.mean((X - self.reconstruct(X)) ** 2)))
        return {"val_loss": rmse, "recon_rmse": rmse}

    # ---------------------------------------------------------------- numpy API
    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the network (float32 unless configured)."""
        return self._dtype

    def _to(self, a: np.ndarray, width: int, name: str) -> torch.Tensor:
        arr = np.asarray(a)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(f"{name} must have shape (N, {width}) (got {np.shape(a)})")
        return torch.as_tensor(np.ascontiguousarray(arr), dtype=self.dtype, device=self.device)

    @staticmethod
    def _from(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    def _batched(self, fn: Any, a: np.ndarray, width: int, name: str, per_row: int = 1
                 ) -> np.ndarray:
        """``fn`` on ``a`` (validated), in chunks of at most :data:`MAX_BATCH_VALUES` state
        values (``per_row`` states per row): one device transfer in and one out for any
        ensemble-sized batch, bounded memory for climatology-sized ones."""
        t = self._to(a, width, name)
        chunk = max(1, MAX_BATCH_VALUES // (self.state_dim * per_row))
        if t.shape[0] <= chunk:
            return self._from(fn(t))
        return np.concatenate([self._from(fn(t[i:i + chunk]))
                               for i in range(0, t.shape[0], chunk)], axis=0)

    @torch.no_grad()
    def decode(self, Z: np.ndarray) -> np.ndarray:
        """``X = G(Z)`` for a batch of codes ``(N, k)``; float64 ``(N, n)``."""
        return self._batched(self.decode_t, Z, self.latent_dim, "Z")

    @torch.no_grad()
    def encode(self, X: np.ndarray) -> np.ndarray:
        """Codes ``(N, k)`` of a batch of states ``(N, n)``."""
        return self._batched(self.encode_t, X, self.state_dim, "X")

    @torch.no_grad()
    def log_prob(self, X: np.ndarray) -> np.ndarray:
        """``log p(x)`` per state, shape ``(N,)`` (tractable families only)."""
        return self._batched(self.log_prob_t, X, self.state_dim, "X")

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` states ``G(z)`` with ``z ~ N(0, I)`` from a seeded generator."""
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(int(n), self.latent_dim, generator=g, dtype=self.dtype)
        return self._batched(self.decode_t, z.numpy(), self.latent_dim, "Z")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(state_dim={self.state_dim}, "
                f"latent_dim={self.latent_dim}, device={self.device.type})")


def save(prior: Prior, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint: family, config, ``state_dict`` (on CPU) and metadata."""
    p = Path(path)
    payload = {"family": prior.family, "config": prior.config(), "meta": dict(meta or {}),
               "state_dict": {k: v.detach().cpu() for k, v in prior.state_dict().items()}}
    torch.save(payload, p)
    return p


def load(path: str | os.PathLike, device: str = "auto", *, state_dim: int | None = None,
         latent_dim: int | None = None, system: str | None = None) -> Prior:
    """Load a checkpoint written by :func:`save` (``weights_only=True``).

    Parameters
    ----------
    path : path
        Checkpoint file (``.pt``).
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
    state_dim, latent_dim : int, optional
        Required dimensions; a mismatch is an error naming the file.
    system : str, optional
        Required system (``lorenz96``, ``shallow_water``, ``lotka_volterra``), compared
        with the one the checkpoint's metadata records.

    Raises
    ------
    ValueError
        If the file is not a latentda checkpoint, names an unknown family, or was
        trained for another system or dimension than asked.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prior checkpoint {p} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupted or not a torch file
        raise ValueError(f"prior checkpoint {p} cannot be read ({type(err).__name__}); "
                         "it is corrupted or not a latentda prior") from None
    if not isinstance(payload, dict) or "family" not in payload or "state_dict" not in payload:
        raise ValueError(f"prior checkpoint {p} is not a latentda prior (no family/state_dict)")
    family = payload["family"]
    if family not in FAMILIES:
        raise ValueError(f"prior checkpoint {p}: unknown family {family!r} "
                         f"(known: {sorted(FAMILIES)})")
    prior = FAMILIES[family](**payload["config"])
    prior.load_state_dict(payload["state_dict"])
    for name, want in (("state_dim", state_dim), ("latent_dim", latent_dim)):
        if want is not None and getattr(prior, name) != want:
            raise ValueError(f"prior checkpoint {p} has {name} {getattr(prior, name)}, but "
                             f"{want} is needed here")
    prior.meta = payload.get("meta", {})
    sys_meta = prior.meta.get("system")
    trained_for = sys_meta.get("system") if isinstance(sys_meta, dict) else sys_meta
    if system is not None and trained_for is not None and trained_for != system:
        raise ValueError(f"prior checkpoint {p} was trained for the {trained_for} system, "
                         f"not {system}; train one with `latentda train-prior`")
    return prior.to(resolve_device(device))
