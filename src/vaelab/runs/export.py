"""A run as a model others can load: a folder in the Hugging Face Hub's conventions.

    model.safetensors   the best weights, byte for byte (loads with safetensors alone)
    config.toml         the run's configuration (``vaelab train --config`` reproduces it)
    config.json         the same as JSON, the image shape and the weights' SHA-256
    README.md           the model card: YAML metadata (library, licence, data set, tags and
                        the model-index results measured by ``vaelab evaluate``), the
                        samples figure, the protocol, how to train and load it
    metrics.jsonl, evaluate.json, baselines.json, classify.json, figures/*.png   as recorded

Only measured numbers enter the card; what was not measured is left out. The folder is a
run directory without the checkpoint: every command that takes a RUN takes it, and
``hf://USER/REPO`` once it is pushed (:mod:`vaelab.runs.hub`).
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

from ..config import Config
from ..errors import ConfigError, RunError
from ..files import atomic_dir, atomic_write
from .records import RESULTS, estimate_words, read_results, tail_words
from .rundir import EXPORT, load_run, place, weights_digest

log = logging.getLogger(__name__)
DATASETS = {  # vaelab name -> (display name, Hub data set id, licence of the data)
    "mnist": ("MNIST", "ylecun/mnist", "cc-by-sa-3.0"),
    "fashion-mnist": ("Fashion-MNIST", "zalando-datasets/fashion_mnist", "mit"),
    "digits": ("scikit-learn digits (UCI)", None, "cc-by-4.0"),
}
FIGURES = ("samples.png", "reconstructions.png", "curves.png")


def export_run(run: str | Path, out: str | Path, repo_id: str | None = None) -> Path:
    """Write the model folder of ``run`` (a run directory, an exported folder or
    ``hf://...``) to ``out``, which must not exist or be empty. Written whole or not at
    all; only regular files that live inside the run are copied (a link is skipped, with a
    warning), and the config keeps no local path (``data_dir``)."""
    src = place(run).source
    model, cfg = load_run(run)  # checks the weights against the config
    cfg = cfg.override(data_dir=None)  # a path of this machine means nothing elsewhere
    name = card_name(repo_id) if repo_id else \
        card_name(re.sub(r"[^\w.-]+", "-", Path(out).name).lstrip("-._") or "model")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out} exists and is not empty; choose another --out")
    results = read_results(run)
    with atomic_dir(out) as part:
        (part / "figures").mkdir()
        _copy_inside(src, "model.safetensors", part, required=True)
        cfg.save(part / "config.toml")
        info = {"format": "vaelab-export-1", "library": "vaelab", "config": cfg.to_dict(),
                "image_shape": list(model.image_shape), "kind": model.kind,
                "weights_sha256": weights_digest(part / "model.safetensors")}
        atomic_write(part / EXPORT, (json.dumps(info, indent=1) + "\n").encode())
        for result in RESULTS:
            if result in results:
                atomic_write(part / f"{result}.json",
                             (json.dumps(results[result], indent=1) + "\n").encode())
        _copy_inside(src, "metrics.jsonl", part)
        for fig in FIGURES:
            any(_copy_inside(d, f"figures/{fig}", part)
                for d in dict.fromkeys([place(run).workdir, src]))
        params = sum(p.numel() for p in model.parameters())
        card = model_card(cfg, results, list(model.image_shape), params,
                          (part / "figures" / "samples.png").is_file(), name)
        (part / "README.md").write_text(card, encoding="utf-8")
    return out


def _copy_inside(root: Path, name: str, dest: Path, required: bool = False) -> bool:
    """Copy ``root/name`` to ``dest/name`` if it is a regular file inside ``root`` (not a
    link, nor under one); whether it was copied."""
    path = root / name
    inside = not any(p.is_symlink() for p in [path, *path.parents][:len(Path(name).parts)])
    if path.is_file() and inside and path.resolve().is_relative_to(root.resolve()):
        shutil.copyfile(path, dest / name)
        return True
    if path.is_symlink() or (path.exists() and not inside):
        log.warning("export: skipped %s, a link (only the run's own files are exported)", path)
    if required:
        raise RunError(f"{path} is not a regular file of the run (a link, or missing); "
                       "nothing was exported")
    return False


# ---------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------
def recorded_evaluation(results: dict) -> dict | None:
    """The recorded test evaluation of the best weights with the most importance samples
    (the ELBO-only one if no k was used), of those that are what ``vaelab evaluate``
    records (every number a finite number, every count a count); None if none is."""
    ev = [r for r in results.get("evaluate", {}).values() if _measured(r)]
    return max(ev, key=lambda r: r.get("k", 0)) if ev else None


def _measured(r) -> bool:
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v, least: int = 0) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    ok = isinstance(r, dict) and r.get("split") == "test" and r.get("which", "best") == "best" \
        and count(r.get("k", 0)) and count(r.get("n"), 1) and number(r.get("elbo")) \
        and all(number(r.get(key)) for key in ("nll", "nll_stderr") if r.get("k", 0)) \
        and all(r.get(key) is None or number(r[key])
                for key in ("bits_per_dim", "nll_bits_per_dim")) \
        and all(count(r.get(key, 0)) for key in ("active_units", "latent_dim"))
    if isinstance(r, dict) and not ok:
        log.warning("export: an entry of evaluate.json is not a measurement vaelab made "
                    "(a field is missing or not a number); it is left out of the card")
    return ok


def _plain(text: str) -> str:
    """A string from a run, with nothing Markdown or HTML would read as markup."""
    return re.sub(r"[^\w .:+-]", "-", str(text))


NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def card_name(name: str) -> str:
    """The name a card uses: USER/REPO, or a folder's name, in the Hub's letters only."""
    if not NAME.match(name):
        raise ConfigError(f"{name!r} cannot name a model: use USER/REPO (letters, digits, "
                          "'-', '_', '.'), e.g. --name alice/vae-digits")
    return name


def _yaml(value, indent: int = 0) -> str:
    """A small YAML emitter for the card's metadata (mappings, lists, scalars); scalars
    are written as JSON, which YAML reads."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{k}: {json.dumps(v)}")
        return "\n".join(lines)
    lines = []
    for v in value:
        if isinstance(v, dict):
            body = _yaml(v, indent + 2)
            lines.append(f"{pad}- {body.lstrip()}")
        else:
            lines.append(f"{pad}- {json.dumps(v)}")
    return "\n".join(lines)


