"""Distribution heads: network outputs -> ``torch.distributions`` objects.

* :func:`diagonal_normal` is the encoder's Gaussian family,
  q(z|x) = N(z; mu(x), diag sigma^2(x)), an ``Independent`` over the latent dimension.
* ``LIKELIHOODS`` holds the decoder families p(x|z), each an ``Independent`` over the
  image dimensions ``(C, H, W)``, so ``log_prob`` sums over pixels.
* ``PRIORS`` holds modules whose call returns p(z).

Choose the likelihood on purpose: binary data -> ``bernoulli``; grey values in [0, 1] ->
``cbernoulli`` (Loaiza-Ganem & Cunningham 2019) or ``gaussian`` (learned per-pixel
variance). A Bernoulli on grey values is not a likelihood of the data: it is warned about.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (Bernoulli, ContinuousBernoulli, Distribution, Independent,
                                 Normal)

from .config import ModelConfig, Registry

Tensor = torch.Tensor


def diagonal_normal(params: Tensor, min_scale: float = 0.0) -> Independent:
    """``params`` (..., 2L) -> N(loc, diag(scale^2)) with batch (...) and event (L,).
    ``scale = softplus(raw) + min_scale`` keeps it positive without exp's overflow."""
    loc, raw = params.chunk(2, dim=-1)
    scale = F.softplus(raw) + min_scale
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


class Likelihood:
    """Turns decoder output ``(..., params_per_channel * C, H, W)`` into p(x|z) with
    event shape ``(C, H, W)``."""

    name: str = ""
    params_per_channel: int = 1
    discrete: bool = False  # a probability mass over the data (log_prob <= 0)
    binary: bool = False  # support {0, 1}

    def __call__(self, params: Tensor) -> Distribution:
        raise NotImplementedError


LIKELIHOODS: Registry[Callable[[ModelConfig], Likelihood]] = Registry("likelihood")


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i)), for binary images."""

    name, discrete, binary = "bernoulli", True, True

    def __init__(self, cfg: ModelConfig | None = None):
        pass

    def __call__(self, params: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=params, validate_args=False), 3, validate_args=False)


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

    def __call__(self, params: Tensor) -> Distribution:
        loc, raw = params.chunk(2, dim=-3)
        scale = F.softplus(raw) + self.min_scale
        return Independent(Normal(loc, scale, validate_args=False), 3, validate_args=False)


PRIORS: Registry[Callable[[ModelConfig], nn.Module]] = Registry("prior")


@PRIORS.register("normal")
class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I). Buffers, so it follows the model to its device."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("loc", torch.zeros(cfg.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(cfg.latent_dim), persistent=False)

    def forward(self, temperature: float = 1.0) -> Distribution:
        return Independent(Normal(self.loc, self.scale * temperature, validate_args=False), 1,
                           validate_args=False)
