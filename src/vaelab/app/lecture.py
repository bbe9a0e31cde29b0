"""``vaelab lecture``: the lecture on VAEs as one self-contained page, every section computed
on the reader's own models (:mod:`vaelab.studies.lecture` computes, this module writes).

The runs: a VAE, the same with a 2-D latent (Bayes rule on a grid) and an autoencoder of
the same nets. Given RUNs take their roles (an autoencoder run, a planar run, a VAE); what
is missing is trained on the same data with the lecture's recipe and cached under the
user's cache directory, so a second call computes the page without training.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..coding.compress import compress, decompress
from ..config import Config
from ..data.datasets import cache_dir
from ..data.splits import Data, load_data
from ..devices import resolve_device
from ..errors import ConfigError
from ..files import atomic_write
from ..models.vae import VAE
from ..runs.checkpoint import read_trained_epochs
from ..runs.records import read_metrics, write_result
from ..runs.rundir import load_run, place
from ..studies import lecture as study
from ..training.loop import train
from . import lecture_page as page

log = logging.getLogger(__name__)
ROLES = ("vae", "plane", "autoencoder")
# over the given VAE's data and nets (the defaults' if none); the lecture's VAEs learn by
# the ELBO alone, as it tells (no IWAE tail: it would loosen q(z|x) against p(z|x))
RECIPES = {"vae": {"iwae_epochs": 0}, "plane": {"latent_dim": 2, "iwae_epochs": 0},
           "autoencoder": {"autoencoder": True, "kl_warmup": 0}}


@dataclass
class Lecture:
    runs: dict[str, str]  # role -> run
    models: dict[str, VAE]
    cfg: Config  # the VAE's
    data: Data
    trained: list[str]  # roles trained in this call
    sections: dict = field(default_factory=dict)  # what write_lecture computed
    page: str = ""  # and wrote


def role_of(model: VAE, cfg: Config) -> str:
    return "autoencoder" if cfg.train.autoencoder else "plane" if model.planar else "vae"


def prepare(specs: list[str], device: str = "auto", progress: bool = True,
            data_dir: str | None = None) -> Lecture:
    """The lecture's three models: the given runs in their roles, the missing ones trained
    (or found in the cache) on the same data (``data_dir``: where it is, as
    :func:`~vaelab.runs.rundir.load_run` takes it)."""
    dev = resolve_device(device)
    runs: dict[str, str] = {}
    loaded: dict[str, tuple[VAE, Config]] = {}
    for spec in specs:
        model, cfg = load_run(spec, device=dev, data_dir=data_dir)
        role = role_of(model, cfg)
        if role in runs:
            raise ConfigError(f"{runs[role]} and {spec} are both a {role} run; give one of "
                              f"each role ({', '.join(ROLES)})")
        runs[role], loaded[role] = str(spec), (model, cfg)
    first = (loaded.get("vae") or next(iter(loaded.values()), (None, Config())))[1]
    base = Config(data=first.data, model=loaded["vae"][1].model if "vae" in loaded else
                  Config().model)  # the nets of the given VAE, else the defaults'
    trained = []
    for role in ROLES:
        if role not in runs:
            runs[role], fresh = _cached(role, base, dev, progress)
            trained += [role] if fresh else []
            loaded[role] = load_run(runs[role], device=dev)
    cfg = loaded["vae"][1]
    return Lecture(runs, {role: m for role, (m, _) in loaded.items()}, cfg,
                   load_data(cfg.data, dev), trained)


def _cached(role: str, base: Config, device: torch.device, progress: bool
            ) -> tuple[str, bool]:
    """The run of ``role`` for ``base``'s data, from the cache or trained there now."""
    cfg = Config(data=base.data, model=base.model).override(**RECIPES[role],
                                                            device=str(device))
    settings = cfg.to_dict()
    key = hashlib.sha256(json.dumps([role, settings["data"], settings["model"], RECIPES[role]],
                                    sort_keys=True).encode()).hexdigest()[:16]
    run = cache_dir() / "lecture" / f"{cfg.data.dataset}-{role}-{key}"
    epochs = read_trained_epochs(run)
    if epochs >= cfg.train.epochs and (run / "model.safetensors").is_file():
        return str(run), False
    log.info("lecture: training the %s (%s, %d epochs) in %s", role, cfg.data.dataset,
             cfg.train.epochs, run)
    train(cfg, run, resume=epochs > 0, progress=progress)
    return str(run), True


def write_lecture(lec: Lecture, out: str | Path, k: int = 1000, seed: int = 0,
                  live: bool = False) -> Path:
    """Compute every section and write ``out/index.html`` (both kept in ``lec``)."""
    out = Path(out)
    vae, plane, ae = (lec.models[r] for r in ROLES)
    s: dict = {"mle": study.mle(lec.data, seed)}
    s["bayes"] = study.bayes(plane, lec.data, 0, seed)
    s["gen_disc"] = study.gen_disc(lec.data, lec.cfg, vae, ae, seed) \
        if lec.data.classes else None
    if s["gen_disc"]:
        s["autoencoder"] = study.autoencoder(s["gen_disc"]["task"], vae, ae, seed)
    s["compress"] = study.compression(lec.data, vae, s["mle"]["factorized"], k, seed)
    _compressed_file(s["compress"], vae)
    ev = s["compress"]["evaluation"]
    write_result(lec.runs["vae"], "evaluate", f"test, k={k}, best",
                 {**ev, "run": lec.runs["vae"], "which": "best"})
    s["imagination"] = study.imagination(vae, lec.data, seed=seed)
    s["history"] = read_metrics(lec.runs["vae"])
    s["test_images"] = len(lec.data.test)
    lec.sections, lec.page = s, page.render(lec, s, k, live, _script())
    atomic_write(out / "index.html", lec.page.encode())
    return out / "index.html"


def _compressed_file(c: dict, vae: VAE) -> None:
    """The row of a real ``vaelab compress`` file of the test images (checked lossless)."""
    c["file"] = None
    try:
        blob = compress(vae, c["images"])
    except ConfigError as e:  # constriction (vaelab[compress]) missing, or a density model
        c["file_note"] = f"no compressed file: {e}"
        return
    if not (decompress(vae, blob) == c["images"]).all():
        raise AssertionError("the compressed file did not decode to the test images")
    c["rows"]["vaelab compress file (bits-back, with its header)"] = 8.0 * len(blob) / c["n"]
    c["file"] = len(blob)


def serve_lecture(lec: Lecture, sock, host: str, ready=None) -> None:
    """The page ``write_lecture`` wrote, live: its controls answered by the models
    (:mod:`.lecture_live`)."""
    import threading

    from . import lecture_live
    from .serve import create_app, run_server

    app = create_app({}, first=(lecture_live.router,))
    app.state.lecture = {"page": lec.page, "mle": lec.sections["mle"], "data": lec.data,
                         "plane": lec.models["plane"], "vae": lec.models["vae"],
                         "lock": threading.Lock()}
    run_server(app, sock, host, ready)


def _script() -> str:
    return (resources.files(__package__) / "web" / "lecture.js").read_text(encoding="utf-8")


def describe(lec: Lecture) -> str:
    said = [f"{role}: {place(spec).source}" + (" (trained now)" if role in lec.trained
                                               else "") for role, spec in lec.runs.items()]
    return "\n".join(said)

