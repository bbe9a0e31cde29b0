"""The run directory: what a training run leaves on disk, and how it is read back.

A run directory holds::

    config.toml              the full configuration
    model.safetensors        weights with the best validation score (used by sample/evaluate)
    checkpoint.safetensors   the last epoch: weights, Adam state, RNG states, counters
    metrics.jsonl            one JSON object per epoch
    figures/                 PNGs
    evaluate.json, baselines.json, classify.json   results recorded by those commands

Both ``.safetensors`` files carry the image shape in their metadata, so
:func:`load_run` rebuilds the model from ``config.toml`` alone; nothing is pickled. Every
file is written atomically, so an interrupted run always resumes from a consistent state.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import Config, ConfigError
from .fetch import atomic_write
from .model import VAE

FORMAT = "vaelab-run-1"


class RunError(RuntimeError):
    """A run directory is missing, incomplete or inconsistent."""


def _meta(model: VAE, **extra) -> dict[str, str]:
    return {"format": FORMAT, "image_shape": json.dumps(list(model.image_shape)),
            **{k: json.dumps(v) for k, v in extra.items()}}


def save_weights(path: Path, model: VAE, **extra) -> None:
    atomic_write(path, st_save({k: v.contiguous() for k, v in model.state_dict().items()},
                               metadata=_meta(model, **extra)))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise RunError(f"{path} does not exist; is {path.parent} a vaelab run directory?")
    try:
        raw = path.read_bytes()
        tensors = st_load(raw)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise RunError(f"{path} is corrupt or not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise RunError(f"{path} was not written by vaelab (format {meta.get('format')!r})")
    return tensors, meta


def load_run(path: str | Path, which: str = "best", device: str | torch.device = "cpu"
             ) -> tuple[VAE, Config]:
    """The model of a run directory (``which``: "best" or "last") and its config."""
    path = Path(path)
    if not (path / "config.toml").is_file():
        raise RunError(f"{path} is not a vaelab run directory (no config.toml)")
    cfg = Config.load(path / "config.toml")
    files = {"best": "model.safetensors", "last": "checkpoint.safetensors"}
    if which not in files:
        raise ConfigError(f"unknown checkpoint {which!r}; choose one of: best, last")
    tensors, meta = read_safetensors(path / files[which])
    model = VAE.from_config(cfg.model, tuple(json.loads(meta["image_shape"])))
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")} \
        if which == "last" else tensors
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise RunError(f"weights in {path / files[which]} do not fit config.toml: {e}") from None
    return model.to(device).eval(), cfg


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{name}"] = v.contiguous()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: str) -> dict:
    m = json.loads(meta)
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in m["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for g in m["param_groups"]:
        g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": m["param_groups"]}


@dataclass
class TrainState:
    epoch: int = 0
    best_val_elbo: float = -math.inf
    best_epoch: int = 0


def save_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer,
                    gen: torch.Generator, state: TrainState) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.data"] = gen.get_state()
    if torch.cuda.is_available() and model.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(model.device)
    meta = _meta(model, state=state.__dict__)
    meta["optimizer"] = opt_meta
    atomic_write(run_dir / "checkpoint.safetensors", st_save(tensors, metadata=meta))


def restore_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer,
             gen: torch.Generator) -> TrainState:
    tensors, meta = read_safetensors(run_dir / "checkpoint.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng.cpu"])
    gen.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and model.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], model.device)
    return TrainState(**json.loads(meta["state"]))


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] \
        if p.is_file() else []


RESULTS = ("evaluate", "baselines", "classify")  # RUN/<name>.json, written by those commands


def write_result(run_dir: str | Path, name: str, key: str, value) -> Path:
    """Record a command's result in ``RUN/<name>.json`` under ``key`` (e.g. the split and k
    of an evaluation); other keys are kept. Atomic: an interrupted write loses nothing."""
    if name not in RESULTS:
        raise ValueError(f"unknown result {name!r}; one of {RESULTS}")
    path = Path(run_dir) / f"{name}.json"
    entries = _read_result(path) if path.is_file() else {}
    entries[key] = value
    atomic_write(path, (json.dumps(entries, indent=1) + "\n").encode())
    return path


def read_results(run_dir: str | Path) -> dict[str, dict]:
    """The results recorded in a run directory: ``{name: {key: value}}`` for each file that
    exists. A file that is not valid JSON raises a RunError naming it."""
    paths = {name: Path(run_dir) / f"{name}.json" for name in RESULTS}
    return {name: _read_result(p) for name, p in paths.items() if p.is_file()}


def _read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}); delete it and run "
                       f"`vaelab {path.stem}` again") from e
