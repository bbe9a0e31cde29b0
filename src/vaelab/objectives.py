"""The ELBO, in one place, written like the math.

    log p(x) >= ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z))

estimated with the reparameterization trick z = mu + sigma * eps (Kingma & Welling 2014),
with the analytic KL where ``torch.distributions`` has one and a Monte-Carlo estimate
E_q[log q(z|x) - log p(z)] otherwise. With k samples, the importance-weighted bound
(Burda et al. 2016) log (1/k) sum_k p(x, z_k) / q(z_k|x) is tighter and -> log p(x).

Units: every term is summed over pixels and latent dimensions and is per example (shape
``(B,)``); losses are means over examples. Reported ELBOs never include beta.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.distributions import Distribution, Independent, Normal
from torch.distributions import kl_divergence as _registered_kl

from .devices import SINGLE, World, fast_bf16_everywhere
from .noise import ExampleStreams, seeded

log = logging.getLogger(__name__)

Tensor = torch.Tensor


@dataclass
class Terms:
    """Per-example terms, each of shape (B,), in nats."""

    elbo: Tensor
    recon: Tensor  # E_q log p(x|z)
    kl: Tensor  # KL(q(z|x) || p(z))


def _analytic_kl(q: Distribution, p: Distribution) -> Tensor:
    """torch.distributions' closed-form KL; for (independent) Normals computed here, the
    same formula without the registry's dispatch, which torch.compile cannot trace (a
    graph break in every training step)."""
    if isinstance(q, Independent) and isinstance(p, Independent) and \
            isinstance(q.base_dist, Normal) and isinstance(p.base_dist, Normal) and \
            q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims:
        kl = _analytic_kl(q.base_dist, p.base_dist)
        n = q.reinterpreted_batch_ndims
        return kl.reshape(kl.shape[:-n] + (-1,)).sum(-1) if n else kl
    if isinstance(q, Normal) and isinstance(p, Normal):
        var_ratio = (q.scale / p.scale).pow(2)
        t1 = ((q.loc - p.loc) / p.scale).pow(2)
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    return _registered_kl(q, p)


def kl_divergence(q: Distribution, p: Distribution, z: Tensor | None = None,
                  log_qp: Tensor | None = None) -> Tensor:
    """KL(q || p) per example, shape q.batch_shape. Analytic if registered in
    ``torch.distributions``; otherwise the Monte-Carlo mean over samples ``z`` (k, B, L)
    of log q(z) - log p(z) (``log_qp``, where the caller has computed it already)."""
    try:
        return _analytic_kl(q, p)
    except NotImplementedError:
        if log_qp is None:
            z = q.rsample((1,)) if z is None else z
            log_qp = q.log_prob(z) - p.log_prob(z)
        return log_qp.mean(0)


def elbo(model, x: Tensor, k: int = 1, beta: float | Tensor = 1.0, y: Tensor | None = None, *,
         sample: bool = True, free_bits: float = 0.0, iwae: bool = False,
         kl_balance: bool = False, dreg: bool = False) -> tuple[Tensor, Terms]:
    """A training loss and the per-example ELBO terms (always with beta = 1), from k
    reparameterized samples z ~ q(z|x):

    * ``-mean_B(recon - beta * KL)``, the (beta-weighted) negative ELBO;
    * ``free_bits`` = lambda > 0: the KL term is sum_d max(lambda, mean_B KL_d) over latent
      dimensions d (the total KL against lambda * L where it does not factorize);
    * ``iwae``: the negative importance-weighted bound -mean_B log (1/k) sum_k w_k; with
      ``dreg`` its doubly reparameterized gradient (Tucker et al. 2019): the encoder's
      gradient through the codes weighted by the normalized weights squared, log q taken
      with its parameters held (the score term, zero in expectation, dropped); the same
      value, the same gradient for everything else, and for the encoder the same mean;
    * ``kl_balance`` (a hierarchy, while beta < 1): the KL term is
      sum_t gamma_t mean_B KL_t with gamma_t proportional to |mean_B KL_t| + 0.01 and mean 1
      over the layers (no gradient through gamma; Vahdat & Kautz 2020);
    * ``sample=False``: z = E_q[z|x]; with beta = 0 a deterministic autoencoder's loss
      -log p(x | z = E_q[z|x]) (its terms are then not an ELBO).

    With labels y (B,) of a conditional model: the bounds on log p(x|y)."""
    q = model.encode(x, y)  # batch (B,), event (L,)
    z = q.rsample((k,)) if sample else q.mean.expand(k, *q.mean.shape)  # (k, B, L)
    prior = model.prior()
    log_px_z = model.decode(z, y).log_prob(x)  # (k, B)
    recon = log_px_z.mean(0)  # (B,)
    if iwae:
        log_pq = prior.log_prob(z) - (_held(q) if dreg else q).log_prob(z)  # (k, B)
        kl = kl_divergence(q, prior, z, log_qp=-log_pq)  # (its value: q held or not)
        log_w = log_px_z + log_pq
        if dreg and z.requires_grad:  # d/dz of sum w~ log w, times w~ once more
            w2 = torch.softmax(log_w.detach(), 0).unsqueeze(-1)
            z.register_hook(lambda g: g * w2)
        loss = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
    elif kl_balance and model.layers > 1 and float(beta) < 1:
        kl_t = q.layer_log_ratios(prior, z).mean(0)  # (B, T)
        kl = kl_t.sum(-1)
        per_layer = kl_t.mean(0)  # (T,)
        gamma = per_layer.abs().detach() + 0.01
        loss = -(recon.mean() - beta * (per_layer * gamma / gamma.mean()).sum())
    else:
        kl = kl_divergence(q, prior, z)  # (B,)
        loss = -(recon.mean() - beta * _kl_term(q, prior, kl, free_bits))
    return loss, Terms(recon - kl, recon, kl)


def _held(q: Independent) -> Independent:
    """q(z|x) (a diagonal Gaussian) with its parameters held fixed: the same density of z,
    no gradient to the encoder through it (the score term that DReG drops)."""
    base = q.base_dist
    return Independent(Normal(base.loc.detach(), base.scale.detach(), validate_args=False),
                       q.reinterpreted_batch_ndims, validate_args=False)


def _kl_term(q: Distribution, prior: Distribution, kl: Tensor, free_bits: float) -> Tensor:
    """mean_B KL, or with free bits sum_d max(lambda, mean_B KL_d)."""
    if free_bits <= 0:
        return kl.mean()
    try:  # per dimension, where q and p factorize alike
        return _analytic_kl(q.base_dist, prior.base_dist).mean(0).clamp_min(free_bits).sum()
    except (NotImplementedError, AttributeError):
        return kl.mean().clamp_min(free_bits * q.event_shape[0])


def log_weights(model, x: Tensor, k: int, y: Tensor | None = None, bf16: bool = False,
                lik: Callable | None = None) -> Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x); shape (k, B).
    With labels y: the weights of log p(x|y). ``bf16``, ``lik``: see :func:`weights_at`."""
    q = model.encode(x, y)
    return weights_at(model, q, x, q.sample((k,)), y, bf16, lik)  # z: (k, B, L)


