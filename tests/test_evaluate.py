"""The importance-sampled log-likelihood against closed forms."""
import math

import pytest
import torch
from helpers import DEVICES
from test_objectives import LinearGaussian

from vaelab.objectives import log_likelihood


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


def test_grid_gives_the_exact_log_likelihood_of_a_linear_gaussian():
    from vaelab.studies.posterior import posterior_grid

    lg = LinearGaussian(seed=2)
    model, x = lg.vae(scale_error=1.5), lg.data(n=4)
    res = posterior_grid(model, x, n=301)
    for r, exact in zip(res, lg.log_px(x)):
        assert abs(r["log_px"] - exact.item()) < 1e-3
        # the posterior on the grid is normalised, and q is a different density
        a, b = r["zs"]
        area = (a[1] - a[0]) * (b[1] - b[0])
        assert abs(r["log_post"].double().exp().sum().item() * area.item() - 1) < 1e-3


def test_bounds_are_ordered_for_a_trained_2d_model(tmp_path):
    """ELBO <= IWAE(k=10) <= IWAE(k=1000) <= exact log p(x) by the grid, on real digits."""
    from vaelab.config import Config
    from vaelab.objectives import elbo, iwae_bound
    from vaelab.studies.posterior import posterior_grid
    from vaelab.training.loop import train

    cfg = Config().override(dataset="digits", binarize="static", latent_dim=2, hidden="128",
                            epochs=30, device="cpu")
    r = train(cfg, tmp_path / "run", progress=False)
    x = r.data.test.batch(slice(0, 24))
    torch.manual_seed(0)
    with torch.no_grad():
        e = elbo(r.model, x, k=2000)[1].elbo.mean().item()
        i10 = torch.stack([iwae_bound(r.model, x, 10) for _ in range(200)]).mean().item()
        # the estimate is below log p(x) in expectation, not each time: averaged over 8 draws
        # (one draw landed 0.021 above the grid for a tight GELU + moving-average model)
        i1000 = torch.stack([log_likelihood(r.model, x, k=1000, seed=s)
                             for s in range(8)]).mean().item()
    exact = sum(g["log_px"] for g in posterior_grid(r.model, x)) / len(x)
    assert e < i10 < i1000 < exact + 0.02, (e, i10, i1000, exact)
    assert exact - i1000 < 0.5 * (exact - e)  # k = 1000 closes most of the gap


def test_active_units_and_collapse_warning():
    from vaelab.studies.evaluate import latent_diagnostics

    lg = LinearGaussian()
    x = lg.data(n=300)
    good = latent_diagnostics(lg.vae(), x)
    assert good["active_units"] == 2 and good["warnings"] == []
    # KL per dimension, analytic: 1/2 (mu^2 + s^2 - 1 - log s^2), averaged over x
    q = lg.vae().encode(x)
    by_hand = 0.5 * (q.mean ** 2 + q.variance - 1 - q.variance.log()).mean(0)
    assert torch.allclose(torch.tensor(good["kl_per_dim"], dtype=torch.float64), by_hand)
    collapsed = lg.vae()
    with torch.no_grad():
        collapsed.encoder[1].weight.zero_()  # q(z|x) no longer depends on x
    bad = latent_diagnostics(collapsed, x)
    assert bad["active_units"] == 0 and "posterior collapse" in bad["warnings"][0]


def test_a_mixture_prior_has_no_per_dimension_kl_and_says_so_in_strict_json():
    """A VampPrior's KL has no per-dimension closed form: null, not NaN (which strict JSON
    parsers refuse); the report and explorer then rank its dimensions by the variance of
    their posterior means and label them so (not "KL 0.00" on every row, in index order)."""
    import json

    from vaelab.studies.evaluate import latent_diagnostics, ranked_dimensions

    model, x = _fresh("vamp")
    diag = latent_diagnostics(model, x)
    assert diag["kl_per_dim"] == [None] * 6
    json.loads(json.dumps(diag, allow_nan=False))
    order, labels = ranked_dimensions(diag)
    var = diag["posterior_mean_var"]
    assert sorted(order) == list(range(6)) and len(set(var)) == 6
    assert [var[d] for d in order] == sorted(var, reverse=True)
    assert labels == [f"var {v:.2f}" for v in var]
    normal = latent_diagnostics(_fresh()[0], x)
    order, labels = ranked_dimensions(normal)
    kl = normal["kl_per_dim"]
    assert all(v > 0 for v in kl) and [kl[d] for d in order] == sorted(kl, reverse=True)
    assert labels == [f"KL {v:.2f}" for v in kl]