def card_metadata(cfg: Config, ev: dict | None, name: str) -> dict:
    ds = DATASETS.get(cfg.data.dataset)
    m = cfg.model
    meta: dict = {"library_name": "vaelab", "license": ds[2] if ds else "other"}
    if ds and ds[1]:
        meta["datasets"] = [ds[1]]
    meta["tags"] = ["vaelab", "vae", "variational-autoencoder", "generative-model",
                    "density-estimation", "pytorch", "safetensors", f"likelihood-{m.likelihood}",
                    f"prior-{m.prior}", f"net-{m.net}"] + (["hierarchical"] if m.layers > 1 else [])
    meta["pipeline_tag"] = "unconditional-image-generation"
    if ev:
        protocol = f"{cfg.data.binarize} binarization" if cfg.data.binarize != "none" else \
            f"{m.levels}-level grey images"
        metrics = []
        if ev.get("k"):
            metrics.append({"type": "nll", "value": round(ev["nll"], 2),
                            "name": f"test NLL (nats, importance-sampled, k = {ev['k']})"})
        metrics.append({"type": "negative-elbo", "value": round(-ev["elbo"], 2),
                        "name": "test -ELBO (nats)"})
        bpd = ev.get("nll_bits_per_dim") if ev.get("k") else ev.get("bits_per_dim")
        if bpd is not None:
            metrics.append({"type": "bits-per-dim", "value": round(bpd, 4),
                            "name": "test NLL (bits/dim)" if ev.get("k") else
                            "test -ELBO (bits/dim)"})
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "unconditional-image-generation", "name": "Density estimation"},
            "dataset": {"name": ds[0] if ds else _plain(cfg.data.dataset),
                        "type": ds[1] if ds and ds[1] else _plain(cfg.data.dataset),
                        "split": "test", "args": protocol},
            "metrics": metrics}]}]
    return meta


