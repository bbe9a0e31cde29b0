"""Evaluation of a trained model on a split: the ELBO and its terms, the importance-sampled
log-likelihood, and latent diagnostics. Returns plain dicts; printing is the CLI's job.

Importance sampling (Burda et al. 2016, the literature's protocol with k = 5000):

    log p(x) ~= log (1/k) sum_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)

a consistent estimator (biased low, by at most the ELBO's gap, and -> log p(x) as k grows).
It is computed for many images at once as log-weights of shape (k, B), chunked over k so
that a chunk's decoder output fits a memory budget, and combined with a running logsumexp.
"""
from __future__ import annotations

import math

import torch

from ..data.splits import Data, Split
from ..devices import SINGLE, World
from ..models.vae import VAE
from ..noise import seeded
from ..objectives import bits_per_dim, elbo_over, log_weights, mean_stderr

Tensor = torch.Tensor

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: unit d is active if Cov_x(E_q[z_d]) > 0.01
COLLAPSE_FRACTION = 0.5  # warn when fewer than this share of the latent units are active


def default_budget(device: torch.device) -> int:
    """Floats per chunk: cache-sized on a CPU (larger chunks only add page faults; measured
    in benchmarks/eval_speed.py), an eighth of the free memory on a GPU."""
    if device.type == "cuda":
        return max(1 << 22, torch.cuda.mem_get_info(device)[0] // (4 * 8))
    return 1 << 22


def _chunk(model: VAE, k: int, batch: int, budget: int) -> int:
    """Samples per chunk so that (chunk, batch, widest layer) floats stay within budget."""
    c, h, w = model.image_shape
    widest = max([model.likelihood.out_channels(c) * h * w,
                  model.prior.floats_per_code] +  # a mixture prior's (K, L)
                 [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)])
    return max(1, min(k, budget // (batch * widest)))


def _batches(model: VAE, data: Split | Tensor, batch_size: int, labels: Tensor | None = None):
    """(x, y) pairs of a split or of a tensor of images; y is None unless the model is
    conditional (then the split's labels, or ``labels``)."""
    if isinstance(data, Split):
        if model.classes:
            yield from data.batches(batch_size, labels=True)
        else:
            yield from ((x, None) for x in data.batches(batch_size))
        return
    if model.classes and labels is None:
        raise ValueError("a conditional model needs the labels of the images")
    for i in range(0, len(data), batch_size):
        yield data[i:i + batch_size], None if labels is None else labels[i:i + batch_size]


@torch.no_grad()
def log_likelihood(model: VAE, data: Split | Tensor, k: int = 5000, batch_size: int = 100,
                   seed: int = 0, budget: int | None = None, progress: bool = False,
                   labels: Tensor | None = None) -> Tensor:
    """Importance-sampled log p(x) in nats for every image of ``data`` (a split or a
    tensor of images), shape (N,). For a conditional model log p(x|y), with the split's
    labels or ``labels`` (N,)."""
    model.eval()
    out = []
    chunk = _chunk(model, k, batch_size, budget or default_budget(model.device))
    from tqdm.auto import tqdm

    with seeded(seed, model.device):
        bar = tqdm(total=len(data), desc=f"log p(x), k={k}", unit="img",
                   disable=None if progress else True, leave=False)
        for x, y in _batches(model, data, batch_size, labels):
            acc = torch.full((x.shape[0],), -math.inf, device=x.device)
            for start in range(0, k, chunk):
                lw = log_weights(model, x, min(chunk, k - start), y).float()  # (kc, B)
                acc = torch.logaddexp(acc, torch.logsumexp(lw, dim=0))
            out.append(acc - math.log(k))
            bar.update(x.shape[0])
        bar.close()
    return torch.cat(out) if out else torch.zeros(0, device=model.device)


@torch.no_grad()
def latent_diagnostics(model: VAE, data: Split | Tensor, batch_size: int = 1000) -> dict:
    """KL(q(z|x) || p(z)) per latent dimension (mean over x), and the active units."""
    model.eval()
    means, kls = [], []
    prior = model.prior()
    for x, y in _batches(model, data, batch_size):
        q = model.encode(x, y)
        means.append(q.mean)
        try:  # per-dimension KL: analytic where the prior factorizes like q
            kls.append(torch.distributions.kl_divergence(q.base_dist, prior.base_dist))
        except (NotImplementedError, AttributeError):
            kls.append(torch.full_like(q.mean, math.nan))
    mu = torch.cat(means)  # (N, L)
    var = mu.var(0) if len(mu) > 1 else torch.zeros(mu.shape[1], device=mu.device)
    kl_per_dim = torch.cat(kls).mean(0)
    active, dims = int((var > ACTIVE_THRESHOLD).sum()), mu.shape[1]
    warnings = []
    if active < COLLAPSE_FRACTION * dims:
        warnings.append(f"posterior collapse: only {active} of {dims} latent dimensions are "
                        f"active (Cov_x E_q[z_d] > {ACTIVE_THRESHOLD}); the others carry no "
                        "information about x. KL warm-up, free bits or a smaller latent help.")
    return {"kl_per_dim": kl_per_dim.tolist(), "posterior_mean_var": var.tolist(),
            "active_units": active, "latent_dim": dims, "warnings": warnings}


@torch.no_grad()
def evaluate(model: VAE, data: Data, split: str = "test", batch_size: int = 1000,
             seed: int = 0, k: int = 0, progress: bool = False, world: World = SINGLE) -> dict:
    """ELBO terms of ``model`` on a split and, with ``k`` > 0, the importance-sampled
    negative log-likelihood ``nll`` with its standard error over examples. Seeded; the
    caller's RNG is left untouched.

    ``elbo`` is a lower bound on log p(x) (nats per example, <= 0 for discrete data);
    ``bits_per_dim`` is ``-elbo / (D ln 2)``. For a continuous likelihood (``discrete`` is
    False) these are densities on [0, 1]^D, not probabilities of the 8-bit data.

    Over several processes (``world``), the ELBO's batches and the importance-sampled
    images are shared out among the ranks (each with its own seed, ``seed + rank``)."""
    s = data.split(split)
    model.eval()
    with seeded(seed, model.device):
        res = elbo_over(model, s.batches(batch_size, labels=model.classes > 0, world=world),
                        world=world)
    dims = math.prod(data.image_shape)
    discrete = model.likelihood.discrete
    out = {"dataset": data.name, "split": split, "n": res["n"], "elbo": res["elbo"],
           "recon": res["recon"], "kl": res["kl"],
           "bits_per_dim": bits_per_dim(-res["elbo"], dims, discrete),
           "dims": dims, "likelihood": model.likelihood.name, "discrete": discrete,
           "conditional": model.classes > 0}
    out.update(latent_diagnostics(model, s, batch_size))
    if model.layers > 1:  # a hierarchy: KL of each stochastic layer, top first
        with seeded(seed, model.device):
            out["kl_per_layer"] = torch.cat([model.layer_kl(x) for x in s.batches(batch_size)]
                                            ).mean(0).tolist()
    if not discrete:
        out["warnings"].insert(0, (
            f"the {model.likelihood.name} likelihood is a density on [0, 1]^{dims}: its "
            "log-likelihoods are densities, not probabilities of the discrete data, and do not "
            "compare with published bits/dim (not reported). Train with --likelihood "
            "dgaussian for a discrete likelihood of grey images."))
    if k > 0:
        mine = s.subset(slice(*world.part(len(s))))
        log_px = world.gather(log_likelihood(model, mine, k, seed=seed + world.rank,
                                             progress=progress and world.main))
        nll, se = mean_stderr(-log_px)
        out.update(k=k, nll=nll, nll_stderr=se,
                   nll_bits_per_dim=bits_per_dim(nll, dims, discrete), gap=-nll - res["elbo"])
    return out
