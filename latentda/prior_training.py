"""``latentda train-prior CONFIG``: simulate a climatology, train a prior, write its card.

A prior config (YAML, strict: unknown keys are refused with the field named)
says which system to simulate, how to sample its climatology, which family and
architecture to train, and the training budget. :func:`train_prior`

1. simulates the climatology (``members`` independent spun-up runs, ``snapshots``
   states each, ``spacing`` model steps apart) and caches it in a zarr store keyed
   by a hash of the system and climatology settings;
2. splits it *by member* (runs never straddle splits) into train / validation / test;
3. trains with :func:`latentda.priors.training.fit` (early stopping on validation);
4. measures the off-manifold residual and the quality numbers on the test split;
5. writes ``NAME.pt`` (``state_dict`` + config, loaded with ``weights_only=True``),
   ``NAME.json`` (the model card) and ``NAME.md`` (the card, readable).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from latentda.config import CaseError, ModelConfig, _format_errors, build_model

__all__ = ["PriorConfig", "load_prior_config", "simulate_climatology", "train_prior",
           "card_markdown"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ClimatologyConfig(_Strict):
    """How the training climatology is sampled."""

    members: int = Field(200, ge=3, description="independent spun-up runs")
    snapshots: int = Field(50, ge=1, description="states kept per run")
    spacing: int = Field(10, ge=1, description="model steps between kept states")
    spinup_steps: int | None = Field(None, ge=0,
                                     description="spin-up steps (default: the system's)")
    seed: int = Field(0, ge=0, description="seed of the initial states")


class SplitConfig(_Strict):
    """Fractions of the runs held out (split by run, never inside one)."""

    validation: float = Field(0.1, gt=0, lt=0.5)
    test: float = Field(0.1, gt=0, lt=0.5)


class TrainingConfig(_Strict):
    """Optimizer budget and schedule."""

    steps: int = Field(10000, ge=1, description="optimizer steps (the LR schedule spans them)")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2.0e-3, gt=0, description="peak learning rate (Adam)")
    warmup: int = Field(500, ge=0, description="linear warm-up steps")
    eval_every: int = Field(500, ge=1, description="steps between validation evaluations")
    patience: int = Field(10, ge=1, description="evaluations without improvement before stopping")
    max_minutes: float | None = Field(15.0, gt=0, description="wall-clock cap (None: none)")
    seed: int = Field(0, ge=0, description="seed of initialization, batches and noise")
    augment: bool = Field(True, description="random cyclic shifts (periodic architectures)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all)")


class PriorConfig(_Strict):
    """A prior-training config (see the module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="file stem of the outputs")
    description: str = ""
    system: ModelConfig
    climatology: ClimatologyConfig = ClimatologyConfig()
    family: Literal["vae", "wgan", "flow", "linear"]
    latent_dim: int | None = Field(None, ge=1, description="k (flows: the state dimension)")
    arch: dict[str, Any] = Field(default_factory=lambda: {"kind": "mlp"},
                                 description="network architecture (kind: linear, mlp, conv1d, "
                                             "conv2d, plus its sizes)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="family options, e.g. beta for the VAE")
    normalization: Literal["global", "per_variable", "per_field"] = Field(
        "per_variable", description="one mean/std for all variables, one per variable, or "
                                    "one per physical field")
    split: SplitConfig = SplitConfig()
    training: TrainingConfig = TrainingConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    output: str | None = Field(None, description="checkpoint path (default: NAME.pt next to "
                                                 "the config)")


def load_prior_config(path: str | os.PathLike) -> PriorConfig:
    """Read and validate a prior config (YAML).

    Raises
    ------
    CaseError
        Naming the file and every invalid field.
    """
    p = Path(path)
    if not p.is_file():
        raise CaseError(f"prior config {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise CaseError(f"prior config {p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise CaseError(f"prior config {p} must hold a mapping of fields")
    try:
        pc = PriorConfig.model_validate(data)
    except ValidationError as err:
        raise CaseError(_format_errors(err, str(p)).replace("invalid case", "invalid prior "
                                                            "config")) from None
    _check_family(pc, str(p))
    return pc


def _family_kwargs(pc: PriorConfig, n: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"state_dim": n, "dtype": pc.dtype}
    if pc.family != "flow":
        kw["latent_dim"] = pc.latent_dim
    if pc.family in ("vae", "wgan", "flow"):
        kw["arch"] = dict(pc.arch)
    return kw | dict(pc.options)


def _check_family(pc: PriorConfig, source: str) -> None:
    """Build the prior once (no training) so bad options fail before any work."""
    import inspect

    from latentda import priors
    from latentda.config import state_dim

    if pc.family != "flow" and pc.latent_dim is None:
        raise CaseError(f"invalid prior config {source}:\n  latent_dim: required for the "
                        f"{pc.family} family")
    cls = priors.FAMILIES[pc.family]
    reserved = {"self", "state_dim", "latent_dim", "arch", "dtype"}
    allowed = sorted(set(inspect.signature(cls.__init__).parameters) - reserved)
    for key in pc.options:
        if key not in allowed:
            raise CaseError(f"invalid prior config {source}:\n  options.{key}: not an option "
                            f"of the {pc.family} family (options: {allowed})")
    try:
        cls(**_family_kwargs(pc, state_dim(pc.system)))
    except (ValueError, TypeError) as err:
        raise CaseError(f"invalid prior config {source}:\n  {err}") from None


# ------------------------------------------------------------------------- climatology
def _clim_key(pc: PriorConfig) -> str:
    blob = json.dumps({"system": pc.system.model_dump(), "clim": pc.climatology.model_dump()},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where climatologies are cached: ``$LATENTDA_CACHE`` or ``~/.cache/latentda``."""
    return Path(os.environ.get("LATENTDA_CACHE", Path.home() / ".cache" / "latentda"))


def _climatology_workers(members: int) -> int:
    """Threads for the climatology: the usable cores (the kernels release the GIL)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, members))


def _step_members(model: Any, X: np.ndarray, nsteps: int, pool: ThreadPoolExecutor,
                  workers: int) -> np.ndarray:
    """``model.step(X, nsteps)`` with the members split into ``workers`` chunks on the pool."""
    if nsteps == 0:
        return X
    chunks = np.array_split(np.arange(len(X)), workers)
    parts = pool.map(lambda idx: model.step(X[idx], nsteps), [c for c in chunks if len(c)])
    return np.concatenate(list(parts))


def simulate_climatology(pc: PriorConfig, progress: bool = True, use_cache: bool = True,
                         ) -> np.ndarray:
    """States ``(members, snapshots, n)`` of the config's climatology (cached in zarr)."""
    path = cache_dir() / f"clim-{pc.system.system}-{_clim_key(pc)}.zarr"
    if use_cache and path.exists():
        import zarr

        try:
            return np.asarray(zarr.open_array(str(path), mode="r")[...])
        except Exception:  # a broken cache entry is rebuilt
            pass
    model = build_model(pc.system)
    cc = pc.climatology
    rng = np.random.default_rng([cc.seed, 7])
    family = getattr(pc.system, "init_family", None)
    # the initial states are drawn first, in one stream, so the result does not depend on
    # how the members are then split over threads (each member is integrated on its own)
    if family is not None:
        X = model.sample_climatology(cc.members, rng, family=family, spinup_steps=0)
    else:
        X = model.climatology(cc.members, rng, 0)
    spinup = model.spinup_steps if cc.spinup_steps is None else cc.spinup_steps
    out = np.empty((cc.members, cc.snapshots, model.state_dim))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cc.snapshots, desc="climatology", unit="snap", leave=False)
    workers = _climatology_workers(cc.members)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        X = _step_members(model, X, spinup, pool, workers)
        for s in range(cc.snapshots):
            out[:, s] = X
            if s + 1 < cc.snapshots:
                X = _step_members(model, X, cc.spacing, pool, workers)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if not np.isfinite(out).all():
        raise ValueError("the simulated climatology holds non-finite states; check the "
                         "system settings (time step, viscosity)")
    if use_cache:
        import zarr

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.zarr")
        arr = zarr.create_array(str(tmp), shape=out.shape, dtype="f8", overwrite=True,
                                chunks=(min(cc.members, 64), cc.snapshots, model.state_dim))
        arr[...] = out
        if path.exists():
            import shutil
            shutil.rmtree(path)
        os.replace(tmp, path)
    return out


def _normalization(pc: PriorConfig, X: np.ndarray, model: Any) -> tuple[np.ndarray, np.ndarray]:
    n = X.shape[1]
    if pc.normalization == "global":
        return np.full(n, X.mean()), np.full(n, X.std())
    if pc.normalization == "per_field":
        shift, scale = np.empty(n), np.empty(n)
        for _, idx in model.components():
            shift[idx], scale[idx] = X[:, idx].mean(), X[:, idx].std()
        return shift, np.maximum(scale, 1e-12)
    return X.mean(axis=0), np.maximum(X.std(axis=0), 1e-12)


# ------------------------------------------------------------------------- metrics
def _moment_errors(S: np.ndarray, X: np.ndarray) -> dict[str, float]:
    sd = X.std(axis=0)
    return {"sample_mean_error": float(np.max(np.abs(S.mean(0) - X.mean(0)) / sd)),
            "sample_std_error": float(np.max(np.abs(S.std(0) - sd) / sd))}


def _gaussian_nll(Xtr: np.ndarray, Xte: np.ndarray) -> float:
    mu = Xtr.mean(0)
    C = np.cov(Xtr, rowvar=False)
    sign, logdet = np.linalg.slogdet(C)
    d = Xte - mu
    maha = np.einsum("ij,ij->i", d @ np.linalg.inv(C), d)
    return float(np.mean(0.5 * (maha + logdet + Xte.shape[1] * math.log(2 * math.pi))))


def evaluate_prior(prior: Any, X_train: np.ndarray, X_test: np.ndarray, model: Any,
                   seed: int = 0) -> dict[str, Any]:
    """Quality numbers of a trained prior on held-out states (and fit its residual)."""
    m: dict[str, Any] = dict(prior.fit_residual(X_test))
    rec = prior.reconstruct(X_test)
    comps = model.components()
    if len(comps) > 1:
        anom = X_test - X_test.mean(0)
        for name, idx in comps:
            r = X_test[:, idx] - rec[:, idx]
            m[f"recon_rmse_{name}"] = float(np.sqrt(np.mean(r ** 2)))
            m[f"recon_rel_error_{name}"] = float(np.linalg.norm(r)
                                                 / np.linalg.norm(anom[:, idx]))
    m["clim_std"] = float(X_test.std(axis=0).mean())
    S = prior.sample(min(len(X_test), 5000), seed=seed)
    m |= _moment_errors(S, X_test)
    family = prior.family
    if family == "vae":
        m["elbo"] = float(prior.elbo(X_test[:2000], 1, seed).mean())
        m["iwae_50"] = float(prior.iwae(X_test[:500], 50, seed).mean())
        m["active_units"] = int(prior.active_units(X_test))
        m["kl_per_dim"] = [round(float(v), 4) for v in prior.kl_per_dim(X_test)]
    if family in ("flow", "linear"):
        m["nll"] = float(-np.mean(np.concatenate(
            [prior.log_prob(X_test[i:i + 1000]) for i in range(0, len(X_test), 1000)])))
        if X_test.shape[1] <= 2048:
            m["gaussian_nll"] = _gaussian_nll(X_train, X_test)
            m["nll_gain_over_gaussian"] = m["gaussian_nll"] - m["nll"]
    return m


# ------------------------------------------------------------------------- training
def output_paths(pc: PriorConfig, config_path: str | os.PathLike | None) -> dict[str, Path]:
    """The checkpoint, JSON card and Markdown card paths of a config."""
    if pc.output is not None:
        pt = Path(pc.output)
    else:
        base = Path(config_path).parent if config_path is not None else Path(".")
        pt = base / f"{pc.name}.pt"
    return {"pt": pt, "json": pt.with_suffix(".json"), "md": pt.with_suffix(".md")}


def train_prior(pc: PriorConfig, config_path: str | os.PathLike | None = None, *,
                overwrite: bool = False, device: str | None = None, steps: int | None = None,
                progress: bool = True, out: str | os.PathLike | None = None,
                ) -> tuple[Any, dict[str, Any]]:
    """Simulate, train, evaluate and save a prior; returns ``(prior, card)``.

    Raises
    ------
    FileExistsError
        If the checkpoint exists and ``overwrite`` is False (before any work).
    """
    import torch

    from latentda import __version__, priors
    if out is not None:
        pc = pc.model_copy(update={"output": str(out)})
    paths = output_paths(pc, config_path)
    for p in paths.values():
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    dev = priors.resolve_device(device or pc.device)
    if (device or pc.device) == "auto" and dev.type == "cpu":
        import sys

        print("latentda train-prior: no CUDA device; training on the CPU", file=sys.stderr)
    tc = pc.training
    if steps is not None:
        tc = tc.model_copy(update={"steps": int(steps), "warmup": min(tc.warmup, steps // 10)})
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    t0 = time.perf_counter()
    model = build_model(pc.system)
    clim = simulate_climatology(pc, progress)
    t_sim = time.perf_counter() - t0
    M = clim.shape[0]
    n_test = max(1, round(pc.split.test * M))
    n_val = max(1, round(pc.split.validation * M))
    Xtr = clim[: M - n_val - n_test].reshape(-1, clim.shape[2])
    Xva = clim[M - n_val - n_test: M - n_test].reshape(-1, clim.shape[2])
    Xte = clim[M - n_test:].reshape(-1, clim.shape[2])
    torch.manual_seed(tc.seed)
    cls = priors.FAMILIES[pc.family]
    prior = cls(**_family_kwargs(pc, model.state_dim)).to(dev)
    prior.set_normalization(*_normalization(pc, Xtr, model))
    if pc.family == "linear":
        fitted = cls.fit(Xtr, pc.latent_dim, pc.dtype)
        prior = fitted.to(dev)
        result = None
    else:
        if hasattr(prior, "initialize_from_data"):
            prior.initialize_from_data(Xtr)
        result = priors.training.fit(
            prior, Xtr, Xva[:2000], steps=tc.steps, batch_size=tc.batch_size, lr=tc.lr,
            warmup=tc.warmup, eval_every=tc.eval_every, patience=tc.patience,
            max_minutes=tc.max_minutes, seed=tc.seed,
            augment=prior.arch if tc.augment and "arch" in prior.config() else None,
            progress=progress)
    t_train = time.perf_counter() - t0 - t_sim
    metrics = evaluate_prior(prior, Xtr, Xte, model, seed=tc.seed)
    n_params = int(sum(p.numel() for p in prior.parameters()))
    cmd = f"latentda train-prior {config_path if config_path is not None else '<config>'}"
    if device is not None:
        cmd += f" --device {device}"
    if steps is not None:
        cmd += f" --steps {steps}"
    card: dict[str, Any] = {
        "name": pc.name, "family": pc.family, "description": pc.description,
        "system": pc.system.model_dump(), "state_dim": prior.state_dim,
        "latent_dim": prior.latent_dim, "parameters": n_params,
        "climatology": pc.climatology.model_dump() | {
            "train_states": len(Xtr), "validation_states": len(Xva), "test_states": len(Xte)},
        "config": pc.model_dump(mode="json"),
        "seed": tc.seed, "device": str(dev), "torch": torch.__version__,
        "latentda": __version__, "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "simulate_seconds": round(t_sim, 2), "train_seconds": round(t_train, 2),
        "training": None if result is None else {
            "steps": result.steps, "best_step": result.best_step, "stopped": result.stopped,
            "best_validation": result.best_metrics,
            "history": result.history},
        "metrics": metrics, "command": cmd,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    meta = {"name": pc.name, "system": pc.system.model_dump(), "metrics": {
        k: v for k, v in metrics.items() if isinstance(v, float | int)}}
    paths["pt"].parent.mkdir(parents=True, exist_ok=True)
    priors.save(prior, paths["pt"], meta=meta)
    data = paths["pt"].read_bytes()
    card["checkpoint"] = {"file": paths["pt"].name, "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()}
    paths["json"].write_text(json.dumps(card, indent=1, default=float) + "\n")
    paths["md"].write_text(card_markdown(card))
    return prior, card


def _f(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def card_markdown(card: dict[str, Any]) -> str:
    """The readable model card of a JSON card."""
    m = card["metrics"]
    lines = [f"# Model card: {card['name']}", "", card.get("description", "").strip(), "",
             f"- family: **{card['family']}**, state dim {card['state_dim']}, latent dim "
             f"{card['latent_dim']}, {card['parameters']:,} parameters",
             f"- system: `{json.dumps(card['system'])}`",
             f"- climatology: {card['climatology']['members']} runs x "
             f"{card['climatology']['snapshots']} states, {card['climatology']['spacing']} "
             f"steps apart (seed {card['climatology']['seed']}); train / validation / test "
             f"states {card['climatology']['train_states']} / "
             f"{card['climatology']['validation_states']} / "
             f"{card['climatology']['test_states']}, split by run",
             f"- trained on {card['device']} ({card['cpu_threads']} threads), seed "
             f"{card['seed']}, torch {card['torch']}: {card['train_seconds']:.0f} s "
             f"(+ {card['simulate_seconds']:.0f} s simulating)"]
    tr = card.get("training")
    if tr:
        lines.append(f"- {tr['steps']} steps, best at {tr['best_step']}, stopped by "
                     f"{tr['stopped']}")
    lines += [f"- checkpoint `{card['checkpoint']['file']}` "
              f"({card['checkpoint']['bytes'] / 1e6:.2f} MB, sha256 "
              f"{card['checkpoint']['sha256'][:12]}…)", "",
              "Reproduce:", "", "```", card["command"], "```", "",
              "## Quality on held-out climatology (test split)", "",
              "| metric | value |", "|---|---|"]
    for k, v in m.items():
        if isinstance(v, list):
            continue
        lines.append(f"| {k} | {_f(v)} |")
    return "\n".join(lines) + "\n"
