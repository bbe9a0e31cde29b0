"""Learning-rate schedules, the weights' moving average, AdamW and gradient clipping:
each checked against its formula, and a run using all of them resumed exactly."""
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vaelab.config import Config, TrainConfig
from vaelab.devices import World
from vaelab.errors import ConfigError
from vaelab.models.vae import VAE
from vaelab.runs.records import read_metrics
from vaelab.runs.rundir import load_run
from vaelab.training.loop import train
from vaelab.training.schedule import PlateauState, Schedule, WeightAverage, iwae_stage
from vaelab.training.step import NORM_DECAY, SPIKE_WARMUP, Stepper, make_optimizer


def small(**kw) -> Config:
    base = dict(dataset="digits", latent_dim=8, hidden="64", epochs=3, batch_size=64,
                device="cpu", binarize="dynamic", select="elbo")
    return Config().override(**{**base, **kw})


def test_cosine_with_warmup_follows_its_formula():
    tc = TrainConfig(lr=1e-3, min_lr=1e-5, lr_schedule="cosine", lr_warmup=2, epochs=10)
    s = Schedule(tc, n_batches=5, horizon=10)
    assert s.lr(1, 0) == pytest.approx(1e-3 / 10)  # step 1 of 10 warm-up steps
    assert s.lr(2, 4) == pytest.approx(1e-3)  # the warm-up's last step: the peak
    steps = [(e, b) for e in range(1, 11) for b in range(5)]
    for t, (e, b) in enumerate(steps):
        if t >= 10:
            want = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (t - 10) / 40))
            assert s.lr(e, b) == pytest.approx(want), (e, b)
    assert s.lr(10, 4) > 1e-5 and s.lr(11, 0) == pytest.approx(1e-5)  # past the horizon
    lrs = [s.lr(e, b) for e, b in steps[10:]]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # annealed monotonically


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_cooldown_anneals_the_last_epochs_to_the_floor(schedule):
    """lr_cooldown: the schedule's rate until the last epochs, then a half cosine from it
    down to min_lr, reached at the run's last step (warm-up, stable, decay)."""
    tc = TrainConfig(lr=2e-3, min_lr=1e-5, lr_schedule=schedule, epochs=10, lr_cooldown=4)
    plain = Schedule(TrainConfig(lr=2e-3, min_lr=1e-5, lr_schedule=schedule, epochs=10),
                     n_batches=5, horizon=10)
    s = Schedule(tc, n_batches=5, horizon=10)
    steps = [(e, b) for e in range(1, 11) for b in range(5)]
    for t, (e, b) in enumerate(steps):
        done = max(0, t - 30 + 1) / 20  # 20 steps of cooling, from step 30 (epoch 7) on
        want = 1e-5 + (plain.lr(e, b) - 1e-5) * 0.5 * (1 + math.cos(math.pi * done))
        assert s.lr(e, b) == pytest.approx(want), (e, b)
    assert s.lr(6, 4) == plain.lr(6, 4) and s.lr(7, 0) < plain.lr(7, 0)
    assert s.lr(10, 4) == pytest.approx(1e-5)
    lrs = [s.lr(e, b) for e, b in steps[30:]]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_a_run_cooled_down_resumes_exactly(tmp_path):
    """Stopped inside the cooldown (each invocation stopped by the time limit after one
    epoch) and resumed: the learning rates and weights of the run in one go (the rate is a
    function of the step, not of what the process remembers)."""
    kw = dict(epochs=4, lr_cooldown=2, ema=0.9)
    train(small(**kw), tmp_path / "full", progress=False)
    for resume in (False, True, True):
        cut = train(small(**kw), tmp_path / "part", resume=resume, progress=False,
                    time_limit=1e-3)
        assert cut.stopped
    assert Config.load(tmp_path / "part" / "config.toml").train.lr_cooldown == 2  # recorded
    assert len(read_metrics(tmp_path / "part")) == 3  # epoch 3: inside the cooldown
    train(small(**kw), tmp_path / "part", resume=True, progress=False)
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["lr"] for m in ma] == [m["lr"] for m in mb]
    assert [m["val_elbo"] for m in ma] == [m["val_elbo"] for m in mb]
    assert ma[0]["lr"] == ma[1]["lr"] > ma[2]["lr"] > ma[3]["lr"]
    a = load_file(tmp_path / "full" / "checkpoint.safetensors")
    b = load_file(tmp_path / "part" / "checkpoint.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_iwae_schedule_is_burda_et_al():
    """lr * 10^(-i/7) for 3^i epochs, i = 0..7: epoch 1, then 3, 9, 27 ... epochs."""
    stages = [iwae_stage(e) for e in range(1, 3281)]
    assert [stages.count(i) for i in range(8)] == [3 ** i for i in range(8)]
    assert stages == sorted(stages) and iwae_stage(5000) == 7
    s = Schedule(TrainConfig(lr=1e-3, lr_schedule="iwae"), n_batches=3, horizon=3280)
    assert s.lr(1, 2) == pytest.approx(1e-3)
    assert s.lr(4, 0) == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert s.lr(5, 0) == pytest.approx(1e-3 * 10 ** (-2 / 7))
    assert s.lr(3280, 0) == pytest.approx(1e-3 * 10 ** (-1))


def test_plateau_cuts_after_patience_and_stops_at_the_floor():
    tc = TrainConfig(lr=1e-3, lr_schedule="plateau", plateau_patience=2, plateau_factor=0.5,
                     min_lr=2e-4)
    s = Schedule(tc, n_batches=1, horizon=100)
    lrs = []
    for epoch, score in enumerate([-10, -9, -9.5, -9.2, -9.1, -9.3, -9.4, -9.5, -9.6,
                                   -9.7, -9.8, -9.9, -9.9, -9.9], 1):
        lrs.append(s.lr(epoch, 0))
        s.end_epoch(score)
    # better at 2; 3 bad epochs (3, 4, 5) -> cut after epoch 5; 3 more -> after epoch 8
    assert lrs[:6] == [1e-3] * 5 + [5e-4]
    assert lrs[8] == 2.5e-4 and lrs[-1] == 2e-4  # 1.25e-4 is below the floor: held there
    assert s.plateau == PlateauState(factor=0.125, best=-9, bad_epochs=s.plateau.bad_epochs)
    saved = s.state()
    again = Schedule.restore(tc, 1, saved, 100)
    assert again.plateau == s.plateau and again.lr(20, 0) == s.lr(20, 0)
    assert saved == s.state()  # restoring reads the checkpoint's state, does not consume it


def test_weight_average_is_the_exponential_moving_average():
    net = nn.Linear(3, 2)
    avg = WeightAverage(net, decay=0.9)
    want = [p.detach().clone() for p in net.parameters()]
    for n in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update(n)
        d = min(0.9, (1 + n) / (10 + n))
        want = [d * w + (1 - d) * p.detach() for w, p in zip(want, net.parameters())]
    for w, a in zip(want, avg.model.parameters()):
        torch.testing.assert_close(a, w)
        assert not a.requires_grad


@pytest.mark.parametrize("prior, layers", [("normal", 1), ("vamp", 1), ("mog", 1), ("vamp", 2)])
def test_adamw_decays_the_nets_matrices_only(prior, layers):
    cfg = small(likelihood="bernoulli", prior=prior, layers=layers)
    model = VAE.from_config(cfg.model, (1, 8, 8))
    opt = make_optimizer(model, 0.1, weight_decay=0.5)
    assert isinstance(opt, torch.optim.AdamW)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: Adam moves nothing, the decay shrinks by lr * wd
    for n, p in model.named_parameters():
        net_matrix = p.ndim >= 2 and not n.startswith("prior.")  # not pseudo-inputs, means
        factor = 1 - 0.1 * 0.5 if net_matrix else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)
    assert type(make_optimizer(model, 0.1)) is torch.optim.Adam


