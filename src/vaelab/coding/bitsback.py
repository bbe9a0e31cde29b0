"""Bits-back coding of one batch of images with a trained VAE on an ANS stack (Townsend,
Bird & Barber 2019, BB-ANS), the entropy coder being ``constriction``'s ``AnsCoder``.

Compressing a batch x:

    z ~ Q(z|x)   decoded from the stack: the bits that come back
    x | z        encoded under P(x|z), exactly the likelihood's ``log_prob``
    z            encoded under P(z)

and decompressing runs it backwards (decode z under P(z), x under P(x|z), encode z under
Q(z|x)). Latents live on a grid of bins of width ``delta`` on [-range, range] in every
dimension; Q and every Gaussian of P are ``QuantizedGaussian`` models over that grid (the
library's own, vectorized). Bins of equal width rather than of equal prior mass, as in
Bit-Swap (Kingma et al. 2019): one grid serves every prior, the conditional priors of a
hierarchy included, and each code costs log Q(i) - log P(i) -> log q(z) - log p(z) as
delta -> 0.

* A mixture prior (``mog``, the VampPrior) is coded through its component k, itself by
  bits back: z under P(z) = sum_k pi_k P(z|k) is "decode k ~ P(k|z), encode z under P(z|k),
  encode k under pi", which costs -log P(z) exactly when P(k|z) is the posterior over the
  components.
* A hierarchy (top-down inference) decodes z_0, z_1, ... from Q in turn (each layer's Q
  depends on x and the layers above), encodes x, then the layers under P bottom first, so
  that decompression draws the top first. (Bit-Swap's interleaving needs a bottom-up
  Markov posterior; vaelab's hierarchy infers top-down, which BB-ANS's order serves.)

Everything that sets a probability is computed in float64 from the same tensors on both
sides, batch by batch, so compression and decompression see the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.distributions import Distribution

from ..errors import ConfigError
from ..models.distributions import (CoupledLogisticMixture, GaussianMixture,
                                    discretized_logistic_log_prob)
from ..registry import Registry

Tensor = torch.Tensor
TABLE_FLOATS = 1 << 22  # floats of probability tables computed at once


def entropy_coder():
    """The ``constriction`` package (the optional extra ``vaelab[compress]``)."""
    try:
        import constriction
    except ImportError:
        raise ConfigError("compression needs the constriction package: pip install "
                          "'vaelab[compress]'") from None
    return constriction


def _model():
    return entropy_coder().stream.model


@dataclass
class Grid:
    """The latent grid: integer bins i in [-n, n] stand for z = i * delta.

    The prior's Gaussians are coded over the whole grid. A posterior's draws are coded
    over a window of +-W bins around its mean (W at least 6 standard deviations, on a
    ladder of widths 2^(k/4)), never over the whole grid: the coder gives every symbol of
    its alphabet a probability of at least 2^-24, and a draw from a narrow posterior over
    a wide alphabet would now and then land in a far, meaningless bin."""

    delta: float
    range: float
    WIDTHS = 6.0  # a posterior's window: +-6 standard deviations (beyond: 2e-9 of its mass)

    @property
    def n(self) -> int:
        return int(round(self.range / self.delta))

    def family(self):
        return _model().QuantizedGaussian(-self.n, self.n)

    def params(self, loc: Tensor, scale: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of a QuantizedGaussian over bins, flattened (float64)."""
        return (_np(loc / self.delta), _np(scale / self.delta).clip(1e-12))

    def windows(self, loc: Tensor, scale: Tensor):
        """Per window width W (ascending): the flat positions coded with it, their
        centers c and the QuantizedGaussian parameters of the offsets i - c in [-W, W]."""
        mean, std = self.params(loc, scale)
        k = np.ceil(4 * np.log2(np.maximum(self.WIDTHS * std, 1.0))).astype(np.int64)
        k = np.minimum(k, int(math.floor(4 * math.log2(self.n))))
        for kk in np.unique(k):
            at = np.nonzero(k == kk)[0]
            w = int(math.ceil(2.0 ** (int(kk) / 4)))
            c = np.clip(np.round(mean[at]), -self.n + w, self.n - w)
            yield at, c.astype(np.int64), _model().QuantizedGaussian(-w, w), mean[at] - c, std[at]

    def values(self, i: np.ndarray, batch: int, dim: int, device) -> Tensor:
        """Bins (batch * dim,) -> the codes z = i * delta they stand for, (batch, dim)."""
        return torch.as_tensor(i, dtype=torch.float64, device=device).reshape(batch, dim) \
            * self.delta

    def draw(self, coder, loc: Tensor, scale: Tensor) -> np.ndarray:
        """Pop bins (flat) from a posterior N(loc, scale^2)."""
        out = np.empty(loc.numel(), np.int64)
        for at, c, family, mean, std in self.windows(loc, scale):
            out[at] = coder.decode(family, mean, std) + c
        return out.astype(np.int32)

    def give_back(self, coder, i: np.ndarray, loc: Tensor, scale: Tensor) -> None:
        """Push the bins ``i`` that :meth:`draw` popped under the same posterior."""
        for at, c, family, mean, std in reversed(list(self.windows(loc, scale))):
            coder.encode_reverse((i[at] - c).astype(np.int32), family, mean, std)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().reshape(-1).cpu().numpy()


