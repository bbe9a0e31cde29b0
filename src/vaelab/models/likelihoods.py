"""The decoder families p(x|z): ``LIKELIHOODS`` maps a name to a factory whose call turns
decoder output ``(..., out_channels(C), H, W)`` into a distribution with event ``(C, H, W)``
(an ``Independent`` over the pixels, so ``log_prob`` sums over them).

Choose the likelihood on purpose: binary data -> ``bernoulli``; grey levels ->
``dgaussian``, a discretized Gaussian, a probability over the data's levels that compares
with the literature's discrete log-likelihoods, or ``dlogistic`` (PixelCNN++'s mixture);
or the densities ``cbernoulli`` (Loaiza-Ganem & Cunningham 2019) and ``gaussian`` on
[0, 1], whose numbers are densities, not probabilities of the data. A Bernoulli on grey
values is not a likelihood of the data: it is warned about.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.distributions import ContinuousBernoulli, Distribution, Independent

from ..config import ModelConfig
from ..registry import Registry
from .distributions import (
    BernoulliImage,
    CoupledLogisticMixture,
    DiscretizedNormal,
    independent_normal,
)

Tensor = torch.Tensor


class Likelihood:
    """Turns decoder output ``(..., out_channels(C), H, W)`` into p(x|z) with
    event shape ``(C, H, W)``."""

    name: str = ""
    params_per_channel: int = 1
    discrete: bool = False  # a probability mass over the data (log_prob <= 0)
    binary: bool = False  # support {0, 1}
    levels: int | None = None  # values a pixel takes (2 if binary); None for a density

    def out_channels(self, channels: int) -> int:
        """Channels of decoder output that parameterize an image of ``channels``."""
        return self.params_per_channel * channels

    def __call__(self, params: Tensor) -> Distribution:
        raise NotImplementedError


LIKELIHOODS: Registry[Callable[[ModelConfig], Likelihood]] = Registry("likelihood")


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i)), for binary images."""

    name, discrete, binary, levels = "bernoulli", True, True, 2

    def __init__(self, cfg: ModelConfig | None = None):
        pass

    def __call__(self, params: Tensor) -> Distribution:
        return BernoulliImage(params)


@LIKELIHOODS.register("cbernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """The continuous Bernoulli, a proper density on [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    name = "cbernoulli"

    def __init__(self, cfg: ModelConfig | None = None):
        pass

    def __call__(self, params: Tensor) -> Distribution:
        return Independent(ContinuousBernoulli(logits=params, validate_args=False), 3,
                           validate_args=False)


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(Likelihood):
    """N(x_i; mu_i(z), sigma_i(z)^2) with a learned per-pixel scale >= ``min_scale``."""

    name, params_per_channel = "gaussian", 2

    def __init__(self, cfg: ModelConfig | None = None):
        self.min_scale = cfg.min_scale if cfg is not None else 1e-3

    def _loc_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = params.chunk(2, dim=-3)
        return loc, F.softplus(raw) + self.min_scale

    def __call__(self, params: Tensor) -> Distribution:
        return independent_normal(*self._loc_scale(params), 3)


@LIKELIHOODS.register("dgaussian")
class DiscretizedGaussianLikelihood(GaussianLikelihood):
    """A discretized Gaussian per pixel with learned scale: a probability over the data's
    grey levels (``levels``, set from the data), so its log-likelihood is that of the
    discrete 8-bit (or 17-level) data, comparable with the literature's."""

    name, discrete = "dgaussian", True

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__(cfg)
        self.levels = cfg.levels if cfg is not None and cfg.levels else 256

    def __call__(self, params: Tensor) -> Distribution:
        return Independent(DiscretizedNormal(*self._loc_scale(params), self.levels), 3,
                           validate_args=False)


@LIKELIHOODS.register("dlogistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """Per pixel a mixture of ``logistic_mixtures`` discretized logistics over the data's
    grey levels, the channels coupled as in PixelCNN++ (Salimans et al. 2017): a
    probability of the 8-bit grey or RGB data."""

    name, discrete = "dlogistic", True

    def __init__(self, cfg: ModelConfig | None = None):
        self.mixtures = cfg.logistic_mixtures if cfg is not None else 5
        self.levels = cfg.levels if cfg is not None and cfg.levels else 256

    def out_channels(self, channels: int) -> int:
        return self.mixtures * CoupledLogisticMixture.params_per_component(channels)

    def __call__(self, params: Tensor) -> Distribution:
        return CoupledLogisticMixture.from_params(params, self.mixtures, self.levels)
