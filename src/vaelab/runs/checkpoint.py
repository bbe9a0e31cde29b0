"""The training state in one file, ``checkpoint.safetensors``, written atomically: the
weights, the weights' moving average (``ema.*``), Adam's state, the random streams and the
counters; an interrupted run resumes from it exactly."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..config import Config
from ..errors import RunError
from ..files import atomic_write
from ..models.vae import VAE
from .rundir import check_finite, check_settings, prefixed, read_safetensors, weights_metadata


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
    schedule: dict | None = None  # the learning-rate schedule's state (vaelab.training.schedule)
    norm_mean: float = 0.0  # the running mean gradient norm of skip_spikes (training.step)


def save_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer,
                    gen: torch.Generator, state: TrainState, average: VAE | None = None,
                    **extra) -> None:
    """The training state: weights, optimizer, random streams, counters, and the weights'
    moving average (``ema.*``) when the run keeps one."""
    check_finite(model, str(run_dir / "checkpoint.safetensors"))
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    if average is not None:
        check_finite(average, str(run_dir / "checkpoint.safetensors"))
        tensors.update({f"ema.{k}": v.contiguous() for k, v in average.state_dict().items()})
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.data"] = gen.get_state()
    if torch.cuda.is_available() and model.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(model.device)
    meta = weights_metadata(model, state=state.__dict__, **extra)
    meta["optimizer"] = opt_meta
    atomic_write(run_dir / "checkpoint.safetensors", st_save(tensors, metadata=meta))


def restore_checkpoint(run_dir: Path, model: VAE, opt: torch.optim.Optimizer,
                       gen: torch.Generator, cfg: Config | None = None,
                       average: VAE | None = None) -> TrainState:
    path = run_dir / "checkpoint.safetensors"
    tensors, meta = read_safetensors(path)
    if cfg is not None:
        check_settings(meta, cfg, path)
    try:
        model.load_state_dict(prefixed(tensors, "model."))
        if average is not None:
            if not any(k.startswith("ema.") for k in tensors):
                raise RuntimeError("it holds no moving average of the weights (ema.*), "
                                   "which config.toml's ema asks for")
            average.load_state_dict(prefixed(tensors, "ema."))
    except RuntimeError as e:
        raise RunError(f"{path} does not fit {run_dir / 'config.toml'} (was the config edited "
                       f"after training?): {str(e).splitlines()[0]}") from None
    try:
        saved = _optimizer_state(tensors, meta["optimizer"])
        sizes = [len(g["params"]) for g in saved["param_groups"]]
        if sizes != [len(g["params"]) for g in opt.param_groups]:
            raise RunError(
                f"{path} holds optimizer state for parameter groups of {sizes} tensors, which "
                f"this run's optimizer groups differently (a run with weight decay from a "
                f"vaelab that still decayed the prior's parameters, or [train] settings "
                f"edited after training): resume it with the vaelab that wrote it, or start "
                f"anew from its weights with --init {run_dir}")
        opt.load_state_dict(saved)
        torch.set_rng_state(tensors["rng.cpu"])
        gen.set_state(tensors["rng.data"])
        if "rng.cuda" in tensors and model.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], model.device)
        state = TrainState(**json.loads(meta["state"]))
        if not isinstance(state.epoch, int) or state.epoch < 1:
            raise ValueError(f"epoch {state.epoch!r}")
    except RunError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise RunError(f"{path} is damaged ({type(e).__name__}: {e}); the run cannot be "
                       "resumed from it (its best weights, model.safetensors, are intact)") \
            from None
    return state


def read_trained_epochs(run_dir: Path) -> int:
    """The epochs the checkpoint in ``run_dir`` holds (0 if there is none, or it is damaged:
    :func:`restore_checkpoint` says what is wrong)."""
    try:
        with safe_open(str(run_dir / "checkpoint.safetensors"), "pt") as f:
            epoch = json.loads((f.metadata() or {}).get("state", "{}")).get("epoch", 0)
    except Exception:  # missing or damaged; safetensors raises its own error types
        return 0
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
