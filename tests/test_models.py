"""The model family: nets x likelihoods x priors x conditioning, the discretized logistic
mixture, learned priors' KL against closed forms, the IWAE and free-bits objectives, and
training + checkpoints of every model on real data."""
import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaelab.config import Config, ModelConfig, TrainConfig
from vaelab.errors import ConfigError
from vaelab.models.distributions import (BernoulliImage, CoupledLogisticMixture,
                                         discretized_logistic_log_prob, to_levels)
from vaelab.models.vae import VAE
from vaelab.noise import seeded
from vaelab.objectives import _analytic_kl, elbo, kl_divergence, log_weights
from vaelab.runs.rundir import load_run
from vaelab.training.loop import train

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 7, 9)]  # digits, MNIST-likes, odd-sized RGB
COMBOS = [(net, lik, prior, cond)
          for net, lik, prior, cond in itertools.product(
              ["mlp", "conv"], ["bernoulli", "cbernoulli", "gaussian", "dgaussian", "dlogistic"],
              ["normal", "mog", "vamp"], [False, True])
          if not (cond and prior == "vamp")]


def make(net="mlp", likelihood="bernoulli", prior="normal", conditional=False, shape=(1, 8, 8),
         **kw) -> VAE:
    levels = 2 if likelihood == "bernoulli" else 256
    kw = {"prior_components": 5, **kw}
    cfg = ModelConfig(net=net, likelihood=likelihood, prior=prior, conditional=conditional,
                      classes=3 if conditional else None, latent_dim=4, hidden=(32,),
                      conv_widths=(8, 16), levels=levels, logistic_mixtures=2, **kw)
    return VAE.from_config(cfg, shape)


