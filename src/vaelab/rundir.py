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

A run is named by a path or by ``hf://USER/REPO[@REVISION]``, a model exported by
``vaelab export`` and shared on the Hugging Face Hub (:mod:`vaelab.hub`); an exported
folder is a run directory without the checkpoint, plus ``config.json`` with the weights'
SHA-256, checked on loading. :func:`place` says where a run's files are read and where
the commands write about it: a downloaded model is read from the Hub's cache and written
about in the user's own folder, never in that cache.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import Config, ConfigError
from .fetch import atomic_write, user_dir
from .hub import cache_key, download, is_hub
from .model import VAE

FORMAT = "vaelab-run-1"
log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run directory is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class RunPlace:
    """Where a run's files are read (``source``) and where commands write about it
    (``workdir``: figures, results, reports)."""

    source: Path
    workdir: Path


def place(spec: str | Path) -> RunPlace:
    """A run directory or exported folder (read and written there), or a Hub model
    ``hf://USER/REPO[@REVISION]`` (downloaded; written about in
    ``$VAELAB_HOME/hub/USER--REPO[@REVISION]``, by default in the user data folder)."""
    if is_hub(spec):
        return RunPlace(download(str(spec)), _workdir(spec))
    return RunPlace(Path(spec), Path(spec))


def _workdir(spec: str | Path) -> Path:
    return user_dir() / "hub" / cache_key(str(spec)) if is_hub(spec) else Path(spec)


def workdir(spec: str | Path) -> Path:
    """Where commands write about the run ``spec`` (created if needed; nothing is
    downloaded to know it)."""
    d = _workdir(spec)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _meta(model: VAE, **extra) -> dict[str, str]:
    return {"format": FORMAT, "image_shape": json.dumps(list(model.image_shape)),
            **{k: json.dumps(v) for k, v in extra.items()}}


def save_weights(path: Path, model: VAE, **extra) -> None:
    check_finite(model, str(path))
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
    """The model of a run (``which``: "best" or "last") and its config. ``path``: a run
    directory, an exported folder or ``hf://USER/REPO[@REVISION]``."""
    path = place(path).source
    if not (path / "config.toml").is_file():
        raise RunError(f"{path} is not a vaelab run directory (no config.toml)")
    cfg = Config.load(path / "config.toml")
    files = {"best": "model.safetensors", "last": "checkpoint.safetensors"}
    if which not in files:
        raise ConfigError(f"unknown checkpoint {which!r}; choose one of: best, last")
    if which == "last" and (path / EXPORT).is_file():
        raise RunError(f"{path} is an exported model: it holds the best weights only "
                       "(use --which best)")
    if (path / EXPORT).is_file():
        check_export(path, cfg)
    cfg = legacy_settings(cfg, path)  # what the run did, for all who read or re-export it
    tensors, meta = read_safetensors(path / files[which])
    if which == "last":  # the moving average is the model of a run that keeps one
        weights = _prefixed(tensors, "ema.") or _prefixed(tensors, "model.")
    else:
        weights = tensors
    shape = _image_shape(meta, path / files[which])
    check_settings(meta, cfg, path / files[which])
    with torch.device("meta"):  # the model's shapes, before any memory is spent on it
        skeleton = VAE.from_config(cfg.model, shape)
    _check_shapes(skeleton, weights, path / files[which])
    model = VAE.from_config(cfg.model, shape)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise RunError(f"weights in {path / files[which]} do not fit config.toml: {e}") from None
    return model.to(device).eval(), cfg


MAX_SIDE = 16384  # pixels; an image side beyond this is not a vaelab model's


def _image_shape(meta: dict, path: Path) -> tuple[int, int, int]:
    try:
        shape = json.loads(meta["image_shape"])
        ok = isinstance(shape, list) and len(shape) == 3 and \
            all(isinstance(v, int) and not isinstance(v, bool) for v in shape) and \
            shape[0] in (1, 3) and 1 <= shape[1] <= MAX_SIDE and 1 <= shape[2] <= MAX_SIDE
    except (KeyError, ValueError, TypeError):
        ok = False
    if not ok:
        raise RunError(f"{path}: its metadata names no valid image shape "
                       f"({meta.get('image_shape')!r}); the file is damaged or not vaelab's")
    return tuple(shape)


def _check_shapes(skeleton: VAE, weights: dict, path: Path) -> None:
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or \
            [k for k in want if want[k] != have[k]]
        raise RunError(f"the weights in {path} do not fit config.toml and its image shape "
                       f"(first differences: {', '.join(diff[:3])}); the config was edited, or "
                       "the file belongs to another run")


def model_settings(cfg: Config) -> str:
    """The [model] settings that weights are trained under, as saved beside them."""
    return json.dumps(cfg.to_dict()["model"], sort_keys=True)


