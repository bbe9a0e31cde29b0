"""Sharing a run: the exported folder (safetensors, config, a model card the Hub parses),
loading it back exactly, and ``hf://`` through huggingface_hub's own code, offline, from a
cache in its documented layout."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import vaelab
from vaelab.app.cli import main
from vaelab.config import Config
from vaelab.errors import RunError

pytestmark = pytest.mark.slow  # real processes, servers, browsers, trainings


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hub") / "run"
    vaelab.train(Config().override(epochs=2, hidden=(32,), latent_dim=3), d, progress=False)
    assert main(["-q", "evaluate", str(d), "--k", "20", "--json"]) == 0
    return d


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "digits-vae"
    assert main(["-q", "export", str(run), "--out", str(out), "--name", "someone/digits-vae"]) == 0
    return out


def test_the_folder_holds_weights_config_and_card(exported):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.toml", "config.json", "README.md", "metrics.jsonl",
            "evaluate.json", "figures/samples.png"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".py")) for n in names)


def test_the_weights_load_with_safetensors_alone(run, exported):
    from safetensors.torch import load_file

    weights = load_file(str(exported / "model.safetensors"))
    model, _ = vaelab.load_run(run)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(weights[k], v)
    info = json.loads((exported / "config.json").read_text())
    assert info["weights_sha256"] == hashlib.sha256(
        (exported / "model.safetensors").read_bytes()).hexdigest()


def test_the_card_parses_as_the_hubs_yaml_with_the_measured_numbers(run, exported):
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard.load(exported / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "vaelab" and "vae" in meta["tags"]
    ev = json.loads((run / "evaluate.json").read_text())["test, k=20, best"]
    metrics = {m["type"]: m["value"] for m in
               meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["nll"] == round(ev["nll"], 2)
    assert metrics["negative-elbo"] == round(-ev["elbo"], 2)
    assert "k = 20" in card.text and "vaelab train --config config.toml" in card.text


def test_a_card_without_measurements_invents_none(tmp_path):
    d = tmp_path / "r"
    vaelab.train(Config().override(epochs=1, hidden=(16,), latent_dim=2), d, progress=False)
    assert main(["-q", "export", str(d), "--out", str(tmp_path / "e")]) == 0
    text = (tmp_path / "e" / "README.md").read_text()
    assert "model-index" not in text and "No test evaluation was recorded" in text


def test_export_then_load_gives_identical_outputs(run, exported):
    a, _ = vaelab.load_run(run)
    b, _ = vaelab.load_run(exported)
    x = torch.rand(5, *a.image_shape)
    torch.testing.assert_close(a.encode(x).mean, b.encode(x).mean, rtol=0, atol=0)
    torch.testing.assert_close(vaelab.imagine(a, 8)["mean"], vaelab.imagine(b, 8)["mean"],
                               rtol=0, atol=0)


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-8] + b"\0" * 8), "tampered"),
    (lambda d: (d / "config.toml").write_text(
        (d / "config.toml").read_text().replace('activation = "gelu"',
                                                'activation = "tanh"')), "different models"),
    (lambda d: (d / "config.json").write_text("{"), "damaged"),
])
def test_a_tampered_folder_is_refused(exported, tmp_path, damage, words):
    d = tmp_path / "copy"
    shutil.copytree(exported, d)
    damage(d)
    with pytest.raises(RunError, match=words):
        vaelab.load_run(d)


def test_an_exported_folder_has_no_last_checkpoint(exported):
    with pytest.raises(RunError, match="best weights only"):
        vaelab.load_run(exported, "last")


# ---- hf:// through huggingface_hub, offline ----------------------------------------------
def _cache(exported, root, repo="someone/digits-vae", tampered=False):
    """The Hub cache's layout: blobs by content hash, a snapshot of links, refs/main."""
    base = root / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    for f in exported.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        if tampered and f.name == "model.safetensors":
            data = data[:-4] + b"\x7f\x7f\x7f\x7f"
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / commit / f.relative_to(exported)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    (base / "refs" / "v1").write_text(commit)
    return commit


def _vaelab(args, cache, home):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "VAELAB_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "vaelab", "-q", *args], env=env,
                          capture_output=True, text=True)


def test_hf_paths_load_through_huggingface_hub_offline(run, exported, tmp_path):
    pytest.importorskip("huggingface_hub")
    cache, home = tmp_path / "hf-cache", tmp_path / "home"
    _cache(exported, cache)
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    local = json.loads(subprocess.run(
        [sys.executable, "-m", "vaelab", "-q", "evaluate", str(run), "--json"],
        capture_output=True, text=True, check=True).stdout)
    for spec in ("hf://someone/digits-vae", "hf://someone/digits-vae@v1"):
        r = _vaelab(["evaluate", spec, "--json"], cache, home)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        # the same weights and seed; two processes' float32 products need not split their
        # sums alike (MKL picks its threads at run time), so equal to ~1e-6, not bit for bit
        assert got["elbo"] == pytest.approx(local["elbo"], abs=1e-3)
        assert got["kl_per_dim"] == pytest.approx(local["kl_per_dim"], abs=1e-4)
    r = _vaelab(["sample", "hf://someone/digits-vae", "--n", "16"], cache, home)
    assert r.returncode == 0, r.stderr
    # what the commands wrote went to the user's folder, never into the Hub's cache
    assert (home / "hub" / "someone--digits-vae" / "evaluate.json").is_file()
    assert (home / "hub" / "someone--digits-vae" / "figures" / "samples.png").is_file()
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


def test_hf_errors_are_clear(exported, tmp_path):
    pytest.importorskip("huggingface_hub")
    cache, home = tmp_path / "hf-cache", tmp_path / "home"
    _cache(exported, cache, tampered=True)
    r = _vaelab(["sample", "hf://someone/digits-vae"], cache, home)
    assert r.returncode == 2 and "tampered" in r.stderr and "Traceback" not in r.stderr
    r = _vaelab(["sample", "hf://someone/missing"], cache, home)
    assert r.returncode == 2 and "Hugging Face Hub" in r.stderr and "Traceback" not in r.stderr
    r = _vaelab(["sample", "hf://not a name"], cache, home)
    assert r.returncode == 2 and "hf://USER/REPO" in r.stderr


def test_push_without_the_hub_is_a_clear_error(run, tmp_path):
    pytest.importorskip("huggingface_hub")
    def files():  # (the samples figure the card shows may be drawn into RUN/figures)
        return sorted(p.relative_to(run) for p in run.rglob("*") if "figures" not in p.parts)

    before = files()
    r = _vaelab(["push", str(run), "someone/digits-vae"], tmp_path / "c", tmp_path / "h")
    assert r.returncode == 2 and "cannot upload to someone/digits-vae" in r.stderr
    assert "Traceback" not in r.stderr
    assert files() == before  # no export folder or partial file left behind
