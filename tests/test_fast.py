"""The fast paths of the training step give the numbers of the plain path."""
import logging
import math

import pytest
import torch

import vaelab
from helpers import DEVICES
from vaelab.data.splits import load_data, resolve
from vaelab.devices import SINGLE
from vaelab.models.vae import VAE
from vaelab.training.step import Loss, Stepper, fast_paths, make_optimizer

SETTINGS = {"mlp": dict(hidden="64", latent_dim=8),
            "conv": dict(net="conv", conv_widths="8,16", latent_dim=8),
            "hvae": dict(layers=2, hidden="64", latent_dim=4)}




def _setup(net: str, device: str = "cpu", **train):
    cfg = vaelab.Config().override(dataset="digits", binarize="static", device=device,
                                   **SETTINGS[net], **train)
    data = load_data(cfg.data, device)
    cfg = resolve(cfg, data)
    torch.manual_seed(0)
    model = VAE.from_config(cfg.model, data.image_shape).to(device)
    return cfg, model, data.train.batch(slice(0, 64))


def _loss_and_grads(loss_module, model, x, seed=1):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, sums = loss_module(x, None, torch.tensor(1.0, device=x.device))
    loss.backward()
    return loss.detach().clone(), sums.clone(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [{}, dict(objective="iwae", samples=5, iwae_gradient="dreg",
                                            prior="vamp", prior_components=5)],
                         ids=["elbo", "iwae-dreg-vamp"])
