import pytest
import torch
from torch.distributions import Independent

from vaelab.config import ConfigError, ModelConfig
from vaelab.distributions import LIKELIHOODS
from vaelab.model import VAE
from vaelab.sample import imagine, reconstruct


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
