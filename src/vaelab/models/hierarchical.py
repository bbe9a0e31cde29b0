"""A hierarchical VAE with top-down inference (Sonderby et al. 2016, ladder VAE; Vahdat &
Kautz 2020, NVAE): T stochastic layers z_0 (top) ... z_{T-1} (bottom), each ``latent_dim``.

    generative   p(z) = N(z_0; 0, I) prod_t p(z_t | z_<t),   p(x | z)
    inference    q(z|x) = q(z_0 | x) prod_t q(z_t | x, z_<t)

A bottom-up network (an MLP, or the conv trunk of ``net = "conv"``) and residual MLP cells
give features h_t of x for every layer; one top-down path of residual MLP cells carries a
deterministic state d_t = D_t(z_{t-1}, d_{t-1}) shared by the prior
p(z_t | z_<t) = N(P_t(d_t)), the posterior q(z_t | x, z_<t) = N(Q_t(h_t, d_t)) and the
decoder (an MLP, or the conv decoder). The decoder reads d_T and every layer's code, as in
Tomczak & Welling's p(x | z_1, z_2) (from d_T alone, a 2 x 40 MLP model trailed a flat one
by 8 nats of validation ELBO after 30 epochs on 10k Fashion-MNIST images; with the codes,
by 1.7). The top layer's prior p(z_0) is
N(0, I), a learned mixture (``prior = "mog"``), or the VampPrior (``"vamp"``): the mixture
of q(z_0 | u_k) over learned pseudo-inputs u_k, as in Tomczak & Welling's hierarchical
VampPrior VAE. Codes of all layers travel concatenated, top first, (..., T*L), so
q(z|x) and p(z) are ordinary distributions to the rest of vaelab: ``rsample`` walks the
path, ``log_prob`` walks it with the given codes, and the one ELBO (with its Monte-Carlo KL)
and the importance-sampled log-likelihood need nothing new."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Distribution, constraints

from ..config import ModelConfig
from ..errors import ConfigError
from .distributions import diagonal_normal, independent_normal
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS, ConvDecoder, ConvEncoder, MLP
from .priors import PRIORS, Prior
from .vae import MODEL_KINDS, VAE

Tensor = torch.Tensor


class Cell(nn.Module):
    """A residual MLP cell: in -> width, plus a skip when the widths agree."""

    def __init__(self, inp: int, width: int, activation: str):
        super().__init__()
        self.net = MLP(inp, (width,), width, activation)
        self.act = ACTIVATIONS.get(activation)()
        self.skip = inp == width

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.net(h) + (h if self.skip else 0))


class Walk(Distribution):
    """A distribution over the concatenated codes (..., T*L), defined by a top-down walk:
    ``walk(z, shape, mode)`` returns (codes, per-layer Normals), sampling (mode "sample"),
    taking means ("mean") or scoring given codes z."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, walk: Callable, batch_shape: torch.Size, dim: int):
        self.walk = walk
        super().__init__(batch_shape, torch.Size([dim]), validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self.walk(None, torch.Size(sample_shape), "sample")[0]

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    @property
    def mean(self) -> Tensor:
        """The codes of the walk that takes every layer's mean (not E[z] of the mixture)."""
        return self.walk(None, torch.Size(), "mean")[0]

    def layer_log_probs(self, z: Tensor) -> list[Tensor]:
        _, dists = self.walk(z, torch.Size(), "score")
        return [d.log_prob(zt) for d, zt in zip(dists, z.split(dists[0].event_shape[0], -1))]

    def log_prob(self, z: Tensor) -> Tensor:
        return torch.stack(self.layer_log_probs(z)).sum(0)

    def layer_log_ratios(self, other: "Walk", z: Tensor) -> Tensor:
        """log q(z_t|...) - log p(z_t|...) of each layer, this walk against ``other``, at
        codes z (..., T*L): (..., T). Its mean over z ~ self is each layer's KL."""
        return torch.stack([a - b for a, b in zip(self.layer_log_probs(z),
                                                  other.layer_log_probs(z))], -1)


class HierarchicalVAE(VAE):
    """``encode(x)`` -> q(z|x) and ``prior()`` -> p(z) as top-down walks over T layers;
    ``decode(z)`` -> p(x|z) from the bottom state of the walk and the codes."""

    kind = "hierarchical"

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]):
        likelihood = LIKELIHOODS.get(cfg.likelihood)(cfg)
        c, h, w = image_shape
        T, L, W, act = cfg.layers, cfg.latent_dim, cfg.hidden[-1], cfg.activation
        out = likelihood.out_channels(c)
        if cfg.net == "conv":
            trunk, head = ConvEncoder(cfg, image_shape), ConvDecoder(cfg, image_shape, out)
            first = nn.Sequential(trunk, nn.Linear(trunk.features, W), ACTIVATIONS.get(act)())
            decoder = nn.Sequential(nn.Linear(W + T * L, head.features), head)
        else:
            first = nn.Sequential(nn.Flatten(-3), MLP(c * h * w, cfg.hidden[:-1] or (W,), W, act),
                                  ACTIVATIONS.get(act)())
            decoder = nn.Sequential(MLP(W + T * L, tuple(reversed(cfg.hidden)), out * h * w, act),
                                    nn.Unflatten(-1, (out, h, w)))
        up = nn.ModuleList([first] + [Cell(W, W, act) for _ in range(T - 1)])  # bottom first
        super().__init__(up, decoder, likelihood, _Prior(cfg, image_shape), T * L, image_shape,
                         cfg.min_scale)
        self.layers, self.layer_dim = T, L  # (an instance's layers: T, not VAE's 1)
        self.state = nn.ModuleList([Cell(L, W, act)] + [Cell(L + W, W, act)
                                                        for _ in range(T - 1)])  # D_1..D_T
        self.p_heads = nn.ModuleList([nn.Linear(W, 2 * L) for _ in range(T - 1)])  # P_1..
        self.q_heads = nn.ModuleList([nn.Linear(W, 2 * L)] +  # Q_0 from h_0
                                     [MLP(2 * W, (W,), 2 * L, act) for _ in range(T - 1)])
        self._cache: tuple[Tensor, list[Tensor]] | None = None

    # ---- the top-down walk ------------------------------------------------------------
    def _states(self, z: Tensor) -> list[Tensor]:
        """d_1 .. d_T from given codes (cached for the codes last sampled or scored)."""
        if self._cache is not None and self._cache[0] is z:
            return self._cache[1]
        ds, d = [], None
        for t, zt in enumerate(z.split(self.layer_dim, -1)):
            d = self.state[t](zt if d is None else torch.cat([zt, d], -1))
            ds.append(d)
        self._cache = (z, ds)
        return ds

    def _walk(self, hs: list[Tensor] | None, batch: torch.Size, device, temperature: float,
              z: Tensor | None, shape: torch.Size, mode: str, top: Distribution | None = None):
        """Codes and per-layer distributions, top first: the posterior's with bottom-up
        features ``hs`` (top first), the prior's without."""
        zs, dists, ds, d = [], [], [], None
        given = z.split(self.layer_dim, -1) if z is not None else None
        known = self._cache[1] if z is not None and self._cache and self._cache[0] is z \
            else None  # the states of these codes, from the walk that drew them
        for t in range(self.layers):
            if t == 0:
                if hs is None and top is not None:  # a mixture over the top layer
                    dist = top
                elif hs is None:
                    loc = torch.zeros(*batch, self.layer_dim, device=device)
                    dist = independent_normal(loc, torch.ones_like(loc) * temperature)
                else:
                    dist = diagonal_normal(self.q_heads[0](hs[0]), self.min_scale)
            else:
                ctx = self.p_heads[t - 1](d) if hs is None else \
                    self.q_heads[t](torch.cat([hs[t].expand_as(d), d], -1))
                dist = diagonal_normal(ctx, self.min_scale)
                if hs is None and temperature != 1:
                    dist = independent_normal(dist.mean, dist.stddev * temperature)
            if given is not None:
                zt = given[t]
            elif mode == "mean":
                zt = dist.mean.expand(*shape, *dist.mean.shape) if t == 0 else dist.mean
            else:
                size = shape if t == 0 else torch.Size()
                zt = dist.rsample(size) if dist.has_rsample else dist.sample(size)
            zs.append(zt)
            dists.append(dist)
            d = known[t] if known else self.state[t](zt if d is None else torch.cat([zt, d], -1))
            ds.append(d)
        codes = z if z is not None else torch.cat(zs, -1)
        self._cache = (codes, ds)
        return codes, dists

    # ---- the VAE interface -------------------------------------------------------------
    def _bottom_up(self, x: Tensor) -> list[Tensor]:
        """Features h_t of x for every layer, top first (as the walk goes)."""
        hs = [self.encoder[0](x)]
        for cell in self.encoder[1:]:
            hs.append(cell(hs[-1]))
        return hs[::-1]

    def top_posterior(self, x: Tensor) -> Distribution:
        """q(z_0 | x), the top layer's posterior (batch (B,), event (L,))."""
        return diagonal_normal(self.q_heads[0](self._bottom_up(x)[0]), self.min_scale)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        hs = self._bottom_up(x)
        return Walk(lambda z, shape, mode: self._walk(hs, x.shape[:1], x.device, 1.0, z, shape,
                                                      mode), x.shape[:1], self.latent_dim)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        return self.likelihood(self.decoder(torch.cat([self._states(z)[-1], z], -1)))

    def layer_kl(self, x: Tensor) -> Tensor:
        """KL of each layer, E_q[log q(z_t|x, z_<t) - log p(z_t|z_<t)] from one sample of
        q: (B, T); the layers' sum is the model's KL(q(z|x) || p(z))."""
        q, p = self.encode(x), self.prior()
        z = q.rsample()
        return q.layer_log_ratios(p, z)


