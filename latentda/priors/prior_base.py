"""The protocol every generative prior implements, and checkpoint save/load.

A prior is a torch module on one ``device``. Its public calls take and return
numpy arrays of shape ``(N, ·)`` (members first), with one transfer to the
device and one back per call, so that filters (numpy, float64) never see torch:

- ``decode(Z) -> X``: the generator ``x = G(z)``;
- ``encode(X) -> Z``: an encoder or a projection onto the generator's range;
- ``sample(n, seed) -> X``; ``log_prob(X)`` where tractable;
- ``latent_dim``, ``state_dim``, ``device``, ``dtype``, ``residual_cov``.

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

#: family name -> class, filled by :func:`register`
FAMILIES: dict[str, type[Prior]] = {}


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

    @torch.no_grad()
    def decode(self, Z: np.ndarray) -> np.ndarray:
        """``X = G(Z)`` for a batch of codes ``(N, k)``; float64 ``(N, n)``."""
        return self._from(self.decode_t(self._to(Z, self.latent_dim, "Z")))

    @torch.no_grad()
    def encode(self, X: np.ndarray) -> np.ndarray:
        """Codes ``(N, k)`` of a batch of states ``(N, n)``."""
        return self._from(self.encode_t(self._to(X, self.state_dim, "X")))

    @torch.no_grad()
    def log_prob(self, X: np.ndarray) -> np.ndarray:
        """``log p(x)`` per state, shape ``(N,)`` (tractable families only)."""
        return self._from(self.log_prob_t(self._to(X, self.state_dim, "X")))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` states ``G(z)`` with ``z ~ N(0, I)`` from a seeded generator."""
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(int(n), self.latent_dim, generator=g, dtype=self.dtype)
        return self._from(self.decode_t(z.to(self.device)))

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
         latent_dim: int | None = None) -> Prior:
    """Load a checkpoint written by :func:`save` (``weights_only=True``).

    Raises
    ------
    ValueError
        If the file is not a latentda checkpoint, names an unknown family, or its
        dimensions differ from ``state_dim`` / ``latent_dim`` when given.
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
    return prior.to(resolve_device(device))