def images(likelihood: str, shape, n=5, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return x.bernoulli(generator=g) if likelihood == "bernoulli" else torch.round(x * 255) / 255


@pytest.mark.parametrize("net, likelihood, prior, conditional", COMBOS)
def test_every_combination_has_the_right_shapes_and_gradients(net, likelihood, prior,
                                                              conditional):
    for shape in SHAPES:
        model = make(net, likelihood, prior, conditional, shape)
        x = images(likelihood, shape)
        y = torch.tensor([0, 1, 2, 0, 1]) if conditional else None
        q = model.encode(x, y)
        assert q.batch_shape == (5,) and q.event_shape == (4,)
        loss, t = elbo(model, x, k=2, y=y)
        assert t.elbo.shape == (5,) and torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert log_weights(model, x, 3, y).shape == (3, 5)
        px = model.decode(torch.randn(2, 5, 4), y)  # (k, B, L) codes
        assert px.batch_shape == (2, 5) and px.event_shape == shape
        with torch.no_grad():
            s = model.decode(torch.randn(5, 4), y)
            assert s.mean.shape == s.sample().shape == (5, *shape)
        if likelihood in ("bernoulli", "dgaussian", "dlogistic"):
            assert (px.log_prob(x) <= 1e-5).all()  # probabilities of discrete data


# ---- the discretized logistic mixture ----------------------------------------------------
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_mixture_is_a_distribution_over_the_levels(levels):
    g = torch.Generator().manual_seed(0)
    m, n = 3, 40  # grey: a (1, 1, n) image of n pixels
    logits = torch.randn(m, 1, n, generator=g)
    loc = torch.cat([torch.rand(m, n - 4, generator=g) * 1.4 - 0.2,
                     torch.tensor([[-30.0, 30.0, 0.5, 0.5]] * m)], 1)  # far tails and centre
    log_scale = torch.cat([torch.randn(m, n - 4, generator=g) * 2 - 3,
                           torch.tensor([[-2.0, -2.0, -12.0, 3.0]] * m)], 1)
    d = CoupledLogisticMixture(logits, loc.view(m, 1, 1, n), log_scale.view(m, 1, 1, n),
                               torch.zeros(m, 0, 1, n), levels)
    assert d.event_shape == (1, 1, n) and d.batch_shape == ()
    lv = torch.arange(levels, dtype=torch.float32) / (levels - 1)
    # per pixel: log_prob of an image whose pixels all sit at one level, minus the others
    per_pixel = torch.stack([
        torch.logsumexp(torch.log_softmax(d.logits, 0) + discretized_logistic_log_prob(
            v.expand(1, 1, n), d.loc, d.log_scale, levels).sum(-3), 0)[0] for v in lv])
    torch.testing.assert_close(per_pixel.exp().sum(0), torch.ones(n), atol=2e-4, rtol=0)
    torch.testing.assert_close(d.log_prob(lv[1].expand(1, 1, n)), per_pixel[1].sum())
    torch.testing.assert_close(d.mean.view(n), (per_pixel.exp() * lv[:, None]).sum(0))
    s = d.sample((7,))
    assert s.shape == (7, 1, 1, n) and torch.equal(to_levels(s, levels) / (levels - 1), s)


def _rgb_mixture(levels, pixels=2, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CoupledLogisticMixture(torch.randn(m, 1, pixels, generator=g),
                                  torch.rand(m, 3, 1, pixels, generator=g),
                                  torch.randn(m, 3, 1, pixels, generator=g) - 1.5,
                                  torch.randn(m, 3, 1, pixels, generator=g) * 2, levels)


def test_coupled_rgb_mixture_sums_to_one_and_samples_its_probabilities():
    """Over all levels^3 colours of a pixel the probabilities sum to one, the channels do
    depend on each other, and sample frequencies match the probabilities."""
    levels = 4
    d = _rgb_mixture(levels, pixels=1)
    lv = torch.arange(levels, dtype=torch.float32) / (levels - 1)
    colours = torch.cartesian_prod(lv, lv, lv)  # (64, 3)
    p = torch.stack([d.log_prob(c.view(3, 1, 1)) for c in colours]).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    joint = p.view(levels, levels, levels)
    independent = joint.sum((1, 2))[:, None, None] * joint.sum((0, 2))[None, :, None] \
        * joint.sum((0, 1))[None, None, :]
    assert (joint - independent).abs().max() > 1e-3  # coupled, not a product of marginals
    with seeded(0):
        s = d.sample((40_000,)).view(-1, 3)
    idx = (s * (levels - 1)).round().long() @ torch.tensor([levels ** 2, levels, 1])
    freq = torch.bincount(idx, minlength=levels ** 3).float() / len(idx)
    assert (freq - p).abs().max() < 0.01
    mean = (p[:, None] * colours).sum(0)  # the plug-in mean is exact for red
    torch.testing.assert_close(d.mean.view(3)[0], mean[0], atol=1e-5, rtol=0)


def test_dlogistic_likelihood_on_rgb_has_pixelcnn_parameters_and_old_grey_layout():
    from vaelab.models.likelihoods import DiscretizedLogisticLikelihood

    lik = DiscretizedLogisticLikelihood(ModelConfig(logistic_mixtures=5, likelihood="dlogistic"))
    assert lik.out_channels(3) == 50 and lik.out_channels(1) == 15  # 10 M and 3 M
    params = torch.randn(2, 4, 50, 6, 7, requires_grad=True)  # (k samples, batch, ...)
    d = lik(params)
    assert d.batch_shape == (2, 4) and d.event_shape == (3, 6, 7)
    x = torch.round(torch.rand(4, 3, 6, 7) * 255) / 255
    lp = d.log_prob(x)
    assert lp.shape == (2, 4) and (lp < 0).all()
    lp.sum().backward()
    assert torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0
    grey = lik(torch.randn(4, 15, 6, 7))
    assert grey.coeffs.shape[-3] == 0 and grey.loc.shape == (5, 4, 1, 6, 7)


@pytest.mark.parametrize("logit_shape,x_shape", [
    ((6, 1, 4, 5), (6, 1, 4, 5)),          # a training batch
    ((3, 6, 1, 4, 5), (6, 1, 4, 5)),       # samples of z over one image per example
    ((2, 3, 6, 3, 4, 5), (6, 3, 4, 5)),    # two sample dimensions, RGB
    ((6, 1, 4, 5), (2, 6, 1, 4, 5)),       # images with more dimensions than the logits
    ((3, 1, 1, 4, 5), (6, 1, 4, 5)),       # one set of logits for every image
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_image_log_prob_is_the_bernoulli_sum_with_its_gradients(logit_shape, x_shape,
                                                                          dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(logit_shape, generator=g, dtype=dtype) * 15).requires_grad_()
    logits.data.view(-1)[:4] = torch.tensor([-120.0, 120.0, 19.9, 20.1], dtype=dtype)
    x = torch.rand(x_shape, generator=g, dtype=dtype)  # grey values: the same formula
    x.view(-1)[4:40] = x.view(-1)[4:40].round()
    with torch.no_grad():  # the estimator's two passes
        fast = BernoulliImage(logits).log_prob(x)
    slow = Independent(Bernoulli(logits=logits, validate_args=False), 3).log_prob(x)
    assert fast.shape == slow.shape and fast.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(fast, slow, rtol=0, atol=tol)
    trained = BernoulliImage(logits).log_prob(x)  # with gradients: Bernoulli's own kernel
    assert torch.equal(trained, slow)
    (g_fast,), (g_slow,) = (torch.autograd.grad(v.sum(), logits) for v in (trained, slow))
    assert torch.equal(g_fast, g_slow)
    d = BernoulliImage(logits.detach())  # the rest of the distribution is Bernoulli's
    assert torch.equal(d.mean, torch.sigmoid(logits.detach()))
    assert d.event_shape == logits.shape[-3:] and d.sample().shape == logits.shape


def test_bernoulli_image_widens_bfloat16_logits_before_the_sum():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 8, 1, 28, 28, generator=g) * 6).bfloat16()
    x = (torch.rand(8, 1, 28, 28, generator=g) < 0.3).float()
    exact = Independent(Bernoulli(logits=logits.double()), 3).log_prob(x.double())
    with torch.no_grad():
        fast = BernoulliImage(logits).log_prob(x)
        with torch.autocast("cpu", torch.bfloat16):  # where bf16 decoders are evaluated
            under = BernoulliImage(logits).log_prob(x)
    for v in (fast, under):  # (a bfloat16 sum would be ~1 nat off)
        assert v.dtype == torch.float32 and (v.double() - exact).abs().max() < 1e-3


def test_discretized_logistic_matches_the_cdf_and_has_finite_gradients():
    levels = 256
    x = torch.tensor([0.0, 3 / 255, 128 / 255, 1.0], dtype=torch.float64)
    loc = torch.tensor([0.1, 0.0, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([-3.0, -4.0, -2.0, -3.0], dtype=torch.float64, requires_grad=True)
    lp = discretized_logistic_log_prob(x, loc, log_scale, levels)
    s, h = log_scale.exp(), 0.5 / 255
    cdf = torch.sigmoid
    expect = torch.stack([cdf((x[0] + h - loc[0]) / s[0]).log(),
                          (cdf((x[1] + h - loc[1]) / s[1]) - cdf((x[1] - h - loc[1]) / s[1])).log(),
                          (cdf((x[2] + h - loc[2]) / s[2]) - cdf((x[2] - h - loc[2]) / s[2])).log(),
                          (1 - cdf((x[3] - h - loc[3]) / s[3])).log()])
    torch.testing.assert_close(lp, expect)
    far_loc = torch.tensor([40.0, -40.0, 30.0], requires_grad=True)  # data in the far tails
    far_scale = torch.tensor([-5.0, -5.0, -7.0], requires_grad=True)
    far = discretized_logistic_log_prob(torch.tensor([0.0, 1.0, 0.5]), far_loc, far_scale,
                                        levels)
    far.sum().backward()
    assert torch.isfinite(far).all() and (far < -10).all()
    assert torch.isfinite(far_loc.grad).all() and torch.isfinite(far_scale.grad).all()
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


# ---- learned priors: Monte-Carlo KL against closed forms ----------------------------------
def _q(seed=0, n=3, d=4):
    g = torch.Generator().manual_seed(seed)
    return Independent(Normal(torch.randn(n, d, generator=g),
                              torch.rand(n, d, generator=g) + 0.3), 1)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_monte_carlo_kl_of_a_one_component_prior_matches_the_closed_form(prior):
    model = make(prior=prior, prior_components=1)
    p = model.prior()  # a mixture of one Gaussian, N(m, diag s^2)
    comp = Independent(Normal(p.component_distribution.mean[0],
                              p.component_distribution.stddev[0]), 1)
    q = _q()
    with seeded(0):
        z = q.sample((200_000,))
    with torch.no_grad():
        mc = kl_divergence(q, p, z)  # no closed form registered: Monte Carlo
    exact = _analytic_kl(q, comp)
    torch.testing.assert_close(mc, exact, atol=0.03, rtol=0.01)


def test_a_mixture_prior_has_its_mixture_density():
    model = make(prior="mog")
    p = model.prior()
    z = torch.randn(10, 4)
    pri = model.prior
    w = torch.log_softmax(pri.logits, 0)
    comps = Independent(Normal(pri.loc, torch.nn.functional.softplus(pri.raw_scale)), 1)
    expect = torch.logsumexp(w + comps.log_prob(z[:, None, :]), 1)
    torch.testing.assert_close(p.log_prob(z), expect)


def test_the_vamp_prior_is_the_encoder_at_its_pseudo_inputs():
    model = make(prior="vamp")
    u = torch.sigmoid(model.prior.raw)  # (K, 1, 8, 8)
    qu = model.encode(u)
    z = torch.randn(6, 4)
    expect = torch.logsumexp(qu.log_prob(z[:, None, :]), 1) - math.log(len(u))
    torch.testing.assert_close(model.prior().log_prob(z), expect)
    assert "prior.raw" in model.state_dict() and not any(
        k.startswith(("prior._vae", "prior._encode")) for k in model.state_dict())


# ---- objectives as arguments -------------------------------------------------------------
def test_iwae_with_one_sample_is_the_monte_carlo_elbo():
    model = make(prior="mog")  # KL by Monte Carlo, from the same z
    x = images("bernoulli", (1, 8, 8))
    with seeded(3):
        plain, _ = elbo(model, x, k=1)
    with seeded(3):
        iwae, _ = elbo(model, x, k=1, iwae=True)
    torch.testing.assert_close(plain, iwae)


def test_iwae_bound_is_above_the_elbo():
    model = make()
    x = images("bernoulli", (1, 8, 8), n=400)
    with seeded(0):
        elbo_loss = torch.stack([elbo(model, x, k=1)[0] for _ in range(20)]).mean()
        iwae_loss = elbo(model, x, k=50, iwae=True)[0]
    assert iwae_loss < elbo_loss - 0.01


def test_free_bits_floor_each_dimension():
    model = make()
    x = images("bernoulli", (1, 8, 8), n=8)
    with seeded(1):
        _, t = elbo(model, x, k=1)
    with seeded(1):
        loss, _ = elbo(model, x, k=1, free_bits=100.0)  # above every dimension's KL
    torch.testing.assert_close(loss, -t.recon.mean() + 100.0 * 4)
    with seeded(1):
        loss0, _ = elbo(model, x, k=1, free_bits=0.0)
    with seeded(1):
        tiny, _ = elbo(model, x, k=1, free_bits=1e-9)  # below every one: the plain ELBO
    torch.testing.assert_close(loss0, tiny)


@pytest.mark.parametrize("bad", [dict(objective="iwae", beta=0.5), dict(objective="iwae",
                                 free_bits=0.5), dict(objective="vae"), dict(free_bits=-1)])
def test_objective_settings_are_checked(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_vamp_prior_refuses_a_conditional_model():
    with pytest.raises(ConfigError, match="vamp"):
        ModelConfig(prior="vamp", conditional=True)


def test_dropout_acts_in_training_only_and_is_for_one_layer_mlps():
    """Dropout (the small-data regularizer): a training-mode pass draws a mask, an
    evaluation pass is deterministic and equals the net without dropout layers."""
    model, plain = make(dropout=0.5), make()
    plain.load_state_dict(model.state_dict())
    x = images("bernoulli", (1, 8, 8))
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2
    model.train()
    assert not torch.equal(model.encoder(x), model.encoder(x))
    model.eval()
    plain.eval()
    assert torch.equal(model.encoder(x), plain.encoder(x))
    for bad in (dict(dropout=1.0), dict(dropout=-0.1), dict(dropout=0.2, net="conv"),
                dict(dropout=0.2, layers=2)):
        with pytest.raises(ConfigError, match="dropout must be in"):
            ModelConfig(**bad)


# ---- training on real data, checkpoints ------------------------------------------------
TRAINED = [("conv", "dlogistic", "vamp", "elbo"), ("conv", "bernoulli", "mog", "iwae"),
           ("mlp", "dgaussian", "mog", "elbo"), ("mlp", "cbernoulli", "vamp", "elbo")]


@pytest.mark.slow
@pytest.mark.parametrize("net, likelihood, prior, objective", TRAINED)
def test_each_model_trains_on_digits_and_round_trips(tmp_path, net, likelihood, prior,
                                                     objective):
    binarize = "static" if likelihood == "bernoulli" else "none"
    cfg = Config().override(dataset="digits", binarize=binarize, net=net, likelihood=likelihood,
                            prior=prior, latent_dim=8, hidden="64", conv_widths="16,32",
                            prior_components=20, epochs=4, objective=objective,
                            samples=4 if objective == "iwae" else 1, free_bits=0.0)
    r = train(cfg, tmp_path / "run", progress=False)
    first, last = r.history[0]["train_loss"], r.history[-1]["train_loss"]
    assert last < first  # it learns
    if objective == "iwae":
        assert "val_iwae4" in r.history[-1]
    model, _ = load_run(tmp_path / "run")
    z = torch.randn(6, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z).mean, r.model.decode(z).mean)
        torch.testing.assert_close(model.prior().log_prob(z), r.model.prior().log_prob(z))


# ---- the hierarchical VAE ----------------------------------------------------------------
def _hvae(layers=2, latent=2, net="mlp", prior="normal"):
    torch.manual_seed(0)
    return VAE.from_config(ModelConfig(layers=layers, latent_dim=latent, hidden=(32, 16),
                                       net=net, conv_widths=(8, 16), prior=prior,
                                       prior_components=5, likelihood="bernoulli"), (1, 8, 8))


HIERARCHIES = [("mlp", "normal"), ("conv", "normal"), ("mlp", "mog"), ("conv", "vamp")]


@pytest.mark.parametrize("net, prior", HIERARCHIES)
def test_hierarchical_walks_are_normalized_densities_of_their_samplers(net, prior):
    """E_q[p(z)/q(z)] = 1 and E_p[q(z)/p(z)] = 1: each walk's log_prob is the density of
    what its rsample draws, and both integrate to one (with a mixture at the top too)."""
    model = _hvae(net=net, prior=prior)
    x = images("bernoulli", (1, 8, 8), n=1)
    with torch.no_grad(), seeded(1):
        q, p = model.encode(x), model.prior()
        z = q.sample((200_000,))  # (S, 1, 4)
        w = (p.log_prob(z) - q.log_prob(z)).exp()
        zp = p.sample((200_000,)).unsqueeze(1)
        w2 = (q.log_prob(zp) - p.log_prob(zp)).exp()
    for v in (w, w2):
        assert abs(v.mean().item() - 1) < 4 * v.std().item() / math.sqrt(len(v)) + 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("net, prior", HIERARCHIES)
def test_hierarchical_bounds_are_ordered_and_layers_add_up(net, prior):
    model = _hvae(layers=3, latent=3, net=net, prior=prior)
    x = images("bernoulli", (1, 8, 8), n=64)
    with torch.no_grad(), seeded(0):
        elbos = torch.stack([elbo(model, x, k=1)[1].elbo for _ in range(200)]).mean(0)
        from vaelab.objectives import iwae_bound

        k10 = torch.stack([iwae_bound(model, x, 10) for _ in range(20)]).mean(0)
        k1000 = iwae_bound(model, x, 1000)
        kl = torch.stack([model.layer_kl(x) for _ in range(400)]).mean(0)  # (B, T)
        total = torch.stack([elbo(model, x, k=1)[1].kl for _ in range(400)]).mean(0)
    assert (elbos.mean() < k10.mean()) and (k10.mean() < k1000.mean() + 0.05)
    assert kl.shape == (64, 3)
    torch.testing.assert_close(kl.sum(-1).mean(), total.mean(), atol=0.05, rtol=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--net", "conv", "--conv-widths", "8,16", "--prior",
                                         "vamp", "--prior-components", "10"]])
def test_hierarchical_vae_trains_evaluates_and_round_trips(tmp_path, extra):
    from vaelab.app.cli import main

    out = tmp_path / "hvae"
    assert main(["-q", "train", "--layers", "2", "--latent-dim", "4", "--hidden", "64,32",
                 "--epochs", "4", "--out", str(out), "--no-progress", *extra]) == 0
    import json

    history = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    model, _ = load_run(out)
    assert model.latent_dim == 8 and model.layers == 2
    z = torch.randn(3, 8)
    with torch.no_grad():
        a, b = model.decode(z).mean, load_run(out)[0].decode(z).mean
    torch.testing.assert_close(a, b)
    assert main(["-q", "evaluate", str(out), "--k", "20", "--json"]) == 0
    r = json.loads((out / "evaluate.json").read_text())["test, k=20, best"]
    assert len(r["kl_per_layer"]) == 2 and r["nll"] < -r["elbo"] + 1e-6
    assert main(["-q", "report", str(out)]) == 0


def test_kl_balancing_weighs_layers_by_their_share_during_warm_up(tmp_path):
    model = _hvae(layers=3, latent=3)
    x = images("bernoulli", (1, 8, 8), n=16)

    def run(beta, balance):
        with seeded(4):
            return elbo(model, x, 2, beta, kl_balance=balance)

    plain, t = run(1.0, True)  # no warm-up: the plain ELBO
    torch.testing.assert_close(plain, run(1.0, False)[0])
    torch.testing.assert_close(run(0.3, False)[1].kl, t.kl)  # the same reported terms
    loss, t = run(0.3, True)
    with seeded(4):  # by hand, from the same draws
        q, p = model.encode(x), model.prior()
        z = q.rsample((2,))
        recon = model.decode(z).log_prob(x).mean(0)
        kl_t = torch.stack([a - b for a, b in zip(q.layer_log_probs(z), p.layer_log_probs(z))],
                           -1).mean(0).mean(0)  # (T,)
    gamma = kl_t.abs() + 0.01
    gamma = gamma / gamma.mean()
    torch.testing.assert_close(loss, -(recon.mean() - 0.3 * (gamma * kl_t).sum()))
    assert not torch.allclose(loss, run(0.3, False)[0])  # it does reweigh
    with pytest.raises(ConfigError, match="--layers 2"):
        train(Config().override(kl_balance=True, epochs=1), tmp_path / "run")
    with pytest.raises(ConfigError, match="kl_balance"):
        TrainConfig(objective="iwae", samples=5, kl_balance=True)


def test_dreg_trains_a_one_layer_model_and_refuses_a_hierarchy(tmp_path):
    """--iwae-gradient dreg: an IWAE run (here a tail of one) trains with it and records it
    in config.toml; a hierarchy, whose q has no parameters to hold, is refused up front."""
    cfg = Config().override(epochs=3, iwae_epochs=1, select="nll", hidden="32", latent_dim=4,
                            iwae_gradient="dreg", select_k=5, select_images=50)
    run = train(cfg, tmp_path / "dreg", progress=False)
    assert all(math.isfinite(m["train_loss"]) for m in run.history)
    assert load_run(tmp_path / "dreg")[1].train.iwae_gradient == "dreg"
    with pytest.raises(ConfigError, match="one stochastic layer"):
        train(cfg.override(layers=2), tmp_path / "hier")
    assert [p.name for p in (tmp_path / "hier").iterdir()] == [".lock"]  # nothing written
    with pytest.raises(ConfigError, match="reparam, dreg"):
        TrainConfig(iwae_gradient="drag")


def test_hierarchical_settings_are_checked():
    with pytest.raises(ConfigError, match="hierarchical"):
        VAE.from_config(ModelConfig(layers=2, conditional=True, classes=10,
                                    likelihood="bernoulli"), (1, 8, 8))


def test_hierarchical_vamp_prior_is_the_top_posterior_at_its_pseudo_inputs():
    model = _hvae(net="conv", prior="vamp")
    u = torch.sigmoid(model.prior.top.raw)
    z0 = torch.randn(7, 2)
    with torch.no_grad():
        q = model.top_posterior(u)  # batch (5,)
        want = torch.logsumexp(q.log_prob(z0[:, None]), -1) - math.log(5)
        got = model.prior().layer_log_probs(torch.cat([z0, torch.zeros(7, 2)], -1))[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert any(p is model.prior.top.raw for p in model.parameters())  # trained with the model


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_hierarchical_weights_saved_under_the_former_prior_names_still_load(prior):
    model = _hvae(prior=prior)
    state = model.state_dict()
    former = {k.replace("prior.top.", "prior.mixture." if prior == "mog" else "prior."): v
              for k, v in state.items()}
    assert former.keys() != state.keys()
    fresh = _hvae(prior=prior)
    fresh.load_state_dict(former)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, state[k])