class _Prior(Prior):
    """p(z) of a hierarchical VAE: the walk without x, from the prior ``cfg.prior`` of
    ``PRIORS`` over the top layer (N(0, I), a learned mixture, or the VampPrior: the mixture
    of q(z_0 | u_k)). Bound to its model."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.standard = cfg.prior == "normal"  # p(z_0) = N(0, I): drawn in the walk itself
        self.top = PRIORS.get(cfg.prior)(cfg, image_shape)  # p(z_0)
        self.floats_per_code = self.top.floats_per_code
        self._register_load_state_dict_pre_hook(_former_names)

    def bind(self, model: nn.Module) -> None:
        self.__dict__["_vae"] = model
        self.top.bind(model)  # the VampPrior: q(z_0 | u_k), the model's top posterior

    def forward(self, temperature: float = 1.0) -> Distribution:
        m = self._vae
        dev = m.device
        top = None if self.standard else self.top(temperature)
        return Walk(lambda z, shape, mode: m._walk(None, torch.Size(), dev, temperature, z,
                                                   shape, mode, top), torch.Size(), m.latent_dim)


def _former_names(state: dict, prefix: str, *args) -> None:
    """Weights saved before the top prior came from ``PRIORS`` named it ``mixture.*``
    (mog) or ``raw`` (vamp); they load as ``top.*``."""
    for key in [k for k in state if k.startswith(prefix + "mixture.") or k == prefix + "raw"]:
        state[prefix + "top." + key[len(prefix):].removeprefix("mixture.")] = state.pop(key)


@MODEL_KINDS.register("hierarchical")
def build(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> HierarchicalVAE:
    if cfg.net not in ("mlp", "conv") or cfg.conditional:
        raise ConfigError("a hierarchical VAE (layers > 1) takes --net mlp or conv and no "
                          "labels (without --conditional)")
    return HierarchicalVAE(cfg, image_shape)
