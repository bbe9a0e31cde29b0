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
import shutil
from pathlib import Path

from ..config import Config
from ..errors import RunError
from ..files import atomic_write
from .records import RESULTS, read_results
from .rundir import EXPORT, load_run, place, weights_digest

DATASETS = {  # vaelab name -> (display name, Hub data set id, licence of the data)
    "mnist": ("MNIST", "ylecun/mnist", "cc-by-sa-3.0"),
    "fashion-mnist": ("Fashion-MNIST", "zalando-datasets/fashion_mnist", "mit"),
    "digits": ("scikit-learn digits (UCI)", None, "cc-by-4.0"),
}
FIGURES = ("samples.png", "reconstructions.png", "curves.png")


def export_run(run: str | Path, out: str | Path, repo_id: str | None = None) -> Path:
    """Write the model folder of ``run`` (a run directory, an exported folder or
    ``hf://...``) to ``out``, which must not exist or be empty. Written whole or not at
    all."""
    src = place(run).source
    model, cfg = load_run(run)  # checks the weights against the config
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out} exists and is not empty; choose another --out")
    part = out.with_name(out.name + ".part")
    if part.exists():
        shutil.rmtree(part)
    (part / "figures").mkdir(parents=True)
    shutil.copyfile(src / "model.safetensors", part / "model.safetensors")
    cfg.save(part / "config.toml")
    info = {"format": "vaelab-export-1", "library": "vaelab", "config": cfg.to_dict(),
            "image_shape": list(model.image_shape), "kind": model.kind,
            "weights_sha256": weights_digest(part / "model.safetensors")}
    atomic_write(part / EXPORT, (json.dumps(info, indent=1) + "\n").encode())
    results = read_results(run)
    for name in RESULTS:
        if name in results:
            atomic_write(part / f"{name}.json", (json.dumps(results[name], indent=1) + "\n")
                         .encode())
    if (src / "metrics.jsonl").is_file():
        shutil.copyfile(src / "metrics.jsonl", part / "metrics.jsonl")
    for fig in FIGURES:
        for d in (place(run).workdir, src):
            if (d / "figures" / fig).is_file():
                shutil.copyfile(d / "figures" / fig, part / "figures" / fig)
                break
    params = sum(p.numel() for p in model.parameters())
    card = model_card(cfg, results, list(model.image_shape), params,
                      (part / "figures" / "samples.png").is_file(), repo_id or out.name)
    (part / "README.md").write_text(card, encoding="utf-8")
    if out.exists():
        out.rmdir()
    part.rename(out)
    return out


# ---------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------
def recorded_evaluation(results: dict) -> dict | None:
    """The recorded test evaluation of the best weights with the most importance samples
    (the ELBO-only one if no k was used); None if none was recorded."""
    ev = [r for r in results.get("evaluate", {}).values()
          if isinstance(r, dict) and r.get("split") == "test" and r.get("which", "best") == "best"
          and isinstance(r.get("k", 0), int) and isinstance(r.get("elbo"), float)]
    return max(ev, key=lambda r: r.get("k") or 0) if ev else None


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


def card_metadata(cfg: Config, results: dict, name: str) -> dict:
    ds = DATASETS.get(cfg.data.dataset)
    m = cfg.model
    meta: dict = {"library_name": "vaelab", "license": ds[2] if ds else "other"}
    if ds and ds[1]:
        meta["datasets"] = [ds[1]]
    meta["tags"] = ["vaelab", "vae", "variational-autoencoder", "generative-model",
                    "density-estimation", "pytorch", "safetensors", f"likelihood-{m.likelihood}",
                    f"prior-{m.prior}", f"net-{m.net}"] + (["hierarchical"] if m.layers > 1 else [])
    meta["pipeline_tag"] = "unconditional-image-generation"
    ev = recorded_evaluation(results)
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
            "dataset": {"name": ds[0] if ds else cfg.data.dataset,
                        "type": ds[1] if ds and ds[1] else cfg.data.dataset,
                        "split": "test", "args": protocol},
            "metrics": metrics}]}]
    return meta


def model_card(cfg: Config, results: dict, image_shape: list[int], params: int,
               figure: bool, name: str) -> str:
    m, d = cfg.model, cfg.data
    ds = DATASETS.get(d.dataset, (d.dataset, None, None))[0]
    meta = card_metadata(cfg, results, name)
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
    ev = recorded_evaluation(results)
    if ev:
        lines += ["| test set | value |", "|---|---:|",
                  f"| -ELBO (nats per image) | {-ev['elbo']:.2f} |"]
        if ev.get("k"):
            lines.append(f"| -log p(x), importance-sampled, k = {ev['k']} (nats) | "
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
              f"{f', KL warm-up {cfg.train.kl_warmup} epochs' if cfg.train.kl_warmup else ''}. "
              "`metrics.jsonl` holds every epoch.", ""]
    return "\n".join(lines)


def push_run(run: str | Path, repo_id: str, private: bool = False) -> str:
    """Export ``run`` and upload it to the Hub as ``repo_id``; returns the repository URL."""
    import tempfile

    from .hub import upload

    with tempfile.TemporaryDirectory() as tmp:
        return upload(export_run(run, Path(tmp) / "model", repo_id=repo_id), repo_id, private)
