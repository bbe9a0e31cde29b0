"""The latents on the ANS stack: a grid of bins for z, draws from q(z|x) popped from the
stack (the bits that come back) and pushed again, and z pushed under p(z), layer by layer
of a hierarchy, through a mixture prior's component.

Latents live on a grid of bins of width ``delta`` on [-range, range] in every dimension;
Q and every Gaussian of P are ``QuantizedGaussian`` models over that grid (constriction's,
vectorized). Bins of equal width rather than of equal prior mass, as in Bit-Swap (Kingma
et al. 2019): one grid serves every prior, the conditional priors of a hierarchy
included, and each code costs log Q(i) - log P(i) -> log q(z) - log p(z) as delta -> 0.

A mixture prior (``mog``, the VampPrior) is coded through its component k, itself by bits
back: z under P(z) = sum_k pi_k P(z|k) is "decode k ~ P(k|z), encode z under P(z|k),
encode k under pi", which costs -log P(z) exactly when P(k|z) is the posterior over the
components. Where nothing may be popped (a direct code), k is the most probable component
and is pushed outright.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.distributions import Distribution

from ..errors import ConfigError
from ..models.distributions import GaussianMixture

Tensor = torch.Tensor


def entropy_coder():
    """The ``constriction`` package (the optional extra ``vaelab[compress]``)."""
    try:
        import constriction
    except ImportError:
        raise ConfigError("compression needs the constriction package: pip install "
                          "'vaelab[compress]'") from None
    return constriction


def coder_models():
    """constriction's entropy models."""
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
        return coder_models().QuantizedGaussian(-self.n, self.n)

    def params(self, loc: Tensor, scale: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of a QuantizedGaussian over bins, flattened (float64)."""
        return (flat64(loc / self.delta), flat64(scale / self.delta).clip(1e-12))

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
            family = coder_models().QuantizedGaussian(-w, w)
            yield at, c.astype(np.int64), family, mean[at] - c, std[at]

    def values(self, i: np.ndarray, shape: tuple[int, ...], device) -> Tensor:
        """Bins (flat) -> the codes z = i * delta they stand for, of ``shape``."""
        return torch.as_tensor(i, dtype=torch.float64, device=device).reshape(shape) \
            * self.delta

    def nearest(self, z: Tensor) -> np.ndarray:
        """The bins (flat) nearest to z, inside the grid."""
        return np.clip(np.round(flat64(z) / self.delta), -self.n, self.n).astype(np.int32)

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


def flat64(t: Tensor) -> np.ndarray:
    """A tensor as a flat float64 array."""
    return t.detach().double().reshape(-1).cpu().numpy()


def layer_walk(dist: Distribution, model) -> Callable[[Tensor], list[Distribution]]:
    """z (..., T*L) -> the distribution of every layer given the layers above it in z (a
    layer's distribution depends on the layers above only, never on those below)."""
    if model.layers > 1:
        return lambda z: dist.walk(z, torch.Size(), "score")[1]
    return lambda z: [dist]


def gaussian(d: Distribution, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of a diagonal Gaussian, broadcast to (*shape, L)."""
    loc, scale = d.mean, d.stddev
    return loc.expand(*shape, *loc.shape[-1:]), scale.expand(*shape, *scale.shape[-1:])


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


def encode_layer(coder, grid: Grid, d: Distribution, i: np.ndarray, z: Tensor,
                 direct: bool = False) -> None:
    """Push the bins ``i`` (B*L,) of one layer (values ``z`` (B, L)) under ``d``; a
    mixture's component by bits back, or (``direct``) the most probable one outright."""
    m = coder_models()
    if isinstance(d, GaussianMixture):
        post = _component_posterior(d, z)
        k = post.argmax(-1).cpu().numpy().astype(np.int32) if direct else \
            coder.decode(m.Categorical(perfect=False), post.cpu().numpy())  # bits back
        coder.encode_reverse(i, grid.family(), *grid.params(*_pick(d, k)))
        coder.encode_reverse(k, m.Categorical(perfect=False), _weights(d, len(z)))
        return
    coder.encode_reverse(i, grid.family(), *grid.params(*gaussian(d, (len(z),))))


def decode_layer(coder, grid: Grid, d: Distribution, batch: int, dim: int, device,
                 direct: bool = False) -> tuple[np.ndarray, Tensor]:
    """Pop one layer's bins (B*L,) under ``d``; returns them and z (B, L) on ``device``."""
    m = coder_models()
    if isinstance(d, GaussianMixture):
        k = coder.decode(m.Categorical(perfect=False), _weights(d, batch))
        i = coder.decode(grid.family(), *grid.params(*_pick(d, k)))
        z = grid.values(i, (batch, dim), device)
        if not direct:
            coder.encode_reverse(k, m.Categorical(perfect=False),
                                 _component_posterior(d, z).cpu().numpy())
        return i, z
    i = coder.decode(grid.family(), *grid.params(*gaussian(d, (batch,))))
    return i, grid.values(i, (batch, dim), device)