@dataclass
class Tally:
    """Ideal code lengths of what was coded, in bits (from the model's own log-densities):
    the net cost -log2 [p(x|z) p(z) / q(z|x)] of every image, and the bits popped from Q
    (those the stack must hold before a batch can be coded)."""

    net_bits: list[float] = field(default_factory=list)
    posterior_bits: list[float] = field(default_factory=list)
    exhausted: bool = False  # whether the last batch's draws from Q emptied the stack
    ideal: bool = False  # whether to compute ``net_bits`` (it costs a pass over p(x|z))
    _last: int = 0

    def add(self, net: Tensor | None, posterior: Tensor, exhausted: bool) -> None:
        if net is not None:
            self.net_bits += net.tolist()
        self.posterior_bits += posterior.tolist()
        self.exhausted, self._last = exhausted, len(posterior)

    def drop_last(self) -> None:
        """Forget the last batch (coded again, smaller)."""
        if self.ideal:
            del self.net_bits[-self._last:]
        del self.posterior_bits[-self._last:]


# ---------------------------------------------------------------------------------------
# Latents: the layers of q(z|x) and p(z), each coded on the grid
# ---------------------------------------------------------------------------------------
def _layers(dist: Distribution, model) -> Callable[[Tensor], list[Distribution]]:
    """z (B, T*L) -> the distribution of every layer given the layers above it in z."""
    if model.layers > 1:
        return lambda z: dist.walk(z, torch.Size(), "score")[1]
    return lambda z: [dist]


def _gaussian(d: Distribution, batch: int) -> tuple[Tensor, Tensor]:
    loc, scale = d.mean, d.stddev
    return loc.expand(batch, *loc.shape[-1:]), scale.expand(batch, *scale.shape[-1:])


def _component_posterior(mix: GaussianMixture, z: Tensor) -> Tensor:
    """P(k|z) of a mixture of diagonal Gaussians, (B, K), float64."""
    comp = mix.component_distribution
    lp = comp.log_prob(z.unsqueeze(-2))  # (B, K)
    return torch.softmax(torch.log_softmax(mix.mixture_distribution.logits, -1) + lp, -1)


def _pick(mix: GaussianMixture, k: np.ndarray) -> tuple[Tensor, Tensor]:
    base = mix.component_distribution.base_dist
    idx = torch.as_tensor(k, dtype=torch.long, device=base.loc.device)
    return base.loc[idx], base.scale[idx]  # (B, L)