def test_gradients_are_clipped_to_the_norm():
    cfg = small(grad_clip=0.5, likelihood="bernoulli")
    model = VAE.from_config(cfg.model, (1, 8, 8))
    opt = make_optimizer(model, 1e-3)
    step = Stepper(model, opt, cfg.train, torch.device("cpu"), World())
    x = (torch.rand(16, 1, 8, 8) > 0.5).float()
    step(x, None, 1.0, 16)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm.item() == pytest.approx(0.5, rel=1e-4)  # an untrained VAE's is far larger
    norms = step.take_norms(1)
    assert norms["grad_norm"] > 0.5 and norms["clipped"] == 1 and "skipped" not in norms
    assert step.take_norms(1) == {"grad_norm": 0.0, "clipped": 0.0}


def _spike_stepper(optimizer=make_optimizer):
    cfg = small(skip_spikes=10.0, likelihood="bernoulli")
    torch.manual_seed(0)
    model = VAE.from_config(cfg.model, (1, 8, 8))
    opt = optimizer(model, 1e-3)
    x = (torch.rand(16, 1, 8, 8) > 0.5).float()
    return model, opt, Stepper(model, opt, cfg.train, torch.device("cpu"), World()), x


@pytest.mark.parametrize("optimizer", [make_optimizer, lambda m, lr: torch.optim.Adam(
    m.parameters(), lr, foreach=False)], ids=["fused", "plain Adam"])
