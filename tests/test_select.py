"""Choosing the best weights on an importance-sampled validation log-likelihood
(``select = "nll"``): estimated on the first, every ``select_every``-th and the last epoch,
the same images and seed each time, without touching training's random numbers; the kept
weights are the estimate's best; resumed exactly."""
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vaelab.config import Config
from vaelab.errors import ConfigError
from vaelab.objectives import bf16_estimates, log_likelihood
from vaelab.runs.records import best_epoch, read_metrics
from vaelab.runs.rundir import load_run
from vaelab.training.loop import select_every, train


def small(**kw) -> Config:
    base = dict(dataset="digits", latent_dim=4, hidden="32", epochs=5, batch_size=64,
                device="cpu", select="nll", select_every=2, select_k=20, select_images=60)
    return Config().override(**{**base, **kw})


@pytest.mark.slow
def test_the_best_weights_are_the_best_estimate_and_training_is_untouched(tmp_path):
    run = train(small(), tmp_path / "nll", progress=False)
    plain = train(small(select="elbo"), tmp_path / "elbo", progress=False)
    hist = read_metrics(tmp_path / "nll")
    assert [m["epoch"] for m in hist if "val_log_px" in m] == [1, 2, 4, 5]
    assert all(m["val_log_px"] >= m["val_elbo"] - 3 for m in hist if "val_log_px" in m)
    # the estimate leaves the training's random numbers alone: the same trajectory
    a = load_file(tmp_path / "nll" / "checkpoint.safetensors")
    b = load_file(tmp_path / "elbo" / "checkpoint.safetensors")
    for k in a:
        if k.startswith(("model.", "ema.")):
            assert torch.equal(a[k], b[k]), k
    assert [m["val_elbo"] for m in hist] == [m["val_elbo"] for m in plain.history]
    # the kept weights are those of the best estimate, and their estimate is reproducible
    best = best_epoch(hist, Config.load(tmp_path / "nll" / "config.toml").train)
    assert best["val_log_px"] == max(m["val_log_px"] for m in hist if "val_log_px" in m)
    with safe_open(str(tmp_path / "nll" / "model.safetensors"), "pt") as f:
        assert int(f.metadata()["epoch"]) == best["epoch"]
    model, cfg = load_run(tmp_path / "nll")
    first = run.data.val.subset(torch.arange(60))
    again = log_likelihood(model, first, 20, seed=cfg.train.seed,  # (bf16 where training's was)
                           bf16=bf16_estimates(model)).mean().item()
    assert again == pytest.approx(best["val_log_px"], abs=1e-4)


@pytest.mark.slow
def test_a_run_selecting_on_nll_resumes_exactly(tmp_path):
    train(small(), tmp_path / "full", progress=False)
    train(small(epochs=2), tmp_path / "part", progress=False)
    cfg = Config.load(tmp_path / "part" / "config.toml").override(epochs=5)
    train(cfg, tmp_path / "part", resume=True, progress=False)
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    # estimated at the same epochs (1, 2, 4, 5), with the same numbers
    assert [m.get("val_log_px") for m in ma] == [m.get("val_log_px") for m in mb]
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "part" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_by_its_time_limit_estimates_the_epoch_it_stops_at(tmp_path):
    """The epoch a time limit stops at is estimated like the run's last, so the kept
    weights are chosen among all it trained (here: epoch 2 of 6, estimates every 10)."""
    cfg = small(epochs=6, select_every=10)
    assert train(cfg, tmp_path / "cut", progress=False, time_limit=1e-3).stopped
    again = train(Config.load(tmp_path / "cut" / "config.toml"), tmp_path / "cut",
                  resume=True, progress=False, time_limit=1e-3)
    assert again.stopped
    assert [m["epoch"] for m in read_metrics(tmp_path / "cut") if "val_log_px" in m] == [1, 2]


def test_the_automatic_interval_costs_about_a_tenth_of_training():
    tc = small(select_every=0, select_k=100, select_images=1000).train
    assert select_every(tc, 50_000, 10_000) == math.ceil(100 * 1000 / (0.1 * 3 * 50_000))
    assert select_every(tc, 1295, 143) == math.ceil(100 * 143 / (0.1 * 3 * 1295))
    assert select_every(small(select_every=7).train, 10, 10) == 7


@pytest.mark.parametrize("bad, words", [
    (dict(select="ll"), "invalid select 'll'"),
    (dict(select_k=0), "select_k must be >= 1"),
    (dict(select_images=0), "select_images must be >= 1"),
    (dict(select_every=-1), "select_every must be >= 0"),
])
def test_bad_selection_settings_are_refused(bad, words):
    with pytest.raises(ConfigError, match=words):
        Config().override(**bad)
