"""The importance-sampled log-likelihood against closed forms."""
import math

import torch

from vaelab.evaluate import log_likelihood
from test_objectives import LinearGaussian


def test_exact_posterior_gives_exact_log_likelihood():
    lg = LinearGaussian()
    x = lg.data(n=50)
    ll = log_likelihood(lg.vae(), x, k=7, batch_size=16)  # chunks and batches don't matter
    assert ll.shape == (50,)
    assert torch.allclose(ll.double(), lg.log_px(x), atol=1e-4)


def test_estimate_converges_to_closed_form_and_is_seeded():
    """With a poor encoder the estimate rises with k towards log p(x) (PPCA closed form)."""
    lg = LinearGaussian(seed=5)
    model, x = lg.vae(scale_error=2.0, loc_shift=0.5), lg.data(n=200)
    exact = lg.log_px(x).mean().item()
    est = {k: log_likelihood(model, x, k=k, batch_size=64, budget=1 << 14).mean().item()
           for k in (1, 10, 100, 5000)}
    assert est[1] < est[10] < est[100] < est[5000] < exact + 0.01
    assert exact - est[5000] < 0.02 and exact - est[1] > 0.3
    a = log_likelihood(model, x[:10], k=50, seed=3)
    assert torch.equal(a, log_likelihood(model, x[:10], k=50, seed=3))
    assert not torch.equal(a, log_likelihood(model, x[:10], k=50, seed=4))
    assert math.isfinite(a.sum().item())