def model_card(cfg: Config, results: dict, image_shape: list[int], params: int,
               figure: bool, name: str) -> str:
    m, d = cfg.model, cfg.data
    ds = DATASETS.get(d.dataset, (_plain(d.dataset), None, None))[0]
    ev = recorded_evaluation(results)
    meta = card_metadata(cfg, ev, name)
    kind = f"a hierarchical VAE of {m.layers} stochastic layers" if m.layers > 1 else "a VAE"
    lines = ["---", _yaml(meta), "---", "", f"# {name}", "",
             f"{kind[0].upper() + kind[1:]} trained with [vaelab](https://pypi.org/project/"
             f"vaelab/) on {ds} ({' x '.join(map(str, image_shape))} images): a {m.net} "
             f"encoder and decoder, {m.latent_dim} latent dimensions"
             f"{' per layer' if m.layers > 1 else ''}, the {m.prior} prior and the "
             f"{m.likelihood} likelihood ({params:,} parameters). Weights in safetensors; "
             "nothing is pickled.", ""]
    if figure:
        lines += ["![Data, mean samples and samples](figures/samples.png)", "",
                  "*Test images, E[x|z] and x ~ p(x|z) for the same codes z ~ p(z).*", ""]
    lines += ["## Results", ""]
    if ev:
        lines += ["| test set | value |", "|---|---:|",
                  f"| -ELBO (nats per image) | {-ev['elbo']:.2f} |"]
        if ev.get("k"):
            lines.append(f"| -log p(x), importance-sampled, {estimate_words(ev)} (nats) | "
                         f"{ev['nll']:.2f} ± {ev['nll_stderr']:.2f} |")
        bpd = ev.get("nll_bits_per_dim") if ev.get("k") else ev.get("bits_per_dim")
        if bpd is not None:
            lines.append(f"| bits/dim | {bpd:.4f} |")
        lines += ["", f"Measured by `vaelab evaluate` on the {ev['n']} test images "
                  f"({'binarized once with the run seed' if d.binarize != 'none' else 'as stored'}"
                  f"), the best checkpoint; {ev.get('active_units', '?')} of "
                  f"{ev.get('latent_dim', '?')} latent units active.", ""]
    else:
        lines += ["No test evaluation was recorded for this model (`vaelab evaluate RUN "
                  "--k 5000` records one before exporting).", ""]
    lines += ["## Use", "", "```bash", "pip install 'vaelab[hub]'",
              f"vaelab sample hf://{name}            # the figure above, anew",
              f"vaelab evaluate hf://{name} --k 5000",
              f"vaelab report hf://{name}", "```", "", "```python", "import vaelab",
              f'model, cfg = vaelab.load_run("hf://{name}")',
              "g = vaelab.imagine(model, 100)   # z ~ p(z); E[x|z] and x ~ p(x|z)", "```", "",
              "The weights load without vaelab too: `safetensors.torch.load_file("
              "\"model.safetensors\")`; `config.json` holds the settings and the weights' "
              "SHA-256.", "", "## Training", "",
              "```bash", "vaelab train --config config.toml", "```", "",
              f"Data: {ds}, `binarize = {d.binarize}`, validation split {d.val_size} "
              f"(seed {d.split_seed}); {cfg.train.epochs} epochs of Adam, learning rate "
              f"{cfg.train.lr}, batch {cfg.train.batch_size}, objective {cfg.train.objective}"
              f"{f', KL warm-up {cfg.train.warmup} epochs' if cfg.train.warmup else ''}"
              f"{tail_words(cfg.train)}. "
              "`metrics.jsonl` holds every epoch.", ""]
    return "\n".join(lines)


def push_run(run: str | Path, repo_id: str, private: bool = False) -> str:
    """Export ``run`` and upload it to the Hub as ``repo_id``; returns the repository URL."""
    import tempfile

    from .hub import upload

    with tempfile.TemporaryDirectory() as tmp:
        return upload(export_run(run, Path(tmp) / "model", repo_id=repo_id), repo_id, private)
