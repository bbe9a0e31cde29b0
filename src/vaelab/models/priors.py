"""The priors p(z): ``PRIORS`` maps a name to a module whose call returns p(z) at a
temperature (its standard deviations scaled). N(0, I), a learned mixture of Gaussians, and
the VampPrior, which is built from an encoder: every prior is bound to the posterior it
serves (:meth:`Prior.bind`), and the VampPrior uses its top layer's q(z|x)."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from ..config import ModelConfig
from ..registry import Registry
from .distributions import GaussianMixture, independent_normal

Tensor = torch.Tensor


class Prior(nn.Module):
    """p(z) as a module: ``prior(temperature) -> Distribution`` over codes (L,)."""

    floats_per_code: int = 0  # floats that scoring one code holds at once (a mixture: K)

    def bind(self, model: nn.Module) -> None:
        """Called by the model that owns this prior; a prior built from the encoder keeps
        the model's ``top_posterior``, q(z_top|x) (not as a submodule: the model owns the
        encoder). Others need nothing."""

    def forward(self, temperature: float = 1.0) -> Distribution:
        raise NotImplementedError


PRIORS: Registry[Callable[[ModelConfig, tuple[int, int, int]], Prior]] = Registry("prior")


@PRIORS.register("normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I). Buffers, so it follows the model to its device."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.register_buffer("loc", torch.zeros(cfg.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(cfg.latent_dim), persistent=False)

    def forward(self, temperature: float = 1.0) -> Distribution:
        return independent_normal(self.loc, self.scale * temperature)


def _scale_param(shape: tuple[int, ...], scale: float = 1.0) -> nn.Parameter:
    """Raw parameters whose softplus is ``scale``."""
    return nn.Parameter(torch.full(shape, math.log(math.expm1(scale))))


@PRIORS.register("mog")
class MixturePrior(Prior):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with learned weights, means and scales
    (K = ``prior_components``). KL(q || p) has no closed form: Monte Carlo."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        k, d = cfg.prior_components, cfg.latent_dim
        self.logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(torch.randn(k, d))
        self.raw_scale = _scale_param((k, d), 0.5)
        self.floats_per_code = k  # log p(z) of one code: a row of K log-densities

    def forward(self, temperature: float = 1.0) -> Distribution:
        return GaussianMixture(self.logits, self.loc, F.softplus(self.raw_scale) * temperature)


@PRIORS.register("vamp")
class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k), the encoder at K learned pseudo-inputs u_k in [0, 1]
    (Tomczak & Welling 2018; K = ``prior_components``). The model binds its posterior: a
    flat VAE's q(z|x), a hierarchy's top layer q(z_0|x)."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.raw = nn.Parameter(0.1 * torch.randn(cfg.prior_components, *image_shape))
        self.floats_per_code = cfg.prior_components
        self.__dict__["_encode"] = None  # not a submodule: the model owns the encoder

    def bind(self, model: nn.Module) -> None:
        self.__dict__["_encode"] = model.top_posterior

    def forward(self, temperature: float = 1.0) -> Distribution:
        q = self._encode(torch.sigmoid(self.raw))  # batch (K,), event (L,)
        logits = torch.zeros(self.raw.shape[0], device=self.raw.device)
        return GaussianMixture(logits, q.mean, q.stddev * temperature)