def _weights(mix: GaussianMixture, batch: int) -> np.ndarray:
    w = torch.softmax(mix.mixture_distribution.logits.double(), -1)
    return np.ascontiguousarray(w.expand(batch, -1).cpu().numpy())


def encode_layer(coder, grid: Grid, d: Distribution, i: np.ndarray, z: Tensor) -> None:
    """Push the bins ``i`` (B*L,) of one layer (values ``z`` (B, L)) under ``d``."""
    m = _model()
    if isinstance(d, GaussianMixture):
        post = _component_posterior(d, z)
        k = coder.decode(m.Categorical(perfect=False), post.cpu().numpy())  # bits back
        coder.encode_reverse(i, grid.family(), *grid.params(*_pick(d, k)))
        coder.encode_reverse(k, m.Categorical(perfect=False), _weights(d, len(z)))
        return
    coder.encode_reverse(i, grid.family(), *grid.params(*_gaussian(d, len(z))))


def decode_layer(coder, grid: Grid, d: Distribution, batch: int, dim: int, device
                 ) -> tuple[np.ndarray, Tensor]:
    """Pop one layer's bins (B*L,) under ``d``; returns them and z (B, L) on ``device``."""
    m = _model()
    if isinstance(d, GaussianMixture):
        k = coder.decode(m.Categorical(perfect=False), _weights(d, batch))
        i = coder.decode(grid.family(), *grid.params(*_pick(d, k)))
        z = grid.values(i, batch, dim, device)
        coder.encode_reverse(k, m.Categorical(perfect=False),
                             _component_posterior(d, z).cpu().numpy())
        return i, z
    i = coder.decode(grid.family(), *grid.params(*_gaussian(d, batch)))
    return i, grid.values(i, batch, dim, device)


# ---------------------------------------------------------------------------------------
# Likelihoods: x | z under p(x|z), exactly as its log_prob
# ---------------------------------------------------------------------------------------
class PixelCode:
    """Codes the pixels (B, C, H, W) of integer levels under a decoder's p(x|z)."""

    def encode(self, coder, px: Distribution, x: np.ndarray, levels: int) -> None:
        raise NotImplementedError

    def decode(self, coder, px: Distribution, shape: tuple[int, ...], levels: int
               ) -> np.ndarray:
        raise NotImplementedError


PIXEL_CODES: Registry[type[PixelCode]] = Registry("losslessly coded likelihood")
REFUSED = {
    "cbernoulli": "the continuous Bernoulli is a density on [0, 1], not a probability of "
                  "the discrete pixels",
    "gaussian": "the Gaussian is a density on [0, 1], not a probability of the discrete pixels",
}


def pixel_code(likelihood: str) -> PixelCode:
    if likelihood in REFUSED:
        raise ConfigError(f"cannot compress with a {likelihood} run: {REFUSED[likelihood]}; "
                          "train with --likelihood dgaussian or dlogistic (grey levels) or "
                          "bernoulli (binary images)")
    return PIXEL_CODES.get(likelihood)()


@PIXEL_CODES.register("bernoulli")
class BernoulliCode(PixelCode):
    """One Bernoulli per pixel, p(x=1) = sigmoid(logit)."""

    def encode(self, coder, px, x, levels):
        coder.encode_reverse(x.reshape(-1).astype(np.int32), _model().Bernoulli(perfect=False),
                             _np(px.base_dist.probs))

    def decode(self, coder, px, shape, levels):
        return coder.decode(_model().Bernoulli(perfect=False),
                            _np(px.base_dist.probs)).reshape(shape)


