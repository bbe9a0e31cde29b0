"""The IWAE tail (``iwae_epochs``): the last epochs of an ELBO run train on the
importance-weighted bound, in the same run (the moving average, the optimizer and the
schedule go on); validated with that bound, kept on the log-likelihood, resumed exactly
across the switch, and a compiled step compiles again for it."""
import pytest
import torch
from safetensors.torch import load_file

from vaelab.app.plots import training_curves
from vaelab.config import Config
from vaelab.devices import SINGLE
from vaelab.errors import ConfigError
from vaelab.models.vae import VAE
from vaelab.noise import seeded
from vaelab.objectives import elbo
from vaelab.runs.records import read_metrics
from vaelab.training.loop import train
from vaelab.training.step import Stepper, make_optimizer


def small(**kw) -> Config:
    base = dict(dataset="digits", latent_dim=4, hidden="32", epochs=4, iwae_epochs=2,
                iwae_k=3, batch_size=64, device="cpu", select_every=10, select_k=20,
                select_images=60)
    return Config().override(**{**base, **kw})


def test_the_settings_of_each_epoch():
    tc = small().train
    assert [tc.at(e) is tc for e in (1, 2, 3, 4)] == [True, True, False, False]
    tail = tc.at(3)
    assert (tail.objective, tail.samples, tail.warmup, tail.iwae_epochs) == ("iwae", 3, 0, 0)
    assert (tail.lr, tail.ema, tail.batch_size, tail.epochs) == (tc.lr, tc.ema, 64, 4)
    plain = small(iwae_epochs=0).train
    assert all(plain.at(e) is plain for e in range(1, 5))


def test_the_default_tail_is_a_sixth_of_an_elbo_run_kept_on_the_nll():
    assert Config().train.tail == 60 // 6 == 10
    assert [Config().override(epochs=n).train.tail for n in (1, 5, 6, 13, 180)] == [0, 0, 1, 2, 30]
    for other in (dict(select="elbo"), dict(objective="iwae", samples=5), dict(beta=0.5),
                  dict(free_bits=0.5), dict(autoencoder=True)):
        assert Config().override(**other).train.tail == 0, other
    assert Config().override(iwae_epochs=0).train.tail == 0


@pytest.mark.slow
def test_the_last_epochs_train_the_iwae_bound_and_are_kept_on_the_nll(tmp_path):
    train(small(), tmp_path / "tail", progress=False)
    train(small(iwae_epochs=0), tmp_path / "plain", progress=False)
    tail, plain = read_metrics(tmp_path / "tail"), read_metrics(tmp_path / "plain")
    assert [("val_iwae3" in m) for m in tail] == [False, False, True, True]
    # estimated on the first epoch, the last of the ELBO and the run's last
    assert [m["epoch"] for m in tail if "val_log_px" in m] == [1, 2, 4]
    for a, b in zip(tail[:2], plain[:2]):  # the same run up to the switch
        assert a["val_elbo"] == b["val_elbo"] and a["train_loss"] == b["train_loss"]
    for m in tail[2:]:  # then the loss is -IWAE, a tighter bound than the ELBO (beta 1)
        assert -m["train_loss"] > m["train_elbo"] + 0.1
        assert m["val_iwae3"] > m["val_elbo"] + 0.1
    text = (tmp_path / "tail" / "config.toml").read_text()
    assert "iwae_epochs = 2" in text and "iwae_k = 3" in text
    assert training_curves(tail, tmp_path / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_run_stopped_inside_its_tail_resumes_exactly(tmp_path):
    train(small(), tmp_path / "full", progress=False)
    cfg, stops = small(), 0
    while train(cfg, tmp_path / "cut", resume=stops > 0, progress=False,
                time_limit=1e-3).stopped:  # one epoch per call: stopped at 1, 2 and 3
        stops += 1
        cfg = Config.load(tmp_path / "cut" / "config.toml")
    assert stops == 3
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [m["val_elbo"] for m in a] == [m["val_elbo"] for m in b]
    assert [m.get("val_iwae3") for m in a] == [m.get("val_iwae3") for m in b]
    for name in ("model.safetensors", "checkpoint.safetensors"):
        x, y = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_a_compiled_step_follows_the_switch():
    """torch.compile guards on the loss's settings: after ``use`` the compiled step gives
    the IWAE bound's loss, equal to the eager one's on the same noise."""
    cfg = small(compile="yes", likelihood="bernoulli")
    model = VAE.from_config(cfg.model, (1, 8, 8))
    stepper = Stepper(model, make_optimizer(model, 0.0), cfg.train, torch.device("cpu"),
                      SINGLE, backend="eager")
    x = torch.rand(16, 1, 8, 8).round()
    for epoch, iwae in ((1, False), (3, True), (1, False)):
        tc = cfg.train.at(epoch)
        stepper.use(tc)
        with seeded(0, model.device):
            got = stepper.net(x, None, torch.tensor(1.0))[0]
        with seeded(0, model.device):
            want = elbo(model, x, tc.samples, 1.0, iwae=iwae)[0]
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bad, words", [
    (dict(select="elbo"), "select = elbo .* select = nll keeps"),
    (dict(objective="iwae", samples=5), "does not go with objective = iwae"),
    (dict(iwae_epochs=4), "with epochs = 4 .the tail is part of the run"),
    (dict(beta=0.5), "with beta = 0.5: change those, or set iwae_epochs = 0"),
    (dict(free_bits=0.1), "free_bits = 0.1"),
    (dict(autoencoder=True), "autoencoder"),
    (dict(iwae_k=0), "iwae_k must be >= 1"),
    (dict(iwae_epochs=-1), "iwae_epochs must be >= 0"),
])
def test_bad_tail_settings_are_refused(bad, words):
    with pytest.raises(ConfigError, match=words):
        small(**bad)


@pytest.mark.slow
def test_the_default_tail_follows_a_resumed_runs_epochs(tmp_path):
    """Not written into config.toml: a sixth of the epochs the run has, also when a resume
    asks for fewer or more (here: started for 60, stopped after 1, resumed to 6)."""
    cfg = small(iwae_epochs=None, epochs=60)
    assert train(cfg, tmp_path / "r", progress=False, time_limit=1e-3).stopped
    text = (tmp_path / "r" / "config.toml").read_text()
    assert "iwae_epochs" not in text and "iwae_k = 3" in text
    cfg = Config.load(tmp_path / "r" / "config.toml").override(epochs=6)
    train(cfg, tmp_path / "r", resume=True, progress=False)
    assert [("val_iwae3" in m) for m in read_metrics(tmp_path / "r")] == [False] * 5 + [True]


@pytest.mark.slow
def test_a_run_from_before_the_tail_resumes_without_one(tmp_path):
    train(small(iwae_epochs=0, epochs=1), tmp_path / "old", progress=False)
    path = tmp_path / "old" / "config.toml"
    path.write_text("\n".join(line for line in path.read_text().splitlines()
                              if not line.startswith("iwae")) + "\n")
    cfg = Config.load(path).override(epochs=12)
    assert cfg.train.tail == 2  # what a reader of the file alone would think
    train(cfg, tmp_path / "old", resume=True, progress=False)
    assert not any("val_iwae3" in m or "val_iwae5" in m for m in read_metrics(tmp_path / "old"))
    assert Config.load(path).train.tail == 0  # said in the file from now on
