"""The ELBO and its pieces against closed forms."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from vaelab.config import ModelConfig
from vaelab.models.likelihoods import GaussianLikelihood
from vaelab.models.priors import StandardNormalPrior
from vaelab.models.vae import VAE
from vaelab.objectives import elbo, elbo_over, iwae_bound, kl_divergence, log_weights


def diag_normal(loc, scale):
    return Independent(Normal(loc, scale), 1)


@pytest.mark.parametrize("dim", [1, 4, 32])
@pytest.mark.parametrize("spread", [0.3, 1.0, 3.0])
def test_analytic_kl_matches_monte_carlo(dim, spread):
    g = torch.Generator().manual_seed(dim)
    loc = torch.randn(3, dim, generator=g, dtype=torch.float64) * spread
    scale = torch.rand(3, dim, generator=g, dtype=torch.float64) * spread + 0.1
    q, p = diag_normal(loc, scale), diag_normal(torch.zeros(dim, dtype=torch.float64),
                                                torch.ones(dim, dtype=torch.float64))
    analytic = kl_divergence(q, p)  # (3,)
    z = q.sample((200_000,))
    terms = q.log_prob(z) - p.log_prob(z)  # (n, 3)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(len(z))
    assert analytic.shape == (3,)
    assert torch.all((analytic - mc).abs() < 5 * se + 1e-9), (analytic, mc, se)
    # closed form, written out: 1/2 sum(mu^2 + s^2 - 1 - log s^2)
    by_hand = 0.5 * (loc ** 2 + scale ** 2 - 1 - torch.log(scale ** 2)).sum(-1)
    assert torch.allclose(analytic, by_hand)


def test_monte_carlo_fallback_where_no_closed_form():
    """KL to a mixture has no closed form: the estimator falls back to Monte Carlo. A
    two-component mixture of identical N(0, I) is N(0, I), so the answer is known."""
    dim = 3
    q = diag_normal(torch.tensor([[0.5, -1.0, 0.2]]), torch.tensor([[0.7, 1.3, 0.4]]))
    comp = Independent(Normal(torch.zeros(2, dim), torch.ones(2, dim)), 1)
    mix = MixtureSameFamily(Categorical(torch.ones(2)), comp)
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(q, mix)
    z = q.rsample((100_000,))
    mc = kl_divergence(q, mix, z)
    exact = kl_divergence(q, diag_normal(torch.zeros(dim), torch.ones(dim)))
    assert mc.shape == (1,) and torch.allclose(mc, exact, atol=0.02)


def softplus_inv(y):
    return torch.log(torch.expm1(torch.as_tensor(y, dtype=torch.float64)))


class LinearGaussian:
    """z ~ N(0, I_L), x|z ~ N(Wz + b, sigma^2 I_D): log p(x) = log N(x; b, WW^T + sigma^2 I).
    W has orthogonal columns, so the true posterior N(M^-1 W^T (x-b), sigma^2 M^-1),
    M = W^T W + sigma^2 I, is diagonal and lies in the encoder's family."""

    def __init__(self, D=6, L=2, sigma=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
        self.W = Q * torch.tensor([2.0, 0.7], dtype=torch.float64)[:L]
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.D, self.L, self.sigma = D, L, sigma
        M = self.W.T @ self.W + sigma ** 2 * torch.eye(L, dtype=torch.float64)
        self.A = torch.linalg.solve(M, self.W.T)  # posterior mean = A (x - b)
        self.post_scale = sigma / torch.sqrt(torch.diagonal(M))
        self.marginal = MultivariateNormal(self.b, self.W @ self.W.T
                                           + sigma ** 2 * torch.eye(D, dtype=torch.float64))

    def vae(self, scale_error=1.0, loc_shift=0.0) -> VAE:
        D, L = self.D, self.L
        min_scale = 1e-3
        enc = nn.Linear(D, 2 * L).double()
        dec = nn.Linear(L, 2 * D).double()
        with torch.no_grad():
            enc.weight.zero_()
            enc.weight[:L] = self.A
            enc.bias[:L] = -self.A @ self.b + loc_shift
            enc.bias[L:] = softplus_inv(self.post_scale * scale_error)
            dec.weight.zero_()
            dec.weight[:D] = self.W
            dec.bias[:D] = self.b
            dec.bias[D:] = softplus_inv(self.sigma - min_scale)
        cfg = ModelConfig(latent_dim=L, likelihood="gaussian", min_scale=min_scale)
        model = VAE(nn.Sequential(nn.Flatten(-3), enc),
                    nn.Sequential(dec, nn.Unflatten(-1, (2, 1, D))),
                    GaussianLikelihood(cfg), StandardNormalPrior(cfg).double(), L, (1, 1, D))
        return model

    def data(self, n=64, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.L, generator=g, dtype=torch.float64)
        x = z @ self.W.T + self.b + self.sigma * torch.randn(n, self.D, generator=g,
                                                             dtype=torch.float64)
        return x.view(n, 1, 1, self.D)

    def log_px(self, x):
        return self.marginal.log_prob(x.view(len(x), self.D))


def test_exact_posterior_makes_the_bound_tight():
    lg = LinearGaussian()
    model, x = lg.vae(), lg.data()
    lw = log_weights(model, x, k=50)  # (50, B): every importance weight equals p(x)
    assert lw.shape == (50, len(x))
    assert torch.allclose(lw, lg.log_px(x).expand_as(lw), atol=1e-8)
    # the ELBO with the analytic KL is unbiased, not zero-variance: compare at large k
    _, t = elbo(model, x, k=20_000)
    assert torch.allclose(t.elbo, lg.log_px(x), atol=0.05)


def test_elbo_gap_is_the_kl_to_the_true_posterior():
    """log p(x) - ELBO = KL(q(z|x) || p(z|x)) >= 0, checked against the closed form."""
    lg = LinearGaussian()
    model, x = lg.vae(scale_error=1.8, loc_shift=0.4), lg.data()
    k = 20_000
    _, t = elbo(model, x, k=k)
    q = model.encode(x)
    true_post = diag_normal(q.mean - 0.4, lg.post_scale.expand_as(q.mean))
    gap = torch.distributions.kl_divergence(q, true_post)
    assert torch.all(gap > 0.05)
    lw = log_weights(model, x, k)  # the ELBO's Monte-Carlo error
    se = lw.std(0) / math.sqrt(k)
    assert torch.all((t.elbo - (lg.log_px(x) - gap)).abs() < 5 * se + 1e-9)
    assert torch.all(t.elbo < lg.log_px(x))


def test_bounds_are_ordered():
    """ELBO <= IWAE(k=10) <= IWAE(k=1000) <= log p(x), on average over examples."""
    lg = LinearGaussian(seed=3)
    model, x = lg.vae(scale_error=2.5, loc_shift=0.3), lg.data(n=256)
    torch.manual_seed(0)
    _, t = elbo(model, x, k=100)
    b10 = torch.stack([iwae_bound(model, x, 10) for _ in range(50)]).mean(0)
    b1000 = iwae_bound(model, x, 1000)
    exact = lg.log_px(x)
    means = [v.mean().item() for v in (t.elbo, b10, b1000, exact)]
    assert means == sorted(means), means
    assert means[-1] - means[-2] < 0.25 * (means[-1] - means[0])  # k = 1000 closes the gap


def test_validation_takes_the_elbo_and_the_iwae_bound_from_the_same_samples():
    """elbo_over with iwae_k: the ELBO (its k samples' mean) and the IWAE bound from one
    pass, each the quantity the closed form and the separate estimators give."""
    lg = LinearGaussian(seed=3)
    model, x = lg.vae(scale_error=2.5, loc_shift=0.3), lg.data(n=256)
    torch.manual_seed(0)
    both = elbo_over(model, [x[:100], x[100:]], iwae_k=1000)  # batches of unequal size
    _, t = elbo(model, x, k=1000)
    exact = lg.log_px(x).mean().item()
    assert both["n"] == 256
    assert both["elbo"] == pytest.approx(t.elbo.mean().item(), abs=0.02)
    assert both["recon"] - both["kl"] == pytest.approx(both["elbo"], abs=1e-9)
    assert both["iwae"] == pytest.approx(iwae_bound(model, x, 1000).mean().item(), abs=0.02)
    assert both["elbo"] < both["iwae"] < exact
    assert exact - both["iwae"] < 0.25 * (exact - both["elbo"])
    plain = elbo_over(model, [x])
    assert "iwae" not in plain and plain["elbo"] == pytest.approx(both["elbo"], abs=0.5)


def test_loss_is_mean_over_examples_and_beta_only_weighs_training():
    lg = LinearGaussian()
    model, x = lg.vae(scale_error=1.5), lg.data(n=8)
    torch.manual_seed(0)
    loss1, t1 = elbo(model, x, beta=1.0)
    torch.manual_seed(0)
    loss2, t2 = elbo(model, x, beta=0.5)
    assert torch.allclose(loss1, -t1.elbo.mean())
    assert torch.allclose(loss2, -(t2.recon - 0.5 * t2.kl).mean())
    assert torch.allclose(t1.elbo, t2.elbo)  # reported ELBO ignores beta
    assert np.all(t1.kl.detach().numpy() >= 0)


def _encoder_grads(model, x, k, dreg, seed):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, _ = elbo(model, x, k=k, iwae=True, dreg=dreg)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_dreg_encoder_gradient_vanishes_at_the_true_posterior():
    """At q = p(z|x) every importance weight is p(x), whatever the code: the doubly
    reparameterized encoder gradient is zero draw by draw; the plain one (its score term)
    only on average."""
    lg = LinearGaussian()
    model, x = lg.vae(), lg.data()
    for dreg, zero in ((True, True), (False, False)):
        _, g = _encoder_grads(model, x, 5, dreg, seed=0)
        largest = max(v.abs().max().item() for n, v in g.items() if n.startswith("encoder"))
        assert (largest < 1e-9) == zero, (dreg, largest)


def test_dreg_has_the_plain_gradients_mean_less_noise_and_leaves_the_decoder_alone():
    """q off the posterior (a linear-Gaussian model): over many draws the doubly
    reparameterized encoder gradient has the plain one's mean, with less spread; the loss
    and the decoder's gradient are the plain ones, draw for draw."""
    lg = LinearGaussian()
    model = lg.vae(scale_error=1.8, loc_shift=0.4)
    x = lg.data(n=4).repeat(2000, 1, 1, 1)  # each row's gradient one independent estimate
    means = {True: [], False: []}
    for seed in range(12):
        (la, ga), (lb, gb) = (_encoder_grads(model, x, 5, d, seed) for d in (True, False))
        assert torch.equal(la, lb)
        for n in ga:
            if n.startswith("decoder"):
                torch.testing.assert_close(ga[n], gb[n], rtol=1e-12, atol=1e-12)
        for d, g in ((True, ga), (False, gb)):
            means[d].append(torch.cat([v.flatten() for n, v in g.items()
                                       if n.startswith("encoder")]))
    a, b = torch.stack(means[True]), torch.stack(means[False])  # (12, encoder parameters)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() <= 5 * se + 1e-9).all()
    assert a.var(0).sum() < 0.5 * b.var(0).sum()  # the score term's noise is gone
