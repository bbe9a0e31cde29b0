"""Shared models and what they are made from, under hostile input: a run whose files link
out of it, a model that names a local folder, a card fed markup and non-numbers, weights
that are not finite, a sparse multi-gigabyte weights file, the user's umask, and a disk
that fills between the best weights and the first checkpoint. Real files, real exported
folders, the real command line."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vaelab
from vaelab.config import Config
from vaelab.runs.export import export_run

pytestmark = pytest.mark.slow  # trainings and real processes


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaelab", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("share") / "run"
    vaelab.train(Config().override(epochs=2, hidden=(32,), latent_dim=2), d, progress=False)
    return d


def _copy(run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run, d)
    return d


def test_export_copies_only_the_runs_own_regular_files(run, tmp_path):
    d = _copy(run, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's private notes")
    (d / "metrics.jsonl").unlink()
    (d / "metrics.jsonl").symlink_to(secret)
    (d / "figures").mkdir(exist_ok=True)
    (d / "figures" / "samples.png").unlink(missing_ok=True)
    (d / "figures" / "samples.png").symlink_to(secret)
    r = _cli("export", d, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "metrics.jsonl" in r.stderr
    for p in (tmp_path / "out").rglob("*"):
        assert not p.is_symlink()
        if p.is_file():
            assert b"private notes" not in p.read_bytes(), p
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_export_never_removes_a_user_folder_and_leaves_no_temporary(run, tmp_path):
    mine = tmp_path / "out.part"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    r = _cli("export", run, "--out", tmp_path / "out", "--name", "<b>not-a-name")
    assert r.returncode == 2 and "cannot name a model" in r.stderr
    assert (mine / "keep.txt").read_text() == "mine" and not (tmp_path / "out").exists()
    assert _cli("export", run, "--out", tmp_path / "out").returncode == 0
    assert (mine / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.part"]


def test_the_card_states_only_measured_numbers_and_no_markup(run, tmp_path):
    d = _copy(run, tmp_path)
    good = {"split": "test", "which": "best", "k": 50, "n": 359, "elbo": -40.0, "nll": 38.5,
            "nll_stderr": 0.3, "bits_per_dim": 0.9, "nll_bits_per_dim": 0.87,
            "active_units": 2, "latent_dim": 2}
    (d / "evaluate.json").write_text(json.dumps({
        "a": {**good, "k": 5000, "nll": "<script>alert(1)</script>"},  # the most samples
        "b": {**good, "k": 900, "nll": float("nan")},
        "c": good}))
    r = _cli("export", d, "--out", tmp_path / "out", "--name", "alice/vae")
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "out" / "README.md").read_text()
    assert "<script" not in card and "nan" not in card.lower()
    assert "k = 50" in card and "38.50" in card  # the one measured entry
    assert "left out of the card" in r.stderr


def _folder_run(tmp_path, where):
    where.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8)).save(where / f"{i}.png")
    d = tmp_path / "folder-run"
    vaelab.train(Config().override(dataset="folder", data_dir=str(where), image_size=8,
                                   epochs=1, hidden=(16,), latent_dim=2), d, progress=False)
    return d


def test_a_shared_model_never_chooses_which_local_folder_is_read(tmp_path):
    victim = tmp_path / "private-photos"
    out = export_run(_folder_run(tmp_path, victim), tmp_path / "shared")
    assert "private-photos" not in (out / "config.toml").read_text()  # not even exported
    # a hostile author writes a local path into both configs (they must agree)
    info = json.loads((out / "config.json").read_text())
    info["config"]["data"]["data_dir"] = str(victim)
    (out / "config.json").write_text(json.dumps(info))
    toml = (out / "config.toml").read_text().replace("[data]\n",
                                                     f'[data]\ndata_dir = "{victim}"\n')
    (out / "config.toml").write_text(toml)
    model, cfg = vaelab.load_run(out)
    assert cfg.data.data_dir is None
    r = _cli("sample", out, "--out", tmp_path / "s.png")
    assert r.returncode == 2 and "--data-dir" in r.stderr and not (tmp_path / "s.png").exists()
    r = _cli("sample", out, "--out", tmp_path / "s.png", "--data-dir", victim)
    assert r.returncode == 0 and (tmp_path / "s.png").is_file(), r.stderr  # the user's choice


def test_weights_that_are_not_finite_are_refused_on_loading(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    d = _copy(run, tmp_path)
    path = str(d / "checkpoint.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for prefix in ("ema.", "model."):  # the average is what --which last loads, if kept
        key = next((k for k in tensors if k.startswith(prefix) and k.endswith("weight")), None)
        if key:
            tensors[key][0, 0] = float("nan")
    save_file(tensors, path, metadata=meta)
    r = _cli("sample", d, "--which", "last", "--out", tmp_path / "s.png")
    assert r.returncode == 2 and "not all finite" in r.stderr and "Traceback" not in r.stderr
    assert _cli("sample", d, "--out", tmp_path / "s.png").returncode == 0  # best is fine


def test_a_sparse_huge_weights_file_is_checked_in_little_memory(run, tmp_path):
    out = export_run(run, tmp_path / "m")
    with open(out / "model.safetensors", "r+b") as f:
        f.truncate(2 << 30)  # 2 GB, sparse: what a hostile folder can cost to download
    code = ("import resource, vaelab\ntry:\n    vaelab.load_run(%r)\n"
            "except vaelab.RunError as e:\n    print('RunError', e)\n"
            "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")

    def peak(path) -> tuple[str, int]:
        r = subprocess.run([sys.executable, "-c", code % str(path)], capture_output=True,
                           text=True, timeout=300)
        return r.stdout, int(r.stdout.split("maxrss")[1])

    out_text, huge = peak(out)
    assert "RunError" in out_text and "SHA-256" in out_text, out_text
    _, normal = peak(run)  # the same process loading the run itself
    assert huge - normal < 300_000  # KB: the 6 GB were streamed, not held


def test_written_files_keep_the_users_umask(tmp_path):
    d = tmp_path / "r"
    r = _cli("train", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--out", d,
             "--no-progress", preexec_fn=lambda: os.umask(0o027))
    assert r.returncode == 0, r.stderr
    for name in ("config.toml", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl"):
        assert (d / name).stat().st_mode & 0o777 == 0o640, name


def test_a_disk_that_fills_before_the_first_checkpoint_leaves_a_run_that_starts_again(
        tmp_path):
    d = tmp_path / "r"
    args = ("train", "--epochs", "1", "--hidden", "64", "--latent-dim", "2", "--ema", "0",
            "--out", d, "--no-progress")
    assert _cli(*args).returncode == 0  # sizes of the two files
    best, ckpt = ((d / n).stat().st_size for n in ("model.safetensors",
                                                     "checkpoint.safetensors"))
    assert ckpt > best
    shutil.rmtree(d)
    limit = (best + ckpt) // 2

    def full():  # the best weights fit, the checkpoint does not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = _cli(*args, preexec_fn=full)
    assert r.returncode != 0 and "no space left" in r.stderr
    assert (d / "model.safetensors").is_file() and not (d / "checkpoint.safetensors").exists()
    r = _cli(*args)
    assert r.returncode == 0, r.stderr  # the same command starts it again
    assert (d / "checkpoint.safetensors").is_file()
