"""No silent failure: divergence stops training with the last good checkpoint kept, a run
directory has one trainer at a time, a torn metrics log is survived, and every bad input
of the command line is a clear error (exit status 2, a message, no traceback)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import vaelab
from vaelab.config import Config
from vaelab.runs.records import read_metrics
from vaelab.training.loop import Diverged

pytestmark = pytest.mark.slow  # real processes, servers, browsers, trainings

QUICK = dict(epochs=2, hidden=(32,), latent_dim=3)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vaelab", "-q", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust") / "run"
    vaelab.train(Config().override(**QUICK), d, progress=False)
    return d


# ---- divergence -------------------------------------------------------------------------
def test_a_run_that_diverges_at_once_writes_no_weights_and_can_start_again(tmp_path):
    d = tmp_path / "r"
    r = _cli("train", "--lr", "1e3", "--epochs", "3", "--out", str(d), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "diverged at epoch 1" in r.stderr and "--lr" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (d / "model.safetensors").exists() and not (d / "checkpoint.safetensors").exists()
    r = _cli("train", "--epochs", "1", "--out", str(d), "--no-progress")
    assert r.returncode == 0, r.stderr


def test_a_divergence_mid_run_keeps_the_last_good_checkpoint_resumable(tmp_path):
    d = tmp_path / "r"
    cfg = Config().override(**QUICK)
    vaelab.train(cfg, d, progress=False)
    before = {f: (d / f).read_bytes() for f in ("checkpoint.safetensors", "model.safetensors")}
    with pytest.raises(Diverged, match="epoch 3.*checkpoint of epoch 2"):
        # a KL weight beyond float32 (the API lets a resumed run change it; the CLI does not)
        vaelab.train(cfg.override(beta=1e39, epochs=4), d, resume=True, progress=False)
    assert {f: (d / f).read_bytes() for f in before} == before  # nothing non-finite written
    result = vaelab.train(cfg.override(epochs=3), d, resume=True, progress=False)
    assert [m["epoch"] for m in result.history] == [1, 2, 3]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


# ---- one trainer per run directory ---------------------------------------------------------
def test_a_second_trainer_is_refused_while_the_first_holds_the_directory(run, tmp_path):
    d = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "vaelab", "-q", "train", "--epochs", "500",
                              "--out", str(d), "--no-progress"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (d / "checkpoint.safetensors").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (d / "checkpoint.safetensors").exists()
        for args in (["--resume", str(d)], ["--out", str(d)]):
            r = _cli("train", *args, "--epochs", "600", "--no-progress")
            assert r.returncode == 2
            assert f"process {first.pid}" in r.stderr or "in use" in r.stderr, r.stderr
        first.send_signal(signal.SIGKILL)
        first.wait()
        # the holder died: its lock died with it, and the run resumes
        r = _cli("train", "--resume", str(d), "--epochs",
                 str(read_metrics(d)[-1]["epoch"] + 1), "--no-progress")
        assert r.returncode == 0, r.stderr
    finally:
        if first.poll() is None:
            first.kill()


# ---- a torn metrics log ------------------------------------------------------------------
def test_a_torn_last_metrics_line_is_survived(tmp_path, caplog):
    d = tmp_path / "r"
    vaelab.train(Config().override(**QUICK), d, progress=False)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a crash during the append
    assert [m["epoch"] for m in read_metrics(d)] == [1, 2]
    assert "incomplete" in caplog.text
    r = _cli("train", "--resume", str(d), "--epochs", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in read_metrics(d)] == [1, 2, 3]
    assert all(json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines())


# ---- bad input: a clear error ------------------------------------------------------------
def _bad_inputs(run, tmp):
    """(argv, words of the message) for inputs that must be refused."""
    (tmp / "nan.toml").write_text("[train]\nlr = nan\n")
    (tmp / "bool.toml").write_text("[train]\nepochs = true\n")
    (tmp / "a-file").write_text("x")
    return [
        (["train", "--lr", "nan"], "finite"),
        (["train", "--config", str(tmp / "nan.toml")], "finite"),
        (["train", "--config", str(tmp / "bool.toml")], "epochs must be of type int"),
        (["train", "--config", str(tmp)], "is a directory"),
        (["train", "--image-size", "0"], "image_size must be >= 1"),
        (["train", "--image-size", "-5"], "image_size must be >= 1"),
        (["train", "--time-limit", "nan"], "--time-limit"),
        (["train", "--out", str(tmp / "a-file")], "is a file"),
        (["train", "--resume", str(tmp / "a-file")], "a-file"),
        (["train", "--resume", str(run), "--epochs", "1"], "trained 2 epochs already"),
        (["evaluate", str(run), "--batch-size", "0"], "--batch-size must be >= 1"),
        (["sample", str(run), "--temperature", "-1"], "--temperature"),
        (["sample", str(run), "--temperature", "nan"], "--temperature"),
    ]


def test_bad_inputs_are_clear_errors(run, tmp_path):
    for argv, words in _bad_inputs(run, tmp_path):
        r = _cli(*argv, "--no-progress" if argv[0] == "train" else "--seed", *(
            [] if argv[0] == "train" else ["0"]), cwd=tmp_path)
        assert r.returncode == 2, (argv, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "config.toml").write_text((d / "config.toml").read_text().replace(
        "latent_dim = 3", "latent_dim = 5")), "latent_dim 3 -> 5"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
])
def test_a_damaged_run_is_refused_before_training(run, tmp_path, damage, words):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(run, d)
    damage(d)
    r = _cli("train", "--resume", str(d), "--epochs", "3", "--no-progress")
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert [m["epoch"] for m in read_metrics(d)] == [1, 2]  # nothing trained, nothing lost


def test_damaged_checkpoint_metadata_is_a_clear_error(run, tmp_path):
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    d = tmp_path / "copy"
    shutil.copytree(run, d)
    path = d / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    meta["optimizer"] = "{not json"
    save_file(tensors, str(path), metadata=meta)
    r = _cli("train", "--resume", str(d), "--epochs", "3", "--no-progress")
    assert r.returncode == 2 and "damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_optimizer_state_grouped_otherwise_is_named_not_called_damaged(run, tmp_path):
    """A checkpoint whose optimizer groups the parameters otherwise (config.toml's weight
    decay edited after training, or a run from a vaelab that still decayed the prior's
    parameters) is refused with what differs and what to do; nothing is lost."""
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(run, d)
    conf = (d / "config.toml").read_text()
    assert "weight_decay = 0.0\n" in conf
    (d / "config.toml").write_text(conf.replace("weight_decay = 0.0\n", "weight_decay = 0.1\n"))
    before = (d / "checkpoint.safetensors").read_bytes()
    r = _cli("train", "--resume", str(d), "--epochs", "3", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "groups differently" in r.stderr and f"--init {d}" in r.stderr
    assert "damaged" not in r.stderr
    assert (d / "checkpoint.safetensors").read_bytes() == before
    assert [m["epoch"] for m in read_metrics(d)] == [1, 2]


def test_no_space_left_is_a_clear_error(tmp_path):
    """A file-size limit makes every large write fail as a full disk does."""
    import resource

    def limit():  # in the child: writes beyond 64 KB fail (EFBIG), no signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    d = tmp_path / "r"
    r = subprocess.run([sys.executable, "-m", "vaelab", "-q", "train", "--epochs", "2",
                        "--out", str(d), "--no-progress"], capture_output=True, text=True,
                       preexec_fn=limit, env={**os.environ})
    assert r.returncode != 0
    assert "no space left" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _cli("train", "--epochs", "1", "--out", str(d), "--no-progress")
    assert r.returncode == 0, r.stderr  # the directory can be started again


def test_a_model_file_claiming_a_huge_image_is_refused_before_building(run, tmp_path):
    """The metadata is checked against the weights before anything is allocated."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    d = tmp_path / "copy"
    shutil.copytree(run, d)
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        meta = dict(f.metadata())
    meta["image_shape"] = "[1, 100000, 100000]"
    save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"), metadata=meta)
    r = _cli("evaluate", str(d))
    assert r.returncode == 2 and "image shape" in r.stderr, r.stderr
    meta["image_shape"] = "[1, 64, 64]"
    save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"), metadata=meta)
    r = _cli("evaluate", str(d))
    assert r.returncode == 2 and "do not fit" in r.stderr, r.stderr


