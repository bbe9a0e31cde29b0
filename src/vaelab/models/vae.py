"""The VAE: a prior p(z), a decoder p(x|z) and a Gaussian encoder q(z|x), each returning a
``torch.distributions`` object (Kingma & Welling 2014). No loss lives here: see
``objectives``.

Models come in kinds, each a factory in ``MODEL_KINDS``: ``flat`` (one stochastic layer,
this module) and ``hierarchical`` (top-down layers, :mod:`vaelab.models.hierarchical`, which
registers itself when the package is imported). A model says which it is (``kind``,
``layers``); code asks it instead of probing it."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.distributions import Distribution

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import Registry
from .distributions import diagonal_normal
from .likelihoods import LIKELIHOODS, Likelihood
from .nets import NETS
from .priors import PRIORS, Prior

Tensor = torch.Tensor


class VAE(nn.Module):
    """``encode(x) -> q(z|x)``, ``decode(z) -> p(x|z)``, ``prior() -> p(z)``.

    Shapes: x is ``(B, C, H, W)``; z is ``(..., L)``; q has batch ``(B,)`` and event
    ``(L,)``; p(x|z) has batch ``z.shape[:-1]`` and event ``(C, H, W)``.

    A class-conditional VAE (``classes`` > 0; Sohn et al. 2015, Kingma et al. 2014's M2
    with y observed) has q(z|x,y) and p(x|y,z): ``encode(x, y)`` and ``decode(z, y)`` with
    labels y of shape (B,); the prior p(z) does not depend on y.
    """

    kind = "flat"
    layers = 1  # stochastic layers

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood,
                 prior: Prior, latent_dim: int, image_shape: tuple[int, int, int],
                 min_scale: float = 0.0, classes: int = 0):
        super().__init__()
        self.encoder, self.decoder, self.prior = encoder, decoder, prior
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.min_scale = min_scale
        self.classes = classes
        prior.bind(self)  # a prior built from the encoder (the VampPrior) keeps it

    @classmethod
    def from_config(cls, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> "VAE":
        """The model of ``cfg``'s kind (:func:`model_kind`) for images of ``image_shape``."""
        if cfg.likelihood == "auto":
            raise ConfigError("likelihood 'auto' is chosen from the data; resolve it first "
                              "(vaelab.data.splits.resolve) or name the likelihood")
        return MODEL_KINDS.get(model_kind(cfg))(cfg, tuple(image_shape))

    @classmethod
    def flat(cls, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> "VAE":
        """One stochastic layer: encoder and decoder nets of ``cfg.net``."""
        if cfg.conditional and not cfg.classes:
            raise ConfigError("a conditional model needs its number of classes; resolve it "
                              "from the data first (vaelab.data.splits.resolve)")
        classes = cfg.classes if cfg.conditional else 0
        likelihood = LIKELIHOODS.get(cfg.likelihood)(cfg)
        encoder, decoder = NETS.get(cfg.net)(cfg, tuple(image_shape), 2 * cfg.latent_dim,
                                             likelihood.out_channels(image_shape[0]),
                                             classes)
        return cls(encoder, decoder, likelihood, PRIORS.get(cfg.prior)(cfg, tuple(image_shape)),
                   cfg.latent_dim, image_shape, cfg.min_scale, classes)

    def _net(self, net: nn.Module, h: Tensor, y: Tensor | None) -> Tensor:
        if self.classes and y is None:
            raise ValueError("this VAE is class-conditional: pass the labels y")
        return net(h, y) if self.classes else net(h)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        """q(z|x) (or q(z|x,y)): diagonal Gaussian, batch (B,), event (L,)."""
        return diagonal_normal(self._net(self.encoder, x, y), self.min_scale)  # (B, 2L) -> q

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        """p(x|z) (or p(x|y,z)): batch z.shape[:-1], event (C, H, W)."""
        return self.likelihood(self._net(self.decoder, z, y))  # (..., P*C, H, W) -> p

    def top_posterior(self, x: Tensor) -> Distribution:
        """q(z_top|x), the posterior of the top stochastic layer (of a flat VAE, its only
        one): what a prior built from the encoder (the VampPrior) evaluates."""
        return self.encode(x)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def planar(self) -> bool:
        """Whether the latent is one unconditional 2-D layer: then p(x) = integral of
        p(x|z) p(z) dz over the plane, and p(z|x), can be computed on a grid, and the
        decoder's manifold drawn."""
        return self.latent_dim == 2 and self.layers == 1 and not self.classes

    def require_planar(self, what: str) -> None:
        """Raise a ConfigError saying that ``what`` needs a :attr:`planar` model."""
        if not self.planar:
            has = [f"{self.latent_dim} latent dimensions"] + \
                [f"{self.layers} stochastic layers"] * (self.layers > 1) + \
                ["class-conditional"] * bool(self.classes)
            raise ConfigError(f"{what} needs an unconditional model with one 2-D latent layer "
                              f"(train with --latent-dim 2); this one has {', '.join(has)}")

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Tensor | None = None
               ) -> tuple[Tensor, Distribution]:
        """Imagination: z ~ p(z) (scaled by ``temperature``), then p(x|z) (or p(x|y,z) for
        labels y (n,)). Returns ``(z, p(x|z))``; ``p.mean`` is E[x|z] and ``p.sample()``
        draws x ~ p(x|z)."""
        z = self.prior(temperature).sample((n,))  # (n, L)
        return z, self.decode(z, y)


MODEL_KINDS: Registry[Callable[[ModelConfig, tuple[int, int, int]], VAE]] = Registry("model kind")
MODEL_KINDS.register("flat")(VAE.flat)


def model_kind(cfg: ModelConfig) -> str:
    """The kind of model ``cfg`` describes: ``hierarchical`` for ``layers`` > 1, else ``flat``."""
    return "hierarchical" if cfg.layers > 1 else "flat"