def _fresh(prior: str = "normal", layers: int = 1):
    from vaelab.config import Config
    from vaelab.models.vae import VAE

    torch.manual_seed(0)
    cfg = Config().override(hidden="64,32", latent_dim=6, activation="gelu", prior=prior,
                            prior_components=5, layers=layers, likelihood="bernoulli").model
    model = VAE.from_config(cfg, (1, 28, 28)).eval()
    x = (torch.rand(7, 1, 28, 28) < 0.3).float()
    return model, x


@pytest.mark.parametrize("prior,bf16", [("normal", False), ("vamp", True)])
def test_compiled_log_likelihood_is_the_eager_one(prior, bf16):
    """Chunks of 3 images x 5 samples over k = 37: full and shorter chunks, a shorter
    last batch; the same samples, so the same numbers up to rounding."""
    model, x = _fresh(prior)
    args = dict(k=37, batch_size=3, budget=3 * 5 * 784, seed=4, bf16=bf16)
    eager = log_likelihood(model, x, **args)
    compiled = log_likelihood(model, x, compiled=True, **args)
    assert eager.shape == compiled.shape == (7,)
    assert torch.allclose(eager, compiled, rtol=0, atol=1e-3 if bf16 else 1e-4)
    assert not torch.equal(eager, log_likelihood(model, x, **{**args, "seed": 5}))


def test_a_hierarchy_is_evaluated_eagerly_and_a_failed_compile_falls_back(caplog):
    import torch._inductor.config as inductor

    from vaelab.objectives import compiled_decoder_log_prob

    model, x = _fresh(layers=2)
    assert compiled_decoder_log_prob(model) is None  # its decoder reads its prior's walk
    assert torch.equal(log_likelihood(model, x, k=9, compiled=True),
                       log_likelihood(model, x, k=9))
    model, x = _fresh()
    torch._dynamo.reset()
    with pytest.MonkeyPatch.context() as mp, caplog.at_level("WARNING"):
        mp.setattr(inductor.cpp, "cxx", ("/nonexistent/c++",))  # no compiler on this machine
        got = log_likelihood(model, x, k=9, compiled=True)
    torch._dynamo.reset()
    assert torch.allclose(got, log_likelihood(model, x, k=9), rtol=0, atol=1e-4)
    assert "compiling log p(x|z) failed" in caplog.text


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers", [1, 2])
def test_an_images_estimate_does_not_depend_on_batches_chunks_or_processes(layers, device):
    """Each image draws its codes from its own stream: the same numbers whether it is
    estimated in a batch of 7 or of 3, in chunks of 5 samples or of all 1500 (crossing the
    streams' blocks of 1024), or as image 4 of the data set in a second process's share.
    On a CUDA device the streams are drawn there (the device's generator)."""
    model, x = _fresh(layers=layers)
    model, x = model.to(device), x.to(device)
    whole = log_likelihood(model, x, k=1500, batch_size=7)
    assert torch.allclose(whole, log_likelihood(model, x, k=1500, batch_size=3,
                                                budget=3 * 5 * 784), rtol=0, atol=1e-3)
    shared = torch.cat([log_likelihood(model, x[:4], k=1500),
                        log_likelihood(model, x[4:], k=1500, first=4)])
    assert torch.allclose(whole, shared, rtol=0, atol=1e-3)  # (float32 sums of ~545 nats)
    # and the streams are the images' own: another seed, or another place, other numbers
    assert not torch.allclose(whole, log_likelihood(model, x, k=1500, seed=1), atol=1e-2)
    assert not torch.allclose(whole[4:], log_likelihood(model, x[4:], k=1500), atol=1e-2)