def test_the_update_of_a_gradient_spike_is_skipped(optimizer):
    """A step whose gradient norm is over skip_spikes times the running mean changes
    neither the weights nor Adam's state (its step count included); the next step does."""
    model, opt, step, x = _spike_stepper(optimizer)
    for _ in range(SPIKE_WARMUP):
        step(x, None, 1.0, 16)
    mean = step.mean_norm.item()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {n: {k: v.clone() for k, v in opt.state[p].items()}
             for n, p in model.named_parameters()}
    step(x, None, 1e5, 16)  # a KL term 10^5 times too heavy: a spike
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[n][k]), (n, k)
    # the running mean takes the spike in at no more than 10x itself (weighted 1 / (steps + 1)
    # while that is over NORM_DECAY)
    w = max(NORM_DECAY, 1 / (SPIKE_WARMUP + 1))
    assert step.mean_norm.item() == pytest.approx(mean + w * (10 * mean - mean), rel=1e-5)
    norms = step.take_norms(6)
    assert norms["skipped"] == pytest.approx(1 / 6) and "clipped" not in norms
    step(x, None, 1.0, 16)
    assert not all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert step.take_norms(1)["skipped"] == 0


def test_gradients_that_stay_large_are_followed_not_skipped_for_ever():
    model, opt, step, x = _spike_stepper()
    for _ in range(SPIKE_WARMUP):
        step(x, None, 1.0, 16)
    skipped = []
    for _ in range(80):  # from here on every gradient is ~600x the old running mean
        step(x, None, 1e3, 16)
        skipped.append(step.take_norms(1)["skipped"])
    assert skipped[:10] == [1.0] * 10 and skipped[-10:] == [0.0] * 10


def test_no_finite_step_is_skipped_in_the_warm_up():
    """The first steps' norms move fast (a fresh net's fall, a KL weight's rise): before
    SPIKE_WARMUP updates nothing finite is skipped, and the running mean is the plain mean
    of the norms so far; a non-finite norm is skipped always. A run resumed with
    skip_spikes from a checkpoint without a mean starts one (nothing skipped at once)."""
    model, opt, step, x = _spike_stepper()
    norms = []
    for i in range(SPIKE_WARMUP):
        step(x, None, 1.0 if i % 2 else 1e4, 16)  # every other norm far over the mean
        norms.append(step.take_norms(1))
    assert all(n["skipped"] == 0 for n in norms)
    assert step.mean_norm.item() == pytest.approx(
        sum(n["grad_norm"] for n in norms) / len(norms), rel=1e-4)
    step(x, None, math.inf, 16)
    assert step.take_norms(1)["skipped"] == 1
    step(x, None, 1e7, 16)  # warm now: a spike is skipped
    assert step.take_norms(1)["skipped"] == 1
    later = Stepper(model, opt, small(skip_spikes=10.0, likelihood="bernoulli").train,
                    torch.device("cpu"), World())  # (norm_mean 0: none was kept)
    later(x, None, 1e4, 16)
    assert later.take_norms(1)["skipped"] == 0 and later.mean_norm.item() > 0


@pytest.mark.parametrize("factor", [1.0, 0.5, -1.0, math.nan])
def test_skip_spikes_is_a_factor_over_one(factor):
    with pytest.raises(ConfigError, match="skip_spikes (is a factor > 1|must be a finite)"):
        small(skip_spikes=factor)


def test_a_run_with_schedule_average_decay_and_clipping_resumes_exactly(tmp_path):
    """3 epochs in one go == 1 epoch, stopped by the time limit, resumed: the same weights, moving
    average, optimizer state and metrics (learning rates included)."""
    kw = dict(lr_schedule="cosine", lr_warmup=0.5, min_lr=1e-5, ema=0.9,
              weight_decay=1e-3, grad_clip=20.0, skip_spikes=1.2,  # (skips many steps)
              batch_size=32)  # 41 steps an epoch: the warm-up of skip_spikes ends in epoch 2
    full = train(small(**kw), tmp_path / "full", progress=False)
    cut = train(small(**kw), tmp_path / "part", progress=False, time_limit=1e-3)
    assert cut.stopped and len(cut.history) == 1
    cfg = Config.load(tmp_path / "part" / "config.toml")
    assert cfg.train.lr_schedule == "cosine" and cfg.train.ema == 0.9  # recorded
    train(cfg, tmp_path / "part", resume=True, progress=False)
    a = load_file(tmp_path / "full" / "checkpoint.safetensors")
    b = load_file(tmp_path / "part" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    for k in ("lr", "train_elbo", "val_elbo", "val_elbo_online", "grad_norm", "clipped",
              "skipped"):
        assert [m.get(k) for m in ma] == [m.get(k) for m in mb], k
    # (skipping follows the restored mean and Adam's step count: from step 50 on, in the
    # resumed process; 41 % of epoch 2's steps at factor 1.2 as measured)
    assert ma[0]["skipped"] == 0 < ma[1]["skipped"] < 1, [m["skipped"] for m in ma]
    # the learning rate is cosine-annealed over the whole run, not restarted on resume
    assert ma[0]["lr"] > ma[1]["lr"] > ma[2]["lr"] > 1e-5 > ma[2]["lr"] - 1e-6  # last step
    # the average is what is validated and kept; the trained weights are validated beside it
    # on the first and the last epoch (those a log-likelihood estimate takes, or would
    # take: this run keeps the best validation ELBO)
    assert [m["epoch"] for m in ma if "val_elbo_online" in m] == [1, 3]
    assert all(m["val_elbo"] != m["val_elbo_online"] for m in ma if "val_elbo_online" in m)
    best = max(ma, key=lambda m: m["val_elbo"])
    model, _ = load_run(tmp_path / "full")
    ema = {k[4:]: v for k, v in a.items() if k.startswith("ema.")}
    if best["epoch"] == 3:
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema[k]), k
    last, _ = load_run(tmp_path / "full", "last")
    for k, v in last.state_dict().items():
        assert torch.equal(v, ema[k]), k
    x = full.data.val.batch(slice(0, 8))
    assert torch.equal(full.model.encode(x).mean, model.encode(x).mean)


