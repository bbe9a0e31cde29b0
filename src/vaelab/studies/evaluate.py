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

from ..config import PRECISIONS, SWITCHES, check_choice
from ..data.splits import Data, Split
from ..devices import SINGLE, World
from ..models.vae import VAE
from ..noise import seeded
from ..objectives import (bf16_estimates, bits_per_dim, elbo_over, image_batches,
                          log_likelihood, mean_stderr)

Tensor = torch.Tensor

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: unit d is active if Cov_x(E_q[z_d]) > 0.01
COLLAPSE_FRACTION = 0.5  # warn when fewer than this share of the latent units are active


@torch.no_grad()
def latent_diagnostics(model: VAE, data: Split | Tensor, batch_size: int = 1000) -> dict:
    """KL(q(z|x) || p(z)) per latent dimension (mean over x), and the active units."""
    model.eval()
    means, kls = [], []
    prior = model.prior()
    for x, y in image_batches(model, data, batch_size):
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
    # null (None) where the prior has no per-dimension closed form (a mixture): strict JSON
    return {"kl_per_dim": [None if math.isnan(v) else v for v in kl_per_dim.tolist()],
            "posterior_mean_var": var.tolist(), "active_units": active, "latent_dim": dims,
            "warnings": warnings}


def ranked_dimensions(diagnostics: dict) -> tuple[list[int], list[str]]:
    """The latent dimensions of :func:`latent_diagnostics`, most informative first, and a
    label of each (by index): by their KL where the prior gives one per dimension ("KL
    1.23"), else (a mixture prior) by the variance of their posterior means over the data,
    the active-units measure ("var 0.87")."""
    kl = diagnostics["kl_per_dim"]
    if all(v is not None for v in kl):
        score, name = kl, "KL"
    else:
        score, name = diagnostics["posterior_mean_var"], "var"
    order = sorted(range(len(score)), key=lambda d: -score[d])
    return order, [f"{name} {v:.2f}" for v in score]


COMPILE_FROM = 10_000_000  # decoder passes (images x k): 1-2 minutes of 2 CPU cores, which
# compiling (4-5 s) makes 1.05x (fp32) to 1.12x (bf16) faster (docs/benchmarks.md)


@torch.no_grad()
def evaluate(model: VAE, data: Data, split: str = "test", batch_size: int = 1000,
             seed: int = 0, k: int = 0, progress: bool = False, world: World = SINGLE,
             precision: str = "auto", compile: str = "auto") -> dict:
    """ELBO terms of ``model`` on a split and, with ``k`` > 0, the importance-sampled
    negative log-likelihood ``nll`` with its standard error over examples. Seeded; the
    caller's RNG is left untouched.

    ``elbo`` is a lower bound on log p(x) (nats per example, <= 0 for discrete data);
    ``bits_per_dim`` is ``-elbo / (D ln 2)``. For a continuous likelihood (``discrete`` is
    False) these are densities on [0, 1]^D, not probabilities of the 8-bit data.

    Over several processes (``world``), the ELBO's batches and the importance-sampled
    images are shared out among the ranks (each image with its own stream of codes, so the
    estimate is the one process's, up to rounding).

    ``precision`` of the importance-sampled decoder passes: "fp32", "bf16" (matrix
    products in bfloat16, log-probabilities in float32), or "auto" (the default: bf16
    where :func:`~vaelab.objectives.bf16_estimates` says so; the estimate moved by
    0.0002-0.002 nats there on the documented runs, docs/benchmarks.md).
    ``compile`` them (the decoder and the pixels' log-probabilities,
    :func:`~vaelab.objectives.compiled_decoder_log_prob`): "yes", "no", or "auto" (on a
    CPU, for at least ``COMPILE_FROM`` decoder passes, where compiling's seconds pay)."""
    check_choice("precision", precision, PRECISIONS)
    check_choice("compile", compile, SWITCHES)
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
        nll, se, how = _nll(model, s, k, seed, progress, world, precision, compile)
        out.update(k=k, nll=nll, nll_stderr=se, **how,
                   nll_bits_per_dim=bits_per_dim(nll, dims, discrete), gap=-nll - res["elbo"])
    return out


def _nll(model: VAE, s, k: int, seed: int, progress: bool, world: World, precision: str,
         compile: str) -> tuple[float, float, dict]:
    """-log p(x) by k importance samples over split ``s`` (this rank's share of it): its
    mean, standard error, and how it was computed (precision, compiled)."""
    part = world.part(len(s))
    mine = s.subset(slice(*part))
    bf16 = precision == "bf16" or (precision == "auto" and bf16_estimates(model, world))
    compiled = compile == "yes" or (compile == "auto" and model.device.type == "cpu"
                                    and len(mine) * k >= COMPILE_FROM)
    log_px = world.gather(log_likelihood(model, mine, k, seed=seed, first=part[0],
                                         progress=progress and world.main, bf16=bf16,
                                         compiled=compiled))
    nll, se = mean_stderr(-log_px)
    return nll, se, {"precision": "bf16" if bf16 else "fp32", "compiled": compiled}
