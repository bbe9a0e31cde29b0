import pytest
import torch
from torch.distributions import Independent

from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.models.likelihoods import LIKELIHOODS
from vaelab.models.vae import VAE
from vaelab.studies.posterior import posterior_grid
from vaelab.studies.sample import imagine, manifold, reconstruct


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 5, 7)])
def test_distributions_and_shapes(likelihood, image_shape):
    cfg = ModelConfig(latent_dim=5, hidden=(32, 16), likelihood=likelihood, activation="gelu")
    model = VAE.from_config(cfg, image_shape)
    x = torch.rand(4, *image_shape).round()
    q = model.encode(x)
    assert isinstance(q, Independent) and q.batch_shape == (4,) and q.event_shape == (5,)
    z = q.rsample((3,))  # (k, B, L)
    px = model.decode(z)
    assert px.batch_shape == (3, 4) and px.event_shape == image_shape
    assert px.log_prob(x).shape == (3, 4)
    if model.likelihood.discrete:
        assert torch.all(px.log_prob(x) <= 0)
    assert model.prior().event_shape == (5,)
    g = imagine(model, 6, seed=1)
    assert g["mean"].shape == g["sample"].shape == (6, *image_shape)
    # mean and sample come from the same z: E[x|z] is the decoder's mean at g["z"]
    assert torch.allclose(g["mean"], model.decode(g["z"]).mean)
    assert torch.equal(imagine(model, 6, seed=1)["sample"], g["sample"])  # seeded
    assert reconstruct(model, x).shape == x.shape


def test_temperature_scales_the_prior():
    model = VAE.from_config(ModelConfig(latent_dim=4, likelihood="bernoulli"), (1, 4, 4))
    z = imagine(model, 20_000, temperature=0.5, seed=0)["z"]
    assert abs(z.std().item() - 0.5) < 0.01


def test_auto_likelihood_must_be_resolved():
    with pytest.raises(ConfigError, match="resolve it first"):
        VAE.from_config(ModelConfig(), (1, 8, 8))


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_normal_is_a_pmf_with_finite_gradients(levels):
    from vaelab.models.distributions import DiscretizedNormal

    x = torch.arange(levels, dtype=torch.float64) / (levels - 1)  # every level
    loc = torch.tensor([-3.0, 0.0, 0.37, 1.0, 5.0], dtype=torch.float64)[:, None]
    for scale in (1e-4, 1e-2, 0.3, 30.0):
        loc_ = loc.clone().requires_grad_(True)
        s = torch.full_like(loc, scale).requires_grad_(True)
        d = DiscretizedNormal(loc_, s, levels)
        lp = d.log_prob(x)  # (5, levels)
        assert torch.allclose(lp.exp().sum(1), torch.ones(5, dtype=torch.float64), atol=1e-6)
        lp.sum().backward()
        assert torch.isfinite(loc_.grad).all() and torch.isfinite(s.grad).all()
        brute = (lp.exp() * x).sum(1)
        assert torch.allclose(d.mean[:, 0], brute, atol=1e-6)
    draw = DiscretizedNormal(torch.full((10000,), 0.4), torch.full((10000,), 0.2), levels).sample()
    assert set(torch.unique(to_levels(draw, levels)).tolist()) <= set(range(levels))


def to_levels(x, levels):
    return torch.round(x * (levels - 1))


@pytest.mark.parametrize("settings, planar", [
    ({"latent_dim": 2}, True),
    ({"latent_dim": 3}, False),
    ({"latent_dim": 2, "conditional": True, "classes": 10}, False),
    ({"latent_dim": 2, "layers": 2}, False),
])
def test_bayes_rule_on_a_grid_needs_one_unconditional_2d_layer(settings, planar):
    """One check serves the posterior grid, the manifold, the report and the explorer."""
    cfg = ModelConfig(hidden=(16,), likelihood="bernoulli", **settings)
    model = VAE.from_config(cfg, (1, 6, 6))
    assert model.planar is planar
    if planar:
        model.require_planar("anything")
        assert manifold(model, 3).shape == (3, 3, 1, 6, 6)
        return
    for what in (lambda: posterior_grid(model, torch.zeros(1, 1, 6, 6)),
                 lambda: manifold(model, 3)):
        with pytest.raises(ConfigError, match="one 2-D latent layer .*--latent-dim 2"):
            what()