def test_plateau_run_resumes_exactly(tmp_path):
    kw = dict(lr_schedule="plateau", plateau_patience=0, plateau_factor=0.5, lr=3e-3,
              epochs=4)
    train(small(**kw), tmp_path / "full", progress=False)
    train(small(**{**kw, "epochs": 2}), tmp_path / "part", progress=False)
    cfg = Config.load(tmp_path / "part" / "config.toml").override(epochs=4)
    train(cfg, tmp_path / "part", resume=True, progress=False)
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["lr"] for m in ma] == [m["lr"] for m in mb]
    assert [m["val_elbo"] for m in ma] == [m["val_elbo"] for m in mb]


@pytest.mark.parametrize("bad, words", [
    (dict(lr_schedule="linear"), "invalid lr_schedule 'linear'"),
    (dict(ema=1.0), "ema is a decay in [0, 1)"),
    (dict(plateau_factor=1.5), "plateau_factor must be between 0 and 1"),
    (dict(min_lr=0.01), "min_lr must be >= 0 and below lr"),
    (dict(grad_clip=-1), "grad_clip must be >= 0"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    (dict(lr_warmup=-2), "lr_warmup must be >= 0"),
    (dict(lr_cooldown=-1), "lr_cooldown must be >= 0"),
    (dict(lr_cooldown=60), "lr_cooldown = 60 must be fewer than the run's epochs (60)"),
])
def test_bad_settings_are_refused(bad, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        Config().override(**bad)


def test_a_run_from_before_the_moving_average_resumes_without_one(tmp_path):
    """Its config.toml has no `ema` (the setting did not exist): it resumes as it ran,
    though the default now keeps an average."""
    assert Config().train.ema > 0
    train(small(epochs=1, ema=0.0), tmp_path / "old", progress=False)
    path = tmp_path / "old" / "config.toml"
    path.write_text("\n".join(line for line in path.read_text().splitlines()
                              if not line.startswith("ema")) + "\n")
    cfg = Config.load(path).override(epochs=2)
    assert cfg.train.ema > 0  # what a reader of the file alone would think
    assert load_run(tmp_path / "old")[1].train.ema == 0.0  # what the run did (export, pages)
    r = train(cfg, tmp_path / "old", resume=True, progress=False)
    assert [m["epoch"] for m in r.history] == [1, 2]
    assert "val_elbo_online" not in r.history[-1]
    assert Config.load(path).train.ema == 0.0  # said in the file from now on


@pytest.mark.parametrize("layers", [1, 2])
def test_the_average_of_a_vampprior_model_encodes_with_its_own_weights(layers):
    """The VampPrior holds its model's encoder by reference, not as a submodule: the
    averaged copy's prior must use the averaged encoder, not the trained one."""
    cfg = small(likelihood="bernoulli", prior="vamp", prior_components=5, layers=layers)
    model = VAE.from_config(cfg.model, (1, 8, 8))
    avg = WeightAverage(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the trained weights move; the average has not been updated
    z = torch.zeros(3, 8)
    fresh = VAE.from_config(cfg.model, (1, 8, 8))
    fresh.load_state_dict(avg.model.state_dict())
    def vamp(m):  # the VampPrior: the prior, or a hierarchy's top prior
        return m.prior.top if layers > 1 else m.prior

    torch.testing.assert_close(vamp(avg.model)().log_prob(z), vamp(fresh)().log_prob(z))
