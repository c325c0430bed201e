"""The training loop shared by every prior family.

:func:`fit` trains a :class:`~latentda.priors.prior_base.Prior` on standardized
climatology with a step budget (reproducible: a seed fixes the batches, the
augmentation and the initialization), a learning rate with linear warm-up and
cosine decay, evaluation on a validation split every ``eval_every`` steps,
early stopping after ``patience`` evaluations without improvement (the best
weights are restored), an optional wall-clock cap, and a tqdm progress bar.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentda.priors.nets import roll_augment
from latentda.priors.prior_base import Prior


@dataclass
class TrainResult:
    """What :func:`fit` did: steps, time, the best validation numbers and the history."""

    steps: int
    seconds: float
    best_step: int
    stopped: str
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def _lr_factor(step: int, warmup: int, total: int, final: float = 0.02) -> float:
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def fit(prior: Prior, X_train: np.ndarray, X_val: np.ndarray, *, steps: int = 10000,
        batch_size: int = 256, lr: float = 2e-3, warmup: int = 500, eval_every: int = 500,
        patience: int = 10, max_minutes: float | None = None, seed: int = 0,
        augment: dict[str, Any] | None = None, progress: bool = True) -> TrainResult:
    """Train ``prior`` in place and return a :class:`TrainResult`.

    Parameters
    ----------
    prior : Prior
        Its normalization must already be set (``set_normalization``).
    X_train, X_val : ndarray, shape (N, n)
        Physical training and validation states.
    steps : int
        Optimizer-step budget (the learning-rate schedule spans it).
    batch_size, lr, warmup, eval_every, patience : int / float
        Mini-batch size, peak learning rate, warm-up steps, evaluation period,
        evaluations without improvement of ``val_loss`` before stopping.
    max_minutes : float, optional
        Wall-clock cap (the run is then not reproducible step for step; the
        result says ``stopped="time"``).
    seed : int
        Seeds initialization-independent randomness: batches, augmentation, noise.
    augment : dict, optional
        Architecture dict whose ``kind`` selects the random cyclic shifts
        (:func:`latentda.priors.nets.roll_augment`); ``None``: no augmentation.
    progress : bool
        Show a tqdm bar.
    """
    for name, v, lo in (("steps", steps, 1), ("batch_size", batch_size, 1),
                        ("eval_every", eval_every, 1), ("patience", patience, 1),
                        ("warmup", warmup, 0)):
        if int(v) < lo:
            raise ValueError(f"training.{name} must be >= {lo} (got {v})")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"training.lr must be finite and > 0 (got {lr})")
    device, dtype = prior.device, prior.dtype
    Xt = torch.as_tensor(np.asarray(X_train), dtype=dtype, device=device)
    N = Xt.shape[0]
    batch_size = min(int(batch_size), N)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    opts = prior.make_optimizers(lr)
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    best = {"val_loss": math.inf}
    best_state = {k: v.detach().clone() for k, v in prior.state_dict().items()}
    best_step, bad, history, stopped = 0, 0, [], "steps"
    t0 = time.perf_counter()
    perm = torch.randperm(N, generator=gen)
    pos = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(steps), desc=f"train {prior.family}", unit="step", leave=False)
    step = 0
    logs: dict[str, float] = {}
    try:
        for step in range(1, int(steps) + 1):
            f = _lr_factor(step - 1, int(warmup), int(steps))
            for o, lrs in zip(opts, base_lrs, strict=True):
                for g, lr0 in zip(o.param_groups, lrs, strict=True):
                    g["lr"] = lr0 * f
            if pos + batch_size > N:
                perm, pos = torch.randperm(N, generator=gen), 0
            xb = Xt[perm[pos:pos + batch_size].to(device)]
            pos += batch_size
            if augment is not None:
                xb = roll_augment(xb, augment, gen)
            prior.train()
            logs = prior.train_step(prior.normalize(xb), opts, step)
            if not all(math.isfinite(v) for v in logs.values()):
                raise FloatingPointError(f"training diverged at step {step}: {logs} "
                                         "(lower training.lr)")
            if bar is not None:
                bar.update(1)
            timed_out = (max_minutes is not None
                         and time.perf_counter() - t0 > 60.0 * max_minutes)
            last = step == int(steps) or timed_out
            if step % int(eval_every) == 0 or last:
                prior.eval()
                m = prior.validation_metrics(X_val)
                history.append({"step": float(step), **logs, **m})
                if bar is not None:
                    bar.set_postfix(val=f"{m['val_loss']:.4g}")
                if m["val_loss"] < best["val_loss"]:
                    best, best_step, bad = m, step, 0
                    best_state = {k: v.detach().clone() for k, v in prior.state_dict().items()}
                else:
                    bad += 1
                    if bad >= int(patience):
                        stopped = "early"
                        break
            if timed_out:  # evaluated above, so the last steps are not lost
                stopped = "time"
                break
    finally:
        if bar is not None:
            bar.close()
    prior.load_state_dict(best_state)
    prior.eval()
    return TrainResult(steps=step, seconds=time.perf_counter() - t0, best_step=best_step,
                       stopped=stopped, best_metrics=dict(best), history=history)
