"""The lecture's MLE models: closed forms, EM's monotonicity, and a hand computation."""
import math

import numpy as np
import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data.idx import read_idx
from vaelab.data.splits import load_data
from vaelab.models.distributions import discretized_normal_log_prob
from vaelab.studies.baselines import (BernoulliMixture, FactorizedBernoulli, FactorizedGaussian,
                                      PPCA, run_baselines)


def test_mle_of_factorized_models_is_the_data_mean():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(500, 30, generator=g) < torch.linspace(0.05, 0.95, 30)).double()
    assert torch.allclose(FactorizedBernoulli.fit(x).p, x.mean(0))
    grey = torch.randint(0, 17, (500, 30), generator=g).double() / 16
    m = FactorizedGaussian.fit(grey, levels=17)
    assert torch.allclose(m.loc, grey.mean(0))
    assert torch.allclose(m.scale ** 2, grey.var(0, unbiased=False))
    # and it is the maximum: moving mu either way lowers the (continuous) likelihood
    def ll(mu):
        return torch.distributions.Normal(mu, m.scale).log_prob(grey).sum()
    assert ll(m.loc) > ll(m.loc + 0.01) and ll(m.loc) > ll(m.loc - 0.01)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_gaussian_sums_to_one_over_levels(levels):
    x = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    for loc, scale in [(0.5, 0.2), (0.0, 0.01), (1.3, 0.05), (-4.0, 0.3)]:
        lp = discretized_normal_log_prob(x, torch.tensor(loc, dtype=torch.float64),
                                           torch.tensor(scale, dtype=torch.float64), levels)
        assert torch.isfinite(lp).all()
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_em_log_likelihood_never_decreases():
    data = load_data(DataConfig(dataset="digits", binarize="static"))
    x = data.train.batch(slice(None)).flatten(1)
    m = BernoulliMixture.fit(x, components=10, iterations=60, tol=0.0)
    h = np.array(m.history)
    assert len(h) == 60 and np.all(np.diff(h) >= -1e-9)
    assert h[-1] > h[0] + 2  # EM from a random soft assignment gains nats
    assert torch.allclose(m.log_pi.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    single = FactorizedBernoulli.fit(x)  # one component can do no better than K = 10
    assert m.log_prob(x).mean() > single.log_prob(x).mean()


def test_ppca_matches_scikit_learn():
    """scikit-learn's PCA is the PPCA fit of Tipping & Bishop, up to its covariance being
    the unbiased one (1/(N-1)) where the MLE has 1/N."""
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.randn(n, 12, generator=g, dtype=torch.float64) @ torch.randn(
        12, 12, generator=g, dtype=torch.float64)
    ours = PPCA.fit(y, q=4, levels=2).density()
    pca = PCA(n_components=4).fit(y.numpy())
    assert np.allclose(ours.covariance_matrix.numpy(), pca.get_covariance() * (n - 1) / n)
    # and the MLE beats sklearn's covariance on the training data, as it must
    ref = torch.distributions.MultivariateNormal(ours.loc, torch.from_numpy(pca.get_covariance()))
    assert ours.log_prob(y).mean() > ref.log_prob(y).mean()


def test_factorized_bernoulli_nll_on_real_mnist_by_hand(mnist_t10k):
    """Fit on 8,000 real MNIST test digits (binarized at 128), score the other 2,000."""
    x = (read_idx(mnist_t10k / "t10k-images-idx3-ubyte.gz").reshape(10000, 784) >= 128)
    train, test = x[:8000].astype(np.float64), x[8000:].astype(np.float64)
    p = np.clip(train.mean(0), 1 / 16000, 1 - 1 / 16000)
    by_hand = -np.mean(np.sum(test * np.log(p) + (1 - test) * np.log(1 - p), axis=1))
    model = FactorizedBernoulli.fit(torch.from_numpy(train))
    ours = -model.log_prob(torch.from_numpy(test)).mean().item()
    assert ours == pytest.approx(by_hand, rel=1e-12)
    assert 180 < ours < 230  # the textbook ~206 nats of pixel-wise MLE on MNIST


def test_run_baselines_orders_the_models():
    data = load_data(DataConfig(dataset="digits", binarize="static"))
    rows = {r["model"]: r for r in run_baselines(data)}
    assert set(rows) == {"bernoulli", "gaussian", "mixture", "ppca"}
    assert rows["mixture"]["nll"] < rows["bernoulli"]["nll"]
    for r in rows.values():
        assert r["nll"] > 0 and r["bits_per_dim"] == pytest.approx(r["nll"] / (64 * math.log(2)))
    grey = {r["model"] for r in run_baselines(load_data(DataConfig(dataset="digits")))}
    assert grey == {"gaussian", "ppca"}  # Bernoulli models need binary data