def test_an_edited_model_setting_of_the_same_shapes_is_refused(run, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(run, d)
    cfg = d / "config.toml"
    cfg.write_text(cfg.read_text().replace('activation = "gelu"', 'activation = "tanh"'))
    for argv in (["evaluate", str(d)], ["train", "--resume", str(d), "--epochs", "3",
                                         "--no-progress"]):
        r = _cli(*argv)
        assert r.returncode == 2 and "'gelu' -> 'tanh'" in r.stderr, r.stderr


def test_weights_saved_before_a_model_setting_existed_still_load(run, tmp_path):
    """A run written before `dropout` existed records settings without it (and its
    config.toml names none): it loads, as the setting's neutral value, and stays checked."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    d = tmp_path / "old"
    shutil.copytree(run, d)
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        meta, weights = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    saved = json.loads(json.loads(meta["model_settings"]))
    del saved["dropout"]
    meta["model_settings"] = json.dumps(json.dumps(saved, sort_keys=True))
    save_file(weights, str(d / "model.safetensors"), metadata=meta)
    cfg = d / "config.toml"
    cfg.write_text(cfg.read_text().replace("dropout = 0.0\n", ""))
    assert _cli("evaluate", str(d), "--k", "2").returncode == 0
    cfg.write_text(cfg.read_text().replace("[model]\n", "[model]\ndropout = 0.5\n"))
    r = _cli("evaluate", str(d), "--k", "2")
    assert r.returncode == 2 and "dropout 0.0 -> 0.5" in r.stderr, r.stderr


def test_a_relative_data_dir_is_stored_resolved(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    r = _cli("train", "--dataset", "folder", "--data-dir", "imgs", "--epochs", "1", "--out",
             "r", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    saved = Config.load(tmp_path / "r" / "config.toml").data.data_dir
    assert saved == str((tmp_path / "imgs").resolve())
    r = _cli("sample", str(tmp_path / "r"), cwd="/")  # from anywhere
    assert r.returncode == 0, r.stderr


def test_stale_partial_files_are_removed_when_a_run_resumes(run, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(run, d)
    (d / ".checkpoint.safetensors.abc123.part").write_bytes(b"half")
    r = _cli("train", "--resume", str(d), "--epochs", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert not list(d.glob(".*.part"))
