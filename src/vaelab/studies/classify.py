"""The classification experiment on a VAE run (``vaelab classify``): the codes of the
run's VAE and of an autoencoder trained alike, and every classifier of
:mod:`vaelab.studies.classifiers` on nested labelled subsets. It returns what the
data-efficiency curve and the features figure show; :mod:`vaelab.app.experiments` draws
them and records the result in the run (RUN/classify.json)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
import logging
import math
import time
from pathlib import Path

import torch

from ..data.splits import Data, binarize_once, load_data
from ..devices import resolve_device
from ..errors import ConfigError
from ..files import atomic_write
from ..models.vae import VAE
from ..noise import seeded
from ..runs.records import read_metrics
from ..runs.rundir import load_run, workdir
from ..training.loop import train
from .classifiers import CLASSIFIERS, SIZES, Task, fresh_run, nested_subsets, scores
from .sample import latent_means

Tensor = torch.Tensor
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------
def fixed_view(data: Data, seed: int) -> Data:
    """Dynamically binarized training images -> one seeded draw, so every model sees the
    same pixels (held-out splits are fixed already)."""
    if not data.train.dynamic:
        return data
    s = data.train
    img = binarize_once(s.stored().cpu().numpy(), s.max_value, seed)
    return dataclasses.replace(data, train=dataclasses.replace(
        s, images=torch.from_numpy(img).to(s.images.device), rows=None, max_value=1,
        dynamic=False),
        binarize="static")


def add_codes(task: Task, model: VAE, name: str, seconds: float) -> None:
    """Posterior means of the (fixed-view) training and test images."""
    task.features[name] = (latent_means(model, task.data.train).cpu(),
                           latent_means(model, task.data.test).cpu(), seconds)


def learn_features(task: Task, vae: VAE, vae_seconds: float, data: Data) -> dict[str, VAE]:
    """Codes of the run's VAE, and of an autoencoder of the same size trained here on the
    same (unlabelled) training images."""
    add_codes(task, vae, "VAE", vae_seconds)
    cfg = task.cfg.override(autoencoder=True, kl_warmup=0, iwae_epochs=0,
                            epochs=task.epochs_for(len(data.train)))
    t0 = time.perf_counter()
    ae = train(cfg, fresh_run(task.out_dir / "autoencoder"), data=data, progress=False).model
    add_codes(task, ae, "autoencoder", time.perf_counter() - t0)
    return {"VAE": vae, "autoencoder": ae}


def run_classifiers(task: Task, names: list[str] | None = None, sizes: list[int] | None = None,
                    progress: bool = False) -> list[dict]:
    """Fit every classifier on every nested subset; one row per (classifier, size)."""
    from tqdm.auto import tqdm

    n_train = len(task.data.train)
    sizes = sorted({min(n, n_train) for n in (sizes or [*SIZES, n_train])})
    subsets = nested_subsets(task.data.train.labels, sizes, task.seed)
    kinds = ["generative", "discriminative", "probe"]
    names = sorted(names or CLASSIFIERS.names(), key=lambda n: kinds.index(CLASSIFIERS.get(n).kind))
    y_test = task.data.test.labels
    rows = []
    jobs = [(n, name) for n in sizes for name in names]
    for n, name in tqdm(jobs, desc="classifiers", unit="fit", disable=None if progress else True):
        clf = CLASSIFIERS.get(name)
        t0 = time.perf_counter()
        with seeded(task.seed, task.data.train.images.device):
            log_post = clf.fit(task, subsets[n])
        seconds = time.perf_counter() - t0
        if clf.features:  # the features' own (unsupervised) training counts too
            seconds += task.features[clf.features][2]
        rows.append({"model": name, "kind": clf.kind, "n": n, "seconds": seconds,
                     **scores(log_post, y_test, probabilistic=clf.probabilistic)})
        log.debug("%s, n=%d: accuracy %.4f, %.1fs", name, n, rows[-1]["accuracy"], seconds)
    return rows


def first_layer_filters(model: VAE, n: int = 64) -> Tensor | None:
    """The ``n`` largest-norm rows of an MLP encoder's first weight matrix, as images
    (n, C, H, W), each scaled to [0, 1]; None for other encoders."""
    lin = next((m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)), None)
    d = math.prod(model.image_shape)
    if lin is None or lin.in_features < d:
        return None
    w = lin.weight.detach()[:, :d].cpu()  # (H, D)
    w = w[w.norm(dim=1).argsort(descending=True)[:n]]
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    return ((w - lo) / (hi - lo).clamp_min(1e-12)).reshape(-1, *model.image_shape)


@dataclass
class Classification:
    """What ``vaelab classify`` found: ``result`` (JSON-able: settings and one row per
    classifier and size) and, for the features figure, the test codes and first-layer
    filters of each feature learner (``features``: name -> (codes (N, L), filters or None))."""

    result: dict
    features: dict[str, tuple[Tensor, Tensor | None]]
    labels: Tensor
    classes: tuple[str, ...]
    out_dir: Path
    seed: int


def classify_study(run_dir: str | Path, *, epochs: int | None = None, min_steps: int = 1000,
                   k: int = 16, sizes: list[int] | None = None, names: list[str] | None = None,
                   seed: int = 0, device: str = "auto", progress: bool = False
                   ) -> Classification:
    """The whole experiment on a VAE run: features, every classifier on every subset; the
    rows are written to RUN/classify/efficiency.json. ``epochs`` (default: the run's) is the
    training budget of every model trained here, at least ``min_steps`` steps each."""
    dev = resolve_device(device)
    vae, cfg = load_run(run_dir, device=dev)
    if vae.classes:
        raise ConfigError(f"{run_dir} holds a conditional VAE; `vaelab classify` probes the "
                          "codes of an unconditional one (it trains the conditional VAEs)")
    data = load_data(cfg.data, dev)
    data.require_labels("`vaelab classify`")
    for n in names or []:
        CLASSIFIERS.get(n)  # an unknown name fails before any training
    epochs = epochs or cfg.train.epochs  # the autoencoder trains as long as the VAE did
    cfg = cfg.override(seed=seed, device=str(dev))
    out = workdir(run_dir) / "classify"
    task = Task(fixed_view(data, cfg.data.binarize_seed + 10), cfg, out, epochs, min_steps, k,
                seed)
    models = learn_features(task, vae, sum(m["seconds"] for m in read_metrics(run_dir)), data)
    rows = run_classifiers(task, names, sizes, progress)
    result = {"dataset": data.name, "n_train": len(data.train), "n_test": len(data.test),
              "classes": list(data.classes), "k": k, "epochs": epochs, "min_steps": min_steps,
              "seed": seed, "rows": rows}
    atomic_write(out / "efficiency.json", (json.dumps(result, indent=1) + "\n").encode())
    features = {name: (task.features[name][1], first_layer_filters(m))
                for name, m in models.items()}
    return Classification(result, features, data.test.labels, data.classes, out, seed)