def test_compiled_step_matches_eager(monkeypatch, device, train):
    """(The doubly reparameterized gradient reweighs the codes' gradient by a hook that
    the compiled step must keep.)"""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "fallback_random", True)  # eager's random numbers
    cfg, model, x = _setup("mlp", device, **train)
    loss = Loss(model, cfg.train, torch.device(device))
    eager = _loss_and_grads(loss, model, x)
    mode = "reduce-overhead" if device == "cuda" else None  # as the Stepper compiles it
    compiled = _loss_and_grads(torch.compile(loss, dynamic=False, mode=mode), model, x)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-3)
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("net", ["mlp", "conv", "hvae"])
def test_bf16_autocast_keeps_the_elbo(net, device):
    cfg, model, x = _setup(net, device)
    dev = torch.device(device)
    fp32 = _loss_and_grads(Loss(model, cfg.train, dev), model, x)
    bf16 = _loss_and_grads(Loss(model, cfg.override(precision="bf16").train, dev), model, x)
    assert bf16[0].dtype == torch.float32  # the loss itself stays fp32
    assert abs(bf16[0] - fp32[0]) < 0.01 * abs(fp32[0])  # within 1% (the same noise)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in bf16[2]]),
                                                torch.cat([g.flatten() for g in fp32[2]]), 0)
    assert cos > 0.99


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("net", ["mlp", "conv", "hvae"])
def test_bf16_autocast_draws_the_latents_in_float32(net, device):
    """Under autocast only the products are bfloat16: q's parameters, its draws and the
    log-densities at them stay float32. A bfloat16 draw snaps to a grid of 2^-8 |z|, and
    log q(z|x), log p(z) are then densities at points q never draws; the importance-
    weighted bound (the training loss of an IWAE tail) moved by 0.02 nats on a trained
    VampPrior model, and a run trained on it broke (docs/quality.md, round 10)."""
    cfg, model, x = _setup(net, device, prior="vamp", prior_components=5)
    x = x.float()
    with torch.autocast(device, torch.bfloat16), torch.no_grad():
        q = model.encode(x)
        top = model.top_posterior(x)
        z = q.rsample((3,))
        assert top.mean.dtype == top.stddev.dtype == z.dtype == torch.float32
        assert model.prior().log_prob(z).dtype == q.log_prob(z).dtype == torch.float32
        torch.manual_seed(0)
        bf16 = vaelab.iwae_bound(model, x, 5)
    torch.manual_seed(0)
    with torch.no_grad():
        fp32 = vaelab.iwae_bound(model, x, 5)
    assert (bf16 - fp32).abs().mean() < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_the_mixture_prior_is_exact_under_bf16_autocast(device):
    """The VampPrior's log-density expands (z - m)^2 / s^2 into one matrix product whose
    terms (m^2 / s^2, hundreds per dimension at |m| = 8, s = 0.3) cancel down to a code's
    distance from a component: under autocast that product ran in bfloat16 and log p(z)
    came out tens of nats off, a hole the IWAE bound trained into (docs/quality.md)."""
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    from vaelab.models.distributions import GaussianMixture
    g = torch.Generator().manual_seed(0)
    loc = 8 * torch.randn(100, 50, generator=g, dtype=torch.float64)
    scale = 0.3 + 0.2 * torch.rand(100, 50, generator=g, dtype=torch.float64)
    z = loc[torch.randint(0, 100, (256,), generator=g)] + scale[0] * torch.randn(
        256, 50, generator=g, dtype=torch.float64)  # codes near the components
    exact = MixtureSameFamily(Categorical(logits=torch.zeros(100, dtype=torch.float64)),
                              Independent(Normal(loc, scale), 1)).log_prob(z)
    mix = GaussianMixture(torch.zeros(100, device=device), loc.float().to(device),
                          scale.float().to(device))
    with torch.autocast(device, torch.bfloat16):
        fast = mix.log_prob(z.float().to(device))
    assert fast.dtype == torch.float32
    assert (fast.double().cpu() - exact).abs().max() < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_the_same_elbo(device):
    cfg, model, x = _setup("conv", device, channels_last="yes")
    dev = torch.device(device)
    plain = _loss_and_grads(Loss(model, cfg.train, dev), model, x)
    opt = make_optimizer(model, 1e-3)
    step = Stepper(model, opt, cfg.train, dev, SINGLE)
    assert step.channels_last
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    fast = _loss_and_grads(Loss(model, cfg.train, dev), model,
                           x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-5, atol=1e-4)
    for a, b in zip(fast[2], plain[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_compiled_conv_step_keeps_the_decoders_gradients(device):
    """torch.compile under bf16 autocast on a CPU zeroes the gradients of a two-stage conv
    decoder (PyTorch 2.13); vaelab then trains eagerly. Either way the step must move the
    decoder like the eager step does."""
    cfg, model, x = _setup("conv", device, precision="bf16", compile="yes")
    dev = torch.device(device)
    eager = _loss_and_grads(Loss(model, cfg.train, dev), model, x)
    step = Stepper(model, make_optimizer(model, 1e-3), cfg.train, dev,
                   SINGLE)
    fast = _loss_and_grads(step.net, model, x)
    for name, a, b in zip([n for n, _ in model.named_parameters()], fast[2], eager[2]):
        if name.startswith("decoder"):
            assert a.norm() > 0.5 * b.norm(), name


def test_a_compiler_that_fails_falls_back_to_the_eager_step(caplog):
    """A backend that cannot compile (as on a machine without a C++ compiler or with an
    unsupported GPU): the step warns once and trains eagerly, with the eager result."""
    def broken(graph, example_inputs):
        raise RuntimeError("no compiler here")

    cfg, model, x = _setup("mlp", compile="yes")
    step = Stepper(model, make_optimizer(model, 1e-3), cfg.train, torch.device("cpu"),
                   SINGLE, backend=broken)
    eager = _loss_and_grads(step.eager, model, x)
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING, logger="vaelab.training.loop"):
        sums = step(x, None, 1.0, len(x))
    assert "no compiler here" in caplog.text and "training eagerly" in caplog.text
    assert step.net is step.eager
    torch.testing.assert_close(sums[0] / len(x), eager[0])
    step(x, None, 1.0, len(x))  # and on


def test_auto_switches_pick_the_fast_paths_per_device():
    cfg, conv, _ = _setup("conv")
    _, hvae, _ = _setup("hvae")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fast_paths(cfg.train, conv, cpu) == {"compile": False, "channels_last": True}
    assert fast_paths(cfg.train, conv, cuda) == {"compile": True, "channels_last": True}
    assert fast_paths(cfg.train, hvae, cuda) == {"compile": False, "channels_last": False}
    forced = cfg.override(compile="yes", channels_last="no").train
    assert fast_paths(forced, conv, cpu) == {"compile": True, "channels_last": False}
    assert fast_paths(cfg.train, conv, torch.device("mps"))["channels_last"] is False
    _, mlp, _ = _setup("mlp")
    assert fast_paths(cfg.train, mlp, cpu) == {"compile": False, "channels_last": False}
    # on a CPU, auto compiles a run long enough to repay it (in FLOPs: 6 x batch x weights
    # x steps), of a single-layer MLP (conv nets were not measured compiled on CPUs)
    from vaelab.training.step import AUTO_COMPILE_FLOPS, dense_step_flops

    def steps(model, over=1.0):
        return math.ceil(over * AUTO_COMPILE_FLOPS / dense_step_flops(model, cfg.train.batch_size))

    assert fast_paths(cfg.train, mlp, cpu, steps(mlp))["compile"] is True
    assert fast_paths(cfg.train, mlp, cpu, steps(mlp), distributed=True)["compile"] is False
    assert fast_paths(cfg.train, mlp, cpu, steps(mlp, 0.99))["compile"] is False
    assert fast_paths(cfg.train, conv, cpu, steps(conv))["compile"] is False
    assert fast_paths(cfg.train, hvae, cpu, steps(hvae))["compile"] is False
    assert fast_paths(cfg.override(compile="no").train, mlp, cpu, steps(mlp))["compile"] is False
    with pytest.raises(vaelab.ConfigError, match="choose one of: auto, no, yes"):
        cfg.override(compile="always")


def test_one_batch_shape_is_compiled_per_objective_and_timed():
    """The compiled step compiles for its first (global) batch's size only; the epoch's
    last, smaller batch steps eagerly (with the eager step's result) instead of compiling a
    second time. Switching the objective (the IWAE tail) compiles once more. Compiling's
    seconds are counted in all and per epoch (take_compiling)."""
    graphs, calls = [], [0]

    def counting(gm, example_inputs):  # dynamo's tracing without inductor: quick
        graphs.append(gm)

        def run(*args):
            calls[0] += 1
            return gm.forward(*args)
        return run

    cfg, model, x = _setup("mlp", compile="yes")
    step = Stepper(model, make_optimizer(model, 1e-3), cfg.train, torch.device("cpu"),
                   SINGLE, backend=counting)
    assert step.net is not step.eager and step.compile_seconds == 0
    step(x, None, 1.0, len(x))
    first, compiled = step.compile_seconds, len(graphs)
    assert compiled > 0 and first > 0
    assert step.take_compiling() == first and step.take_compiling() == 0
    step(x, None, 1.0, len(x))  # the same shape: nothing compiled
    assert step.compile_seconds == first and step.take_compiling() == 0
    eager = _loss_and_grads(step.eager, model, x[:10])
    torch.manual_seed(1)
    sums = step(x[:10], None, 1.0, 10)  # a last, smaller batch: eagerly
    assert len(graphs) == compiled and step.compile_seconds == first
    torch.testing.assert_close(sums[0] / 10, eager[0])
    step(x, None, 1.0, len(x))
    assert len(graphs) == compiled and step.net is not step.eager
    # keyed by the global batch: a rank's share of a job's last batch steps eagerly even
    # where it has the usual local size (so that all ranks step alike)
    before = calls[0]
    step(x, None, 1.0, len(x) + 3)
    assert calls[0] == before and len(graphs) == compiled
    step(x, None, 1.0, len(x))
    assert calls[0] > before
    step.use(cfg.override(objective="iwae", iwae_k=3, kl_warmup=0).train)  # compiled anew
    step(x, None, 1.0, len(x))
    assert len(graphs) > compiled and step.compile_seconds > first
    step(x[:10], None, 1.0, 10)
    assert step.net is not step.eager
    plain = Stepper(model, make_optimizer(model, 1e-3), cfg.override(compile="no").train,
                    torch.device("cpu"), SINGLE)
    plain(x, None, 1.0, len(x))
    assert plain.compile_seconds == 0 and plain.take_compiling() == 0


def test_fast_bf16_is_measured_not_read_off_the_cpu_flags(monkeypatch):
    from vaelab import devices

    def flags(value):
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            monkeypatch.setattr(torch.cpu, name, lambda: value, raising=False)

    def speedup(value):
        monkeypatch.setattr(devices, "_cpu_bf16_speedup", lambda: value)

    flags(False)
    speedup(9.0)
    assert devices.fast_bf16("cpu") is False  # no bf16 instructions: not timed at all
    flags(True)
    assert devices.fast_bf16("cpu") is True
    speedup(1.1)  # the instructions, but slower than float32 or barely faster
    assert devices.fast_bf16("cpu") is False
    assert devices.fast_bf16("meta") is False
    monkeypatch.undo()
    state = torch.random.get_rng_state()
    ratio = devices._cpu_bf16_speedup.__wrapped__()  # the real timing, on this CPU
    assert 0.05 < ratio < 20
    # timed on its own numbers: a run that first asks mid-training draws what it would have
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("fast, gain, chosen", [(True, 1.3, "bf16"), (True, 1.05, "fp32"),
                                                (False, None, "fp32")])
def test_precision_auto_times_the_models_own_step_and_is_recorded(tmp_path, monkeypatch, fast,
                                                                   gain, chosen):
    """The default: bf16 where bf16 products are fast here and this model's own step measures
    at least 1.1x faster under it; written resolved into config.toml, which a resumed run
    keeps (it is not timed again)."""
    from vaelab.training import step

    timed = []
    monkeypatch.setattr(step, "fast_bf16", lambda device: fast)
    monkeypatch.setattr(step, "bf16_step_gain", lambda *a, **k: timed.append(a) or gain)
    monkeypatch.setattr(step, "AUTO_BF16_FLOPS", 1e5)  # (this net's step: ~2.5 MFLOP)
    cfg = vaelab.Config().override(dataset="digits", hidden="32", latent_dim=4, epochs=1,
                                   device="cpu")
    assert cfg.train.precision == "auto"
    vaelab.train(cfg, tmp_path / "run", progress=False)
    saved = vaelab.Config.load(tmp_path / "run" / "config.toml").train
    assert saved.precision == chosen and len(timed) == int(fast)
    x = timed[0][2] if fast else None  # timed on a batch of the run's training images
    assert x is None or (x.shape == (64, 1, 8, 8) and 0 <= x.min() and x.max() <= 1)
    resumed = vaelab.Config.load(tmp_path / "run" / "config.toml").override(epochs=2)
    vaelab.train(resumed, tmp_path / "run", resume=True, progress=False)  # as `--resume` does
    vaelab.train(cfg.override(epochs=3), tmp_path / "run", resume=True, progress=False)
    assert vaelab.Config.load(tmp_path / "run" / "config.toml").train.precision == chosen
    assert len(timed) == int(fast)  # a resumed run, given auto or not, is not timed again
    monkeypatch.undo()  # the threshold as shipped: a net this small is fp32, untimed
    monkeypatch.setattr(step, "fast_bf16", lambda device: True)
    monkeypatch.setattr(step, "bf16_step_gain", lambda *a, **k: timed.append(a) or 9.0)
    vaelab.train(cfg, tmp_path / "tiny", progress=False)
    assert vaelab.Config.load(tmp_path / "tiny" / "config.toml").train.precision == "fp32"
    assert len(timed) == int(fast)


def test_the_bf16_step_timing_leaves_the_model_and_the_random_streams_alone():
    from vaelab.models.vae import VAE
    from vaelab.training.step import bf16_step_gain

    cfg = vaelab.Config().override(hidden="64", latent_dim=4, dropout=0.1,
                                   likelihood="bernoulli")
    model = VAE.from_config(cfg.model, (1, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(32, 1, 8, 8).round()
    state = torch.random.get_rng_state()
    gain = bf16_step_gain(model, cfg.train, x, None, torch.device("cpu"), rounds=2)
    assert 0.05 < gain < 20
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_time_limit_leaves_the_compilation_out_of_the_epoch_it_extrapolates():
    from types import SimpleNamespace

    from vaelab.training.loop import out_of_time

    s = SimpleNamespace(world=SINGLE, device=torch.device("cpu"), run_dir="run",
                        cfg=vaelab.Config().override(epochs=10))
    # one epoch of 100 s, 60 of them compiling: the next one should take 40, not 100
    assert out_of_time(s, 100.0, 1, 1, 150.0, compiling=60.0) is False
    assert out_of_time(s, 100.0, 1, 1, 150.0) is True
    assert out_of_time(s, 100.0, 1, 1, 130.0, compiling=60.0) is True


def test_in_training_estimates_take_bf16_products_where_evaluate_would(tmp_path, monkeypatch):
    """select = "nll" estimates with the rule of `vaelab evaluate --precision auto`: bf16
    where it is fast and the likelihood has few levels; the training itself is unchanged
    (the estimates draw from their own streams), so only the estimates move, by rounding."""
    from vaelab import devices
    from vaelab.models.vae import VAE
    from vaelab.objectives import bf16_estimates

    cfg = vaelab.Config().override(dataset="digits", hidden="32", latent_dim=4, epochs=2,
                                   iwae_epochs=0, select_k=20, device="cpu")
    runs = {}
    for fast in (True, False):
        monkeypatch.setattr(devices, "fast_bf16", lambda device, fast=fast: fast)
        runs[fast] = vaelab.train(cfg, tmp_path / str(fast), progress=False).history
    assert [h["val_elbo"] for h in runs[True]] == [h["val_elbo"] for h in runs[False]]
    gaps = [abs(a["val_log_px"] - b["val_log_px"]) for a, b in zip(runs[True], runs[False])]
    assert all(0 < g < 0.05 for g in gaps), gaps
    monkeypatch.setattr(devices, "fast_bf16", lambda device: True)
    grey = VAE.from_config(vaelab.ModelConfig(hidden=(8,), latent_dim=2,
                                              likelihood="dgaussian"), (1, 4, 4))
    assert bf16_estimates(grey) is False  # 256 levels: bf16 moved estimates by 0.02-0.03
    monkeypatch.setattr(devices, "fast_bf16", lambda device: False)
    assert bf16_estimates(vaelab.load_run(tmp_path / "True")[0]) is False


@pytest.mark.slow
def test_a_compiled_run_stopped_every_epoch_resumes_exactly(tmp_path):
    """Compiled full batches, the eager last batch of each epoch (digits' 1,295 training
    images in batches of 64), the IWAE tail compiled anew: stopped after every epoch and
    resumed, the run gives the numbers and weights of the run in one go."""
    from safetensors.torch import load_file

    from vaelab.runs.records import read_metrics

    cfg = vaelab.Config().override(dataset="digits", hidden="32", latent_dim=4, epochs=3,
                                   iwae_epochs=1, iwae_k=3, compile="yes", device="cpu")
    full = vaelab.train(cfg, tmp_path / "full", progress=False)
    assert full.history[0]["compile_seconds"] > 0
    stops, now = 0, cfg
    while vaelab.train(now, tmp_path / "cut", resume=stops > 0, progress=False,
                       time_limit=1e-3).stopped:
        stops += 1
        now = vaelab.Config.load(tmp_path / "cut" / "config.toml")
    assert stops == 2
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    for key in ("train_loss", "val_elbo", "val_iwae3"):
        assert [m.get(key) for m in a] == [m.get(key) for m in b], key
    for name in ("model.safetensors", "checkpoint.safetensors"):
        x, y = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        assert all(torch.equal(x[k], y[k]) for k in x), name


@pytest.mark.parametrize("device", DEVICES)
def test_a_channels_last_run_resumes_with_its_adam_moments_in_the_weights_layout(
        tmp_path, device):
    """A conv run's weights are channels-last; its Adam moments, loaded from the checkpoint
    contiguous, take the weights' layout (fused Adam on CUDA refuses a mismatch) and their
    values: the resumed run steps on like the run in one go."""
    from vaelab.runs.records import read_metrics

    cfg = vaelab.Config().override(dataset="digits", **SETTINGS["conv"], epochs=2,
                                   channels_last="yes", compile="no", device=device)
    vaelab.train(cfg, tmp_path / "full", progress=False)
    vaelab.train(cfg, tmp_path / "cut", progress=False, time_limit=1e-3)
    vaelab.train(vaelab.Config.load(tmp_path / "cut" / "config.toml"), tmp_path / "cut",
                 resume=True, progress=False)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert len(b) == 2
    assert [m["val_elbo"] for m in a] == pytest.approx([m["val_elbo"] for m in b], abs=1e-3)


def _denormals(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum())


@pytest.fixture
def two_threads():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormal numbers (not x86 with SSE3)")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_flushing_denormals_reaches_every_thread_and_is_undone(two_threads):
    from vaelab.devices import flushing_denormals
    x = torch.full((1 << 22,), 1e-30)  # large enough to be split among the threads
    assert _denormals(x * 1e-10) == x.numel()  # 1e-40: denormal, kept
    with flushing_denormals():
        assert _denormals(x * 1e-10) == 0 and not (x * 1e-10).any()
        with flushing_denormals(False):
            assert _denormals(x * 1e-10) == x.numel()
        assert _denormals(x * 1e-10) == 0
    assert _denormals(x * 1e-10) == x.numel()


def test_adams_moments_of_a_weight_gone_quiet_skip_the_denormal_range(two_threads):
    """A weight with one gradient and then none (a pixel black in every later image): its
    first moment decays by 0.9 a step through the denormal range, unless flushed."""
    from vaelab.devices import flushing_denormals

    def moments_after(steps: int) -> torch.Tensor:
        w = torch.nn.Parameter(torch.zeros(1 << 20))
        opt = make_optimizer(torch.nn.ParameterList([w]), 1e-3)
        w.grad = torch.full_like(w, 1e-29)
        opt.step()
        w.grad = torch.zeros_like(w)
        for _ in range(steps):
            opt.step()
        return opt.state[w]["exp_avg"]

    assert _denormals(moments_after(250)) == 1 << 20  # 1e-30 * 0.9**250 ~ 4e-42
    with flushing_denormals():
        m = moments_after(250)
    assert _denormals(m) == 0 and not m.any()


def test_training_leaves_the_denormal_mode_as_it_found_it(tmp_path, two_threads):
    x = torch.full((1 << 22,), 1e-30)
    vaelab.train(vaelab.Config().override(dataset="digits", hidden="16", latent_dim=2,
                                          epochs=1, device="cpu"), tmp_path / "run",
                 progress=False)
    assert _denormals(x * 1e-10) == x.numel()


def _spinners(count: int, ours: bool) -> list[int]:
    """``count`` processes spinning on a core: started by this process (``ours``), or
    handed to init by a shell that exits at once (other work: not a descendant)."""
    import shlex
    import subprocess
    import sys
    spin = [sys.executable, "-c",  # (ends by itself after 5 minutes, whatever happens here)
            "import time\nend = time.time() + 300\nwhile time.time() < end: pass"]
    if ours:
        return [subprocess.Popen(spin).pid for _ in range(count)]
    line = " ".join(shlex.quote(a) for a in spin) + " >/dev/null 2>&1 & echo $!"
    return [int(subprocess.run(["sh", "-c", line], capture_output=True, text=True,
                               check=True).stdout) for _ in range(count)]


def _stop(pids: list[int]) -> None:
    """Kill, and wait until each has stopped running (a child of ours is reaped)."""
    import os
    import signal
    import time
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    for pid in pids:
        end = time.time() + 5
        while time.time() < end:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:  # not ours: gone, or a zombie that no longer runs
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                            break
                except OSError:
                    break
            time.sleep(0.02)


@pytest.fixture
def busy_cores():
    """Every core this process may use kept busy by another process (a spinning loop that
    is not this process's descendant)."""
    import os
    import time
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity to read on this platform")
    spinners = _spinners(len(os.sched_getaffinity(0)), ours=False)
    time.sleep(0.5)  # started and spinning
    yield len(spinners), lambda: _stop(spinners)
    _stop(spinners)


def test_work_of_processes_this_one_started_is_not_other_work():
    """torch.compile's worker processes, say: the time of this process's descendants
    counts as its own, and no thread is given up for it (a run's first epoch used to
    leave its second on one thread)."""
    import os
    import time

    from vaelab.devices import Cores
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity to read on this platform")
    ours = _spinners(len(os.sched_getaffinity(0)), ours=True)
    try:
        time.sleep(0.3)
        cores = Cores()
        time.sleep(0.5)
        assert cores.busy_elsewhere() < 0.5
    finally:
        _stop(ours)


def test_threads_fit_the_cores_other_work_leaves_idle(busy_cores, two_threads, monkeypatch,
                                                      caplog):
    import time

    from vaelab.devices import Cores, fit_threads, fitting_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = Cores()
    time.sleep(0.2)
    busy = cores.busy_elsewhere()
    assert cores.count == busy_cores[0] and busy > cores.count - 0.5
    with caplog.at_level(logging.WARNING, logger="vaelab.devices"):
        with fitting_threads("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # given back
        assert "busy with other work: computing on 1 thread(s), not 2" in caplog.text
        assert fit_threads("meta") == 2  # not a CPU: its threads are not the work's
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
    assert fit_threads("cpu") == 2 and torch.get_num_threads() == 2


def test_training_beside_busy_cores_says_so_and_gives_the_threads_back(
        tmp_path, busy_cores, two_threads, monkeypatch, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with caplog.at_level(logging.WARNING, logger="vaelab.devices"):
        vaelab.train(vaelab.Config().override(dataset="digits", hidden="16", latent_dim=2,
                                              epochs=1, device="cpu"), tmp_path / "run",
                     progress=False)
    assert "computing on 1 thread(s)" in caplog.text and torch.get_num_threads() == 2
    x = torch.full((1 << 22,), 1e-30)  # and both threads keep denormals again
    assert _denormals(x * 1e-10) == x.numel()


def test_threads_are_refitted_when_the_other_work_ends(busy_cores, two_threads, monkeypatch,
                                                       caplog):
    """A training run refits between epochs: the threads it gave up come back once the
    cores are idle again."""
    import time

    from vaelab.devices import fitting_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with caplog.at_level(logging.INFO, logger="vaelab.devices"), \
            fitting_threads("cpu") as threads:
        assert torch.get_num_threads() == 1
        busy_cores[1]()  # the other work ends
        for _ in range(25):  # (the next look, over a quiet stretch of the machine)
            time.sleep(0.2)
            threads.refit()
            if torch.get_num_threads() == 2:
                break
        assert torch.get_num_threads() == 2
        assert "computing on 2 thread(s), not 1" in caplog.text
        threads.refit()  # too soon after the last look to say anything: nothing changes
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2
