"""Bits-back coding of one batch of images with a trained VAE on an ANS stack
(``constriction``'s ``AnsCoder``): BB-ANS (Townsend, Bird & Barber 2019) with K importance
samples, BB-IS (Ruan et al., "Improving Lossless Compression Rates via Monte Carlo
Bits-Back Coding", ICML 2021). Compressing a batch x with K particles:

    z_1 .. z_K ~ Q(z|x)          popped from the stack: the bits that come back
    j ~ w_j / sum_k w_k          popped, w_k = p(x|z_k) p(z_k) / q(z_k|x)
    z_k, k != j                  pushed under Q(z|x)
    x | z_j                      pushed under P(x|z_j)
    z_j                          pushed under P(z)
    j                            pushed, uniform over the K

costs -log (1/K sum_k w_k) per image: the K-sample importance-weighted bound, which
tends to -log p(x) as K grows; K = 1 is BB-ANS's -ELBO. Decompressing runs the steps
backwards (j, z_j under P(z), x under P(x|z_j), the other particles from Q(z|x), then j
and every particle pushed back). The stack must hold the K draws of an image before it
can code it; until it does, images get a *direct* code that pops nothing: z the
posterior's mean on a coarse grid, x pushed under P(x|z), z under P(z).

A hierarchy (top-down inference) draws each particle's z_0, z_1, ... from Q in turn (each
layer's Q depends on x and the layers above), and pushes z_j's layers under P bottom
first, so that decompression draws the top first. (Bit-Swap's interleaving needs a
bottom-up Markov posterior; vaelab's hierarchy infers top-down, which this order serves.)

Everything that sets a probability is computed in float64 from the same tensors, in the
same shapes, on both sides, so compression and decompression see the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..objectives import weights_at
from .latents import Grid, coder_models, decode_layer, encode_layer, layer_walk
from .particles import Coupled, kind
from .pixels import TABLE_FLOATS, pixel_code

Tensor = torch.Tensor
RESERVE = 32  # valid bits a stack must keep after a batch's draws


@dataclass
class Tally:
    """Ideal code lengths of what was coded, in bits (from the model's own log-densities):
    the net cost -log2 (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) of every image coded by bits
    back (the bits pushed, for a direct code), and the bits its draws popped from the
    stack (those the stack must hold before a batch can be coded)."""

    net_bits: list[float] = field(default_factory=list)
    posterior_bits: list[float] = field(default_factory=list)
    exhausted: bool = False  # whether the last batch's draws ran the stack short
    ideal: bool = False  # whether to compute ``net_bits`` at K = 1 (a pass over p(x|z))
    _last: tuple[int, int] = (0, 0)

    def add(self, net: Tensor | None, posterior: Tensor | None, exhausted: bool) -> None:
        if net is not None:
            self.net_bits += net.tolist()
        if posterior is not None:
            self.posterior_bits += posterior.tolist()
        self.exhausted = exhausted
        self._last = (0 if net is None else len(net), 0 if posterior is None else len(posterior))

    def drop_last(self) -> None:
        """Forget the last batch (coded again, smaller)."""
        net, posterior = self._last
        del self.net_bits[len(self.net_bits) - net:]
        del self.posterior_bits[len(self.posterior_bits) - posterior:]


def _floats(x: np.ndarray, levels: int, device) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device) / (levels - 1)


def log_weights(model, xf: Tensor, z: Tensor, bf16: bool = False) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) of particles z (K, B, T*L): (K, B),
    float64, in ``model``'s dtype (the decoder's matrix products in bfloat16 if ``bf16``),
    the decoder run on chunks of particles whose output fits ``TABLE_FLOATS``."""
    K, B = z.shape[:2]
    dtype = next(model.parameters()).dtype
    xf, z = xf.to(dtype), z.to(dtype)
    step = max(1, TABLE_FLOATS // max(1, B * xf[0].numel()))
    q = model.encode(xf)
    return torch.cat([weights_at(model, q, xf, zc, bf16=bf16) for zc in z.split(step)]).double()


def _others(j: np.ndarray, K: int, B: int, device) -> Tensor:
    """(K, B): True where a particle is not the chosen one."""
    mask = torch.ones(K, B, dtype=torch.bool, device=device)
    mask[torch.as_tensor(j, dtype=torch.long), torch.arange(B)] = False
    return mask


def particles(model, q, samples: int, batch: int, grid: Grid, coupled: bool):
    """The particles of a batch (:func:`particles.kind`)."""
    return kind(samples, coupled)(grid, layer_walk(q, model),
                                  (samples, batch, model.layers, model.latent_dim // model.layers))


def _pick(z: Tensor, j: np.ndarray) -> Tensor:
    """The chosen particle of every image: (B, T*L)."""
    return z[torch.as_tensor(j, dtype=torch.long), torch.arange(z.shape[1])]


@torch.no_grad()
def encode_batch(coder, model, x: np.ndarray, levels: int, grid: Grid, tally: Tally,
                 samples: int = 1, coupled: bool = False, weigh=None, bf16: bool = False
                 ) -> None:
    """Push a batch of images (B, C, H, W) of integer levels onto the stack ``coder``,
    with ``samples`` particles per image, their log-weights computed by ``weigh`` (a
    float32 copy of the model for speed, its decoder in bfloat16 if ``bf16``; the model
    itself by default)."""
    K, B, T = samples, len(x), model.layers
    dim = model.latent_dim // T
    xf = _floats(x, levels, model.device)
    q = model.encode(xf)
    parts = particles(model, q, K, B, grid, coupled)
    z = torch.zeros(K, B, T * dim, dtype=torch.float64, device=model.device)
    bins = [np.zeros((K, B, dim), np.int32) for _ in range(T)]
    parts.draw(coder, z, bins)  # the bits back
    j, net = np.zeros(B, np.int32), None
    if K > 1:
        lw = log_weights(weigh or model, xf, z, bf16)
        j = coder.decode(coder_models().Categorical(perfect=False),
                         torch.softmax(lw, 0).T.contiguous().cpu().numpy())
        net = -(torch.logsumexp(lw, 0) - math.log(K)) / math.log(2)
    # a draw is a sample of Q only while the stack holds 24 bits to take its quantile
    # from: below that, the stack ran short of the bits it had to give back
    exhausted = coder.num_valid_bits() < RESERVE
    if K > 1:
        parts.keep(coder, z, bins, j, _others(j, K, B, z.device))
    zj = _pick(z, j)
    px = model.decode(zj)
    pixel_code(model.likelihood.name).encode(coder, px, x, levels)
    prior = model.prior()
    layers = layer_walk(prior, model)(zj)
    for t in reversed(range(T)):  # bottom first, so that the top is drawn first
        encode_layer(coder, grid, layers[t], bins[t][j, np.arange(B)].reshape(-1),
                     zj[:, t * dim:(t + 1) * dim])
    if K > 1:
        coder.encode_reverse(j, coder_models().Uniform(K))
    elif tally.ideal:
        net = -(px.log_prob(xf) + prior.log_prob(zj) - q.log_prob(zj)) / math.log(2)
    if isinstance(parts, Coupled):  # the bits the draws took from the stack, per image
        popped = torch.full((B,), float(parts.bits(K, T * dim, 0)))
    else:
        popped = -q.log_prob(z).sum(0) / math.log(2) - K * T * dim * math.log2(grid.delta)
    tally.add(net, popped + math.log2(K), exhausted)


@torch.no_grad()
def decode_batch(coder, model, batch: int, shape: tuple[int, int, int], levels: int,
                 grid: Grid, samples: int = 1, coupled: bool = False, weigh=None,
                 bf16: bool = False) -> np.ndarray:
    """Pop a batch of ``batch`` images (B, C, H, W) of integer levels from the stack."""
    K, B, T = samples, batch, model.layers
    dim = model.latent_dim // T
    j = coder.decode(coder_models().Uniform(K), B) if K > 1 else np.zeros(B, np.int32)
    prior = layer_walk(model.prior(), model)
    zj = torch.zeros(B, T * dim, dtype=torch.float64, device=model.device)
    bins = [np.zeros((K, B, dim), np.int32) for _ in range(T)]
    for t in range(T):
        i, zj[:, t * dim:(t + 1) * dim] = decode_layer(coder, grid, prior(zj.clone())[t], B,
                                                       dim, zj.device)
        bins[t][j, np.arange(B)] = i.reshape(B, dim)
    px = model.decode(zj)
    x = pixel_code(model.likelihood.name).decode(coder, px, (B, *shape), levels)
    xf = _floats(x, levels, model.device)
    parts = particles(model, model.encode(xf), K, B, grid, coupled)
    z = torch.zeros(K, B, T * dim, dtype=torch.float64, device=model.device)
    z[torch.as_tensor(j, dtype=torch.long), torch.arange(B)] = zj
    if K > 1:
        parts.recover(coder, z, bins, j, _others(j, K, B, z.device))
        lw = log_weights(weigh or model, xf, z, bf16)
        coder.encode_reverse(j, coder_models().Categorical(perfect=False),
                             torch.softmax(lw, 0).T.contiguous().cpu().numpy())
    parts.give_back(coder, z, bins)  # the bits that compression took
    return x.astype(np.uint8)


@torch.no_grad()
def encode_direct(coder, model, x: np.ndarray, levels: int, grid: Grid, tally: Tally) -> None:
    """Push a batch of images without popping anything: z the posterior's mean on
    ``grid`` (layer by layer), x under P(x|z), z under P(z)."""
    B, T = len(x), model.layers
    dim = model.latent_dim // T
    before = coder.num_valid_bits()
    xf = _floats(x, levels, model.device)
    post = layer_walk(model.encode(xf), model)
    z = torch.zeros(B, T * dim, dtype=torch.float64, device=model.device)
    bins = []
    for t in range(T):
        bins.append(grid.nearest(post(z.clone())[t].mean.expand(B, dim)))
        z[:, t * dim:(t + 1) * dim] = grid.values(bins[-1], (B, dim), z.device)
    pixel_code(model.likelihood.name).encode(coder, model.decode(z), x, levels)
    layers = layer_walk(model.prior(), model)(z)
    for t in reversed(range(T)):
        encode_layer(coder, grid, layers[t], bins[t], z[:, t * dim:(t + 1) * dim],
                     direct=True)
    pushed = (coder.num_valid_bits() - before) / B
    tally.add(torch.full((B,), float(pushed)), None, False)


@torch.no_grad()
def decode_direct(coder, model, batch: int, shape: tuple[int, int, int], levels: int,
                  grid: Grid) -> np.ndarray:
    """Pop a batch that :func:`encode_direct` pushed."""
    T = model.layers
    dim = model.latent_dim // T
    prior = layer_walk(model.prior(), model)
    z = torch.zeros(batch, T * dim, dtype=torch.float64, device=model.device)
    for t in range(T):
        _, z[:, t * dim:(t + 1) * dim] = decode_layer(coder, grid, prior(z.clone())[t], batch,
                                                      dim, z.device, direct=True)
    x = pixel_code(model.likelihood.name).decode(coder, model.decode(z), (batch, *shape), levels)
    return x.astype(np.uint8)