def weights_at(model, q, x: Tensor, z: Tensor, y: Tensor | None = None, bf16: bool = False,
               lik: Callable | None = None) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) at given codes z (..., B, L): (..., B),
    in the model's dtype. ``bf16``: the decoder's matrix products in bfloat16 (autocast;
    the log-probabilities themselves in at least float32). ``lik``: the function that
    computes log p(x|z) (:func:`decoder_log_prob`, or its compiled form)."""
    latent = model.prior().log_prob(z) - q.log_prob(z)  # (first: a hierarchy's walk caches
    lik = (lik or decoder_log_prob)(model, z, x, y, bf16)  # its states)
    return lik.to(latent.dtype) + latent


def decoder_log_prob(model, z: Tensor, x: Tensor, y: Tensor | None = None, bf16: bool = False
                     ) -> Tensor:
    """log p(x|z) (or p(x|y,z)) summed over the pixels, (..., B) for codes (..., B, L);
    ``bf16``: the decoder's matrix products in bfloat16."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        return model.decode(z, y).log_prob(x)


def compiled_decoder_log_prob(model) -> Callable | None:
    """:func:`decoder_log_prob` under ``torch.compile`` (shapes dynamic, so the last,
    shorter chunks compile once), which fuses the pixels' log-probabilities with the
    bfloat16 products' casts: None for a model it does not serve (a hierarchy, whose
    decoder reads the states its prior's walk left). The codes z stay eager samples, so
    the numbers are eager's up to rounding. If compiling fails on first use (no C++
    compiler on this machine, say), it says so once and runs eagerly."""
    if model.layers > 1:
        return None
    compiled = torch.compile(decoder_log_prob, dynamic=True)
    state = {"fn": compiled}

    def run(*args):
        try:
            return state["fn"](*args)
        except Exception as e:  # torch.compile's failures have no common base class
            if state["fn"] is decoder_log_prob:
                raise
            log.warning("compiling log p(x|z) failed (%s: %s); evaluating eagerly",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            state["fn"] = decoder_log_prob
            return decoder_log_prob(*args)
    return run


def iwae_bound(model, x: Tensor, k: int, y: Tensor | None = None) -> Tensor:
    """log (1/k) sum_k w_k, per example (B,): a lower bound on log p(x), tight as k -> inf."""
    return torch.logsumexp(log_weights(model, x, k, y), dim=0) - math.log(k)


def unpack(batch: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """A batch is images x, or (x, labels y) for a conditional model."""
    return batch if isinstance(batch, tuple) else (batch, None)


@torch.no_grad()
def elbo_over(model, batches: Iterable[Tensor | tuple[Tensor, Tensor]], k: int = 1,
              sample: bool = True, iwae_k: int = 0, world: World = SINGLE) -> dict[str, float]:
    """Mean ELBO, reconstruction and KL (nats per example) over an iterable of batches;
    with ``iwae_k`` > 0 also the mean importance-weighted bound with that many samples,
    from the same samples as the ELBO (one encoder and ``iwae_k`` decoder passes per
    image for both: the ELBO is then the mean over those samples, ``k`` is not used).
    Over several processes: the means over every rank's batches."""
    dev = model.device
    sums = torch.zeros(5, dtype=torch.float32 if dev.type == "mps" else torch.float64,
                       device=dev)  # elbo, recon, kl, iwae, number of examples
    for batch in batches:
        x, y = unpack(batch)
        loss, t = elbo(model, x, iwae_k or k, y=y, sample=sample, iwae=iwae_k > 0)
        sums += torch.stack([t.elbo.sum(), t.recon.sum(), t.kl.sum(),
                             -loss * x.shape[0] if iwae_k else t.kl.new_zeros(()),
                             t.kl.new_tensor(x.shape[0])]).to(sums.dtype)
    *sums, n = world.sum(sums).tolist()
    if n == 0:
        return {"elbo": math.nan, "recon": math.nan, "kl": math.nan, "iwae": math.nan, "n": 0}
    e, r, kl, iw = (v / n for v in sums)
    n = int(n)
    return {"elbo": e, "recon": r, "kl": kl, "n": n, **({"iwae": iw} if iwae_k else {})}


def bits_per_dim(nats_per_example: float, dims: int, discrete: bool = True) -> float | None:
    """Negative log-likelihood in bits per dimension: nats / (D ln 2). None for a density
    (``discrete`` False): bits/dim are a unit of probabilities of discrete data."""
    return nats_per_example / (dims * math.log(2)) if discrete else None


def mean_stderr(values: Tensor) -> tuple[float, float]:
    """Mean over examples and its standard error, std / sqrt(n) (0 for one example)."""
    v = values.double()
    se = (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else 0.0
    return v.mean().item(), se


def default_budget(device: torch.device) -> int:
    """Floats per chunk: cache-sized on a CPU (larger chunks only add page faults; measured
    in benchmarks/eval_speed.py), an eighth of the free memory on a GPU."""
    if device.type == "cuda":
        return max(1 << 22, torch.cuda.mem_get_info(device)[0] // (4 * 8))
    return 1 << 22


def _chunk(model, k: int, batch: int, budget: int) -> int:
    """Samples per chunk so that (chunk, batch, widest layer) floats stay within budget."""
    c, h, w = model.image_shape
    widest = max([model.likelihood.out_channels(c) * h * w,
                  model.prior.floats_per_code] +  # a mixture prior's (K, L)
                 [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)])
    return max(1, min(k, budget // (batch * widest)))


def image_batches(model, data, batch_size: int, labels: Tensor | None = None):
    """(x, y) pairs of a split or of a tensor of images; y is None unless the model is
    conditional (then the split's labels, or ``labels``)."""
    if not isinstance(data, Tensor):  # a Split
        if model.classes:
            yield from data.batches(batch_size, labels=True)
        else:
            yield from ((x, None) for x in data.batches(batch_size))
        return
    if model.classes and labels is None:
        raise ValueError("a conditional model needs the labels of the images")
    for i in range(0, len(data), batch_size):
        yield data[i:i + batch_size], None if labels is None else labels[i:i + batch_size]


STREAM_BLOCK = 1024  # samples of an image's stream of codes drawn at a time


BF16_LEVELS = 17  # estimates take bf16 products for likelihoods of at most this many levels:
# binary and the digits' 17 moved the estimate by <= 0.002 nats; over 256 levels the
# decoder's rounded locations and scales moved it by 0.02 (a discretized Gaussian) to 0.03
# (a logistic mixture), so those, and densities, stay float32 (docs/benchmarks.md)


def bf16_estimates(model, world: World = SINGLE) -> bool:
    """Whether importance-sampled estimates of ``model`` take bfloat16 decoder products
    (precision "auto"): a likelihood of at most ``BF16_LEVELS`` levels, on a device whose
    bf16 products measure faster than float32's on every rank (``fast_bf16``)."""
    levels = model.likelihood.levels
    return levels is not None and levels <= BF16_LEVELS and \
        fast_bf16_everywhere(model.device, world)


@torch.no_grad()
def log_likelihood(model, data, k: int = 5000, batch_size: int = 100,
                   seed: int = 0, budget: int | None = None, progress: bool = False,
                   labels: Tensor | None = None, bf16: bool = False, compiled: bool = False,
                   first: int = 0) -> Tensor:
    """Importance-sampled log p(x) in nats for every image of ``data`` (a split or a
    tensor of images), shape (N,): log (1/k) sum_k w_k with the log-weights of
    :func:`log_weights`, chunked over k so that a chunk's decoder output fits ``budget``
    floats, combined by a running logsumexp. Every image's k codes come from its own
    stream (:class:`~vaelab.noise.ExampleStreams`, keyed by ``seed`` and its index,
    ``first`` for the first image of ``data``): an image's estimate is the same, up to
    rounding, whatever the batch size, the budget or the processes it is shared among.
    The caller's RNG is left untouched. For a conditional model log p(x|y), with the
    split's labels or ``labels`` (N,). ``bf16``: the decoder's matrix products in
    bfloat16 (see :func:`weights_at`); ``compiled``: log p(x|z) compiled
    (:func:`compiled_decoder_log_prob`)."""
    model.eval()
    out = []
    chunk = _chunk(model, k, batch_size, budget or default_budget(model.device))
    lik = compiled_decoder_log_prob(model) if compiled else None
    from tqdm.auto import tqdm  # (not at import: vaelab's import stays light)

    with seeded(seed, model.device):
        bar = tqdm(total=len(data), desc=f"log p(x), k={k}", unit="img",
                   disable=None if progress else True, leave=False)
        index = first
        for x, y in image_batches(model, data, batch_size, labels):
            acc = torch.full((x.shape[0],), -math.inf, device=x.device)
            streams = ExampleStreams(seed, index, min(k, STREAM_BLOCK))
            for start in range(0, k, chunk):
                with streams.at(start):
                    lw = log_weights(model, x, min(chunk, k - start), y, bf16, lik).float()
                acc = torch.logaddexp(acc, torch.logsumexp(lw, dim=0))  # lw: (kc, B)
            out.append(acc - math.log(k))
            index += x.shape[0]
            bar.update(x.shape[0])
        bar.close()
    return torch.cat(out) if out else torch.zeros(0, device=model.device)