def bin_masses(cdf: Callable[[Tensor], Tensor], loc: Tensor, levels: int) -> Tensor:
    """(..., levels) probabilities of the levels k / (levels - 1) under a continuous
    distribution cut at the midpoints between levels, the outer bins open to -inf and +inf
    (as vaelab's discretized likelihoods define them): differences of ``cdf`` (standardized
    position -> CDF, e.g. ``ndtr``) at the inner edges, taken from the lower tail below
    ``loc`` and from the upper tail above it, where each is precise."""
    k = torch.arange(levels, dtype=loc.dtype, device=loc.device)
    edges = (k[1:] - 0.5) / (levels - 1)  # (K-1,)
    lo, hi = cdf(edges - loc[..., None]), cdf(loc[..., None] - edges)  # F(e), 1 - F(e)
    zero, one = torch.zeros_like(lo[..., :1]), torch.ones_like(lo[..., :1])
    from_below = torch.cat([lo, one], -1) - torch.cat([zero, lo], -1)
    from_above = torch.cat([one, hi], -1) - torch.cat([hi, zero], -1)
    return torch.where(k / (levels - 1) > loc[..., None], from_above, from_below).clamp_min(0)


@PIXEL_CODES.register("dgaussian")
class DiscretizedGaussianCode(PixelCode):
    """A discretized Gaussian per pixel (``DiscretizedNormal``): a table over the levels,
    the Gaussian's mass in each level's bin."""

    def _each(self, px, levels):
        base = px.base_dist
        loc, scale = base.loc.reshape(-1), base.scale.reshape(-1)
        step = max(1, TABLE_FLOATS // levels)
        for a in range(0, len(loc), step):
            lo, sc = loc[a:a + step], scale[a:a + step, None]
            p = bin_masses(lambda t: torch.special.ndtr(t / sc), lo, levels)
            yield a, p.cpu().numpy()

    def encode(self, coder, px, x, levels):
        flat = x.reshape(-1).astype(np.int32)
        parts = list(self._each(px, levels))
        for a, table in reversed(parts):  # the stack: the first symbols pushed last
            coder.encode_reverse(flat[a:a + len(table)], _model().Categorical(perfect=False),
                                 table)

    def decode(self, coder, px, shape, levels):
        out = [coder.decode(_model().Categorical(perfect=False), table)
               for _, table in self._each(px, levels)]
        return np.concatenate(out).reshape(shape)


@PIXEL_CODES.register("dlogistic")
class LogisticMixtureCode(PixelCode):
    """PixelCNN++'s mixture, channel by channel: channel c of every pixel under
    p(x_c | x_<c) = sum_m w_m(x_<c) DLogistic(x_c; mu_mc(x_<c), s_mc), the weights being the
    mixture's posterior given the channels before (the product over channels is the
    pixel's log_prob)."""

    def _channel(self, px: CoupledLogisticMixture, x: Tensor, ch: int, levels: int
                 ) -> np.ndarray:
        """(B*H*W, levels) tables of channel ``ch``, given x's channels before it."""
        prev = x.unbind(-3)[:ch]
        B = x.shape[0]
        rows = max(1, TABLE_FLOATS // (levels * px.logits.shape[0] * x[0, 0].numel()))
        tables = []
        for a in range(0, B, rows):
            sl = slice(a, a + rows)
            logits, loc = px.logits[:, sl], px.loc[:, sl]
            log_scale, coeffs = px.log_scale[:, sl], px.coeffs[:, sl]
            before = [p[sl] for p in prev]
            log_w = torch.log_softmax(logits, 0)  # (M, b, H, W)
            for j in range(ch):  # the mixture's posterior after the channels before
                mu = px._channel_loc(loc, coeffs, before, j)
                log_w = log_w + discretized_logistic_log_prob(before[j], mu,
                                                              log_scale[..., j, :, :], levels)
            log_w = torch.log_softmax(log_w, 0)
            mu = px._channel_loc(loc, coeffs, before, ch)  # (M, b, H, W)
            inv_s = torch.exp(-log_scale[..., ch, :, :])[..., None]
            masses = bin_masses(lambda t: torch.sigmoid(t * inv_s), mu, levels)  # (M,b,H,W,K)
            p = (log_w.exp()[..., None] * masses).sum(0)  # the mixture: (b, H, W, K)
            tables.append(p.reshape(-1, levels).cpu().numpy())
        return np.concatenate(tables)

    def encode(self, coder, px, x, levels):
        xf = torch.as_tensor(x, dtype=torch.float64, device=px.loc.device) / (levels - 1)
        for ch in reversed(range(x.shape[1])):
            coder.encode_reverse(x[:, ch].reshape(-1).astype(np.int32),
                                 _model().Categorical(perfect=False),
                                 self._channel(px, xf, ch, levels))

    def decode(self, coder, px, shape, levels):
        x = np.zeros(shape, np.int64)
        xf = torch.zeros(shape, dtype=torch.float64, device=px.loc.device)
        for ch in range(shape[1]):
            s = coder.decode(_model().Categorical(perfect=False), self._channel(px, xf, ch, levels))
            x[:, ch] = s.reshape(shape[0], *shape[2:])
            xf[:, ch] = torch.as_tensor(x[:, ch], dtype=torch.float64) / (levels - 1)
        return x


# ---------------------------------------------------------------------------------------
# A batch
# ---------------------------------------------------------------------------------------
def _floats(x: np.ndarray, levels: int, device) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device) / (levels - 1)


@torch.no_grad()
def encode_batch(coder, model, x: np.ndarray, levels: int, grid: Grid, tally: Tally) -> None:
    """Push a batch of images (B, C, H, W) of integer levels onto the stack ``coder``."""
    B, dim, T = len(x), model.latent_dim // model.layers, model.layers
    xf = _floats(x, levels, model.device)
    q = model.encode(xf)
    post = _layers(q, model)
    z = torch.zeros(B, T * dim, dtype=torch.float64, device=model.device)
    bins = []
    for t in range(T):  # z ~ Q(z|x), layer by layer from the top: the bits back
        d = post(z.clone())[t]  # (a new tensor: a hierarchy caches the walk of the last)
        i = grid.draw(coder, *_gaussian(d, B))
        bins.append(i)
        z[:, t * dim:(t + 1) * dim] = grid.values(i, B, dim, z.device)
    exhausted = coder.num_bits() == 0  # Q's draws took more bits than the stack held
    px = model.decode(z)
    pixel_code(model.likelihood.name).encode(coder, px, x, levels)
    prior = model.prior()
    layers = _layers(prior, model)(z)
    for t in reversed(range(T)):  # bottom first, so that the top is drawn first
        encode_layer(coder, grid, layers[t], bins[t], z[:, t * dim:(t + 1) * dim])
    log_q = q.log_prob(z)
    net = -(px.log_prob(xf) + prior.log_prob(z) - log_q) / math.log(2) if tally.ideal else None
    tally.add(net, -log_q / math.log(2) - T * dim * math.log2(grid.delta), exhausted)


@torch.no_grad()
def decode_batch(coder, model, batch: int, shape: tuple[int, int, int], levels: int,
                 grid: Grid) -> np.ndarray:
    """Pop a batch of ``batch`` images (B, C, H, W) of integer levels from the stack."""
    dim, T = model.latent_dim // model.layers, model.layers
    prior = _layers(model.prior(), model)
    z = torch.zeros(batch, T * dim, dtype=torch.float64, device=model.device)
    bins = []
    for t in range(T):
        i, zt = decode_layer(coder, grid, prior(z.clone())[t], batch, dim, z.device)
        bins.append(i)
        z[:, t * dim:(t + 1) * dim] = zt
    px = model.decode(z)
    x = pixel_code(model.likelihood.name).decode(coder, px, (batch, *shape), levels)
    layers = _layers(model.encode(_floats(x, levels, model.device)), model)(z)
    for t in reversed(range(T)):  # give back the bits that compression took from Q
        grid.give_back(coder, bins[t], *_gaussian(layers[t], batch))
    return x.astype(np.uint8)
