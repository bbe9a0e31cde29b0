"""The command line end to end, in subprocesses, as a user runs it."""
import json
import subprocess
import sys

import pytest
from PIL import Image


def vaelab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    p = vaelab("train", "--epochs", 3, "--latent-dim", 4, "--hidden", "64", "--out", out,
               "--no-progress")
    assert p.returncode == 0, p.stderr
    assert f"figure: {out}/figures/samples.png" in p.stdout
    return out


@pytest.mark.slow
def test_train_writes_the_run_and_the_figure(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl",
            "figures"} <= names
    with Image.open(run_dir / "figures" / "samples.png") as im:
        assert im.width > 2 * im.height  # three grids side by side
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_evaluate_json(run_dir):
    p = vaelab("evaluate", run_dir, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert {"elbo", "recon", "kl", "bits_per_dim", "split", "n"} <= set(r)
    assert r["split"] == "test" and r["n"] == 359
    assert r["elbo"] == pytest.approx(r["recon"] - r["kl"], abs=1e-3)


@pytest.mark.slow
def test_sample_with_options(run_dir, tmp_path):
    out = tmp_path / "fig.png"
    p = vaelab("sample", run_dir, "--out", out, "--temperature", 0.7, "--seed", 3, "--n", 36)
    assert p.returncode == 0, p.stderr
    assert out.is_file() and f"figure: {out}" in p.stdout


@pytest.mark.slow
def test_resume_extends_a_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    p = vaelab("train", "--resume", copy, "--epochs", 4, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 4
    p = vaelab("train", "--resume", copy, "--latent-dim", 3)
    assert p.returncode == 2 and "only --epochs and --device" in p.stderr
    p = vaelab("train", "--resume", copy, "--epochs", 0)  # a setting the run cannot take
    assert p.returncode == 2 and "epochs must be >= 1" in p.stderr
    assert f"its other settings from {copy / 'config.toml'}: change them there" in p.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--likelihood", "poisson"],
     "invalid choice: 'poisson' (choose from 'auto', 'bernoulli'"),
    (["train", "--latent-dim", "x"], "latent_dim must be of type int"),
    (["train", "--config", "missing.toml"], "config file missing.toml does not exist"),
    (["evaluate", "nowhere"], "nowhere is not a vaelab run directory"),
    (["train", "--dataset", "folder", "--data-dir", "nowhere"], "nowhere is not a directory"),
    (["train", "--time-limit", "0"], "--time-limit must be > 0 minutes"),
    (["train", "--compile", "always"], "invalid choice: 'always' (choose from 'auto', 'no'"),
])
@pytest.mark.slow
def test_errors_are_clear(args, message, tmp_path):
    p = vaelab(*args, cwd=tmp_path)
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_datasets_lists_everything():
    p = vaelab("datasets")
    assert p.returncode == 0
    for name in ("digits", "mnist", "fashion-mnist", "folder"):
        assert name in p.stdout


@pytest.mark.slow
def test_evaluate_importance_sampled(run_dir):
    p = vaelab("evaluate", run_dir, "--k", 50, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert {"nll", "nll_stderr", "k", "active_units", "kl_per_dim"} <= set(r)
    assert r["k"] == 50 and len(r["kl_per_dim"]) == 4 and 0 <= r["active_units"] <= 4
    assert sum(r["kl_per_dim"]) == pytest.approx(r["kl"], rel=1e-4)
    p = vaelab("evaluate", run_dir, "--k", 50, "--no-progress")
    assert "importance-sampled, k = 50" in p.stdout and "active units" in p.stdout


@pytest.mark.slow
def test_posterior_needs_a_2d_latent(run_dir):
    p = vaelab("posterior", run_dir)
    assert p.returncode == 2 and "--latent-dim 2" in p.stderr


@pytest.mark.slow
def test_baselines_json():
    p = vaelab("baselines", "--dataset", "digits", "--binarize", "static", "--models",
               "bernoulli,mixture", "--components", 5, "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["model"] for r in rows] == ["bernoulli", "mixture"]
    assert all(r["nll"] > 0 for r in rows)
    p = vaelab("baselines", "--models", "kmeans")
    assert p.returncode == 2 and "unknown baseline 'kmeans'; choose one of: bernoulli" in p.stderr


@pytest.mark.slow
def test_colour_folder_end_to_end(tmp_path):
    """Your own RGB images: a conv VAE with PixelCNN++'s coupled logistic mixture, trained,
    evaluated in bits/dim, sampled and reported."""
    import numpy as np

    rng = np.random.default_rng(0)
    for c, tint in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(20):
            img = np.clip(rng.normal(tint, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / c / f"{i}.png")
    out = tmp_path / "run"
    p = vaelab("train", "--dataset", "folder", "--data-dir", tmp_path / "imgs", "--channels", 3,
               "--net", "conv", "--conv-widths", "8,16", "--likelihood", "dlogistic",
               "--logistic-mixtures", 3, "--latent-dim", 4, "--epochs", 3, "--out", out,
               "--no-progress")
    assert p.returncode == 0, p.stderr
    p = vaelab("evaluate", out, "--k", 8, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["dims"] == 3 * 12 * 12 and r["discrete"] and r["bits_per_dim"] > 0
    # bounds ordered: -log p(x) <= -ELBO in expectation; both are Monte-Carlo estimates and
    # 3 epochs on 40 noise images leave q(z|x) ~ p(z), a gap of ~0.01 nats, so within 0.1
    # (log k forgotten would be 2.1 nats off; a sum in bfloat16, ~1)
    assert r["nll"] <= -r["elbo"] + 0.1
    for cmd in (["sample", out, "--n", 16], ["report", out]):
        p = vaelab(*cmd)
        assert p.returncode == 0, p.stderr
    with Image.open(out / "figures" / "samples.png") as im:  # drawn in colour
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert (abs(rgb[..., 0] - rgb[..., 2]) > 80).mean() > 0.05
