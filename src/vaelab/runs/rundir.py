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
``vaelab export`` and shared on the Hugging Face Hub (:mod:`vaelab.runs.hub`); an exported
folder is a run directory without the checkpoint, plus ``config.json`` with the weights'
SHA-256, checked on loading. :func:`place` says where a run's files are read and where
the commands write about it: a downloaded model is read from the Hub's cache and written
about in the user's own folder, never in that cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..config import Config
from ..values import read_toml
from ..errors import ConfigError, RunError
from ..files import atomic_write, user_dir
from ..models.vae import VAE
from .hub import cache_key, download, is_hub

FORMAT = "vaelab-run-1"
log = logging.getLogger(__name__)


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


def weights_metadata(model: VAE, **extra) -> dict[str, str]:
    return {"format": FORMAT, "image_shape": json.dumps(list(model.image_shape)),
            **{k: json.dumps(v) for k, v in extra.items()}}


def save_weights(path: Path, model: VAE, **extra) -> None:
    check_finite(model, str(path))
    atomic_write(path, st_save({k: v.contiguous() for k, v in model.state_dict().items()},
                               metadata=weights_metadata(model, **extra)))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise RunError(f"{path} does not exist; is {path.parent} a vaelab run directory?")
    try:
        with safe_open(str(path), "pt") as f:  # memory-mapped: only the tensors are read
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise RunError(f"{path} is corrupt or not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise RunError(f"{path} was not written by vaelab (format {meta.get('format')!r})")
    return tensors, meta


def load_run(path: str | Path, which: str = "best", device: str | torch.device = "cpu",
             data_dir: str | Path | None = None) -> tuple[VAE, Config]:
    """The model of a run (``which``: "best" or "last") and its config. ``path``: a run
    directory, an exported folder or ``hf://USER/REPO[@REVISION]``. ``data_dir``, if given,
    is where the data set is (the user's ``--data-dir``); a model from elsewhere (an
    exported folder, ``hf://``) brings none of its own: its config's ``data_dir`` is
    dropped, so that it never chooses which local folder is read."""
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
        weights = prefixed(tensors, "ema.") or prefixed(tensors, "model.")
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
    if bad := not_finite(model):
        raise RunError(f"the weights in {path / files[which]} are not all finite ({bad}): "
                       "written by a run that diverged, or damaged; use the other checkpoint "
                       "(--which best or last) or train again")
    if data_dir or (path / EXPORT).is_file():
        cfg = cfg.override(data_dir=str(Path(data_dir).resolve()) if data_dir else None)
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


# [model] settings added since weights first recorded theirs, with the value that the
# weights saved before them were trained with
LEGACY_MODEL = {"dropout": 0.0}


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
    saved = {**LEGACY_MODEL, **saved}
    now = cfg.to_dict()["model"]
    if saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise RunError(f"{path.parent / 'config.toml'} was edited after training: "
                       + ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
                       + "; the weights were trained with the first; restore config.toml")


# [train] settings added since runs were first written, with what runs without them did:
# a run's config.toml names every setting of its time, so a missing one means "before it"
LEGACY_TRAIN = {"ema": 0.0, "select": "elbo", "kl_warmup": 0, "precision": "fp32"}
# and settings whose default is worked out as the run goes (a sixth of its epochs, also when
# a resumed run gets more or fewer), so not written: known by a key written with them
LEGACY_BY = {"iwae_epochs": ("iwae_k", 0)}


def legacy_settings(cfg: Config, run_dir: Path) -> Config:
    """``cfg`` with the settings that ``run_dir``'s config.toml predates set to what the run
    did then (a run written before the moving average became the default has none), and
    those left to ``auto`` that the run resolved when it started (``precision``: timed
    once per run) set to what it recorded."""
    try:
        saved = read_toml(run_dir / "config.toml").get("train", {})
    except ConfigError:
        return cfg  # no readable config.toml: nothing to resume, said elsewhere
    missing = {k: v for k, v in LEGACY_TRAIN.items() if k not in saved}
    missing.update({k: v for k, (known, v) in LEGACY_BY.items() if known not in saved})
    if cfg.train.precision == "auto" and saved.get("precision") in ("fp32", "bf16"):
        missing.setdefault("precision", saved["precision"])
    return cfg.override(**missing) if missing else cfg


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def not_finite(model: VAE) -> str:
    """The names of the model's weights that are not all finite ("" if none)."""
    bad = [n for n, p in model.state_dict().items()
           if p.is_floating_point() and not torch.isfinite(p).all()]
    return ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")


def check_finite(model: VAE, what: str) -> None:
    """Refuse to write weights that are not all finite."""
    if bad := not_finite(model):
        raise RunError(f"not writing {what}: the weights {bad} are not finite")


EXPORT = "config.json"  # what makes a folder an exported model


def weights_digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks (a file of any size costs one chunk of memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_export(path: Path, cfg: Config) -> None:
    """An exported folder's config.json agrees with its config.toml and its weights."""
    try:
        info = json.loads((path / EXPORT).read_text())
        if not isinstance(info, dict) or info.get("format") != "vaelab-export-1":
            raise ValueError("not a vaelab export (format)")
        config, digest = info["config"], info["weights_sha256"]
        if not isinstance(config, dict) or not isinstance(digest, str):
            raise TypeError("its config or weights_sha256 is of the wrong type")
        exported = Config.from_dict(config, str(path / EXPORT))
    except (ValueError, KeyError, TypeError) as e:  # a ConfigError is a ValueError
        raise RunError(f"{path / EXPORT} is damaged or not vaelab's ({e}); export the run "
                       "again") from None
    if exported.to_dict() != cfg.to_dict():
        raise RunError(f"{path}: config.toml and config.json describe different models; "
                       "one of them was changed after the export")
    if not (path / "model.safetensors").is_file() or \
            weights_digest(path / "model.safetensors") != digest:
        raise RunError(f"{path / 'model.safetensors'} is not the file that was exported (its "
                       "SHA-256 differs from config.json's): damaged or tampered with; "
                       "download or export it again")