def check_settings(meta: dict, cfg: Config, path: Path) -> None:
    """The weights' recorded [model] settings equal config.toml's (when recorded: runs
    from before this check have none). Edits that keep the shapes (an activation) would
    otherwise change the model silently."""
    if "model_settings" not in meta:
        return
    try:
        saved = json.loads(json.loads(meta["model_settings"]))
    except (ValueError, TypeError):
        raise RunError(f"{path}: damaged metadata (model_settings)") from None
    now = cfg.to_dict()["model"]
    if saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise RunError(f"{path.parent / 'config.toml'} was edited after training: "
                       + ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
                       + "; the weights were trained with the first; restore config.toml")


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
    schedule: dict | None = None  # the learning-rate schedule's state (vaelab.schedule)


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
    meta = _meta(model, state=state.__dict__, **extra)
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
        model.load_state_dict(_prefixed(tensors, "model."))
        if average is not None:
            if not any(k.startswith("ema.") for k in tensors):
                raise RuntimeError("it holds no moving average of the weights (ema.*), "
                                   "which config.toml's ema asks for")
            average.load_state_dict(_prefixed(tensors, "ema."))
    except RuntimeError as e:
        raise RunError(f"{path} does not fit {run_dir / 'config.toml'} (was the config edited "
                       f"after training?): {str(e).splitlines()[0]}") from None
    try:
        opt.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
        torch.set_rng_state(tensors["rng.cpu"])
        gen.set_state(tensors["rng.data"])
        if "rng.cuda" in tensors and model.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], model.device)
        state = TrainState(**json.loads(meta["state"]))
        if not isinstance(state.epoch, int) or state.epoch < 1:
            raise ValueError(f"epoch {state.epoch!r}")
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise RunError(f"{path} is damaged ({type(e).__name__}: {e}); the run cannot be "
                       "resumed from it (its best weights, model.safetensors, are intact)") \
            from None
    return state


# [train] settings added since runs were first written, with what runs without them did:
# a run's config.toml names every setting of its time, so a missing one means "before it"
LEGACY_TRAIN = {"ema": 0.0}


def legacy_settings(cfg: Config, run_dir: Path) -> Config:
    """``cfg`` with the settings that ``run_dir``'s config.toml predates set to what the run
    did then (a run written before the moving average became the default has none)."""
    from .config import tomllib

    try:
        saved = tomllib.loads((run_dir / "config.toml").read_text()).get("train", {})
    except (OSError, ValueError):
        return cfg  # no readable config.toml: nothing to resume, said elsewhere
    missing = {k: v for k, v in LEGACY_TRAIN.items() if k not in saved}
    return cfg.override(**missing) if missing else cfg


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_finite(model: VAE, what: str) -> None:
    """Refuse to write weights that are not all finite."""
    bad = [n for n, p in model.state_dict().items()
           if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise RunError(f"not writing {what}: the weights {', '.join(bad[:3])}"
                       f"{' ...' if len(bad) > 3 else ''} are not finite")


EXPORT = "config.json"  # what makes a folder an exported model


def weights_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_export(path: Path, cfg: Config) -> None:
    """An exported folder's config.json agrees with its config.toml and its weights."""
    try:
        info = json.loads((path / EXPORT).read_text())
        if not isinstance(info, dict) or info.get("format") != "vaelab-export-1":
            raise ValueError("not a vaelab export (format)")
        config, digest = info["config"], info["weights_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path / EXPORT} is damaged or not vaelab's ({e}); export the run "
                       "again") from None
    if Config.from_dict(config, str(path / EXPORT)).to_dict() != cfg.to_dict():
        raise RunError(f"{path}: config.toml and config.json describe different models; "
                       "one of them was changed after the export")
    if not (path / "model.safetensors").is_file() or \
            weights_digest(path / "model.safetensors") != digest:
        raise RunError(f"{path / 'model.safetensors'} is not the file that was exported (its "
                       "SHA-256 differs from config.json's): damaged or tampered with; "
                       "download or export it again")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The epochs' metrics. A last line torn by a crash during its append is left out,
    with a warning (resuming rewrites the log from the checkpoint's epochs)."""
    p = place(run_dir).source / "metrics.jsonl"
    if not p.is_file():
        return []
    lines = [line for line in p.read_text(errors="replace").splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not an epoch's metrics")
            out.append(row)
        except ValueError:
            if i < len(lines) - 1:
                raise RunError(f"{p}, line {i + 1}, is damaged; delete the damaged lines (the "
                               "checkpoint holds the training state)") from None
            log.warning("%s: the last line is incomplete (a crash while it was written); "
                        "left out", p)
    return out


RESULTS = ("evaluate", "baselines", "classify")  # RUN/<name>.json, written by those commands


def write_result(run_dir: str | Path, name: str, key: str, value) -> Path:
    """Record a command's result in ``RUN/<name>.json`` under ``key`` (e.g. the split and k
    of an evaluation); other keys are kept. Atomic: an interrupted write loses nothing."""
    if name not in RESULTS:
        raise ValueError(f"unknown result {name!r}; one of {RESULTS}")
    path = workdir(run_dir) / f"{name}.json"
    entries = _read_result(path) if path.is_file() else {}
    entries[key] = value
    atomic_write(path, (json.dumps(entries, indent=1) + "\n").encode())
    return path


def read_results(run_dir: str | Path) -> dict[str, dict]:
    """The results recorded for a run: ``{name: {key: value}}`` for each file that exists
    (for a downloaded model, those it came with and those the user's commands added). A
    file that is not valid JSON raises a RunError naming it."""
    where = place(run_dir)
    out: dict[str, dict] = {}
    for d in dict.fromkeys([where.source, where.workdir]):
        for name in RESULTS:
            if (d / f"{name}.json").is_file():
                out.setdefault(name, {}).update(_read_result(d / f"{name}.json"))
    return out


def _read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}); delete it and run "
                       f"`vaelab {path.stem}` again") from e
