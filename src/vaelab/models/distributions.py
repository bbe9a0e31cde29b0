"""The distributions vaelab adds to ``torch.distributions``, and the encoder's family.

* :class:`BernoulliImage`, binary pixels with logits: the Bernoulli decoder's family, its
  log-probability in the fewest passes over the logits (the k-sample estimator's hot path).
* :func:`diagonal_normal` is the encoder's Gaussian family,
  q(z|x) = N(z; mu(x), diag sigma^2(x)), an ``Independent`` over the latent dimension;
  its noise comes from :mod:`vaelab.noise` (:class:`ShardableNormal`).
* :class:`DiscretizedNormal` and :class:`CoupledLogisticMixture` are probabilities of
  grey-level (and RGB) data, for the decoders of :mod:`vaelab.models.likelihoods`.
* :class:`GaussianMixture` is the mixture of diagonal Gaussians that the mixture priors
  and the VampPrior of :mod:`vaelab.models.priors` return.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    constraints,
)

from ..noise import standard_normal

Tensor = torch.Tensor


class ShardableNormal(Normal):
    """``torch.distributions.Normal`` whose noise comes from :mod:`vaelab.noise`, so
    that a batch sharded over processes draws the same numbers as in one process (the
    examples run along dimension -2: (..., B, L))."""

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return self.loc + standard_normal(shape, -2, self.loc.dtype, self.loc.device) * self.scale

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


def independent_normal(loc: Tensor, scale: Tensor, event_dims: int = 1) -> Independent:
    """N(loc, diag(scale^2)) whose last ``event_dims`` dimensions are the event."""
    return Independent(ShardableNormal(loc, scale, validate_args=False), event_dims,
                       validate_args=False)


def widened(*tensors: Tensor) -> torch.dtype:
    """The dtype of ``tensors`` computed together, at least float32 (a net's outputs under
    bfloat16 autocast are widened before their densities are)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def diagonal_normal(params: Tensor, min_scale: float = 0.0) -> Independent:
    """``params`` (..., 2L) -> N(loc, diag(scale^2)) with batch (...) and event (L,).
    ``scale = softplus(raw) + min_scale`` keeps it positive without exp's overflow. In at
    least float32: from a net's bfloat16 products (autocast) the parameters, the samples
    and their log-densities would be bfloat16, whose grid (2^-8 of |z|) a draw z snaps to,
    so that log q(z|x) and log p(z) would be densities at points that are not draws of q."""
    loc, raw = params.to(widened(params)).chunk(2, dim=-1)
    return independent_normal(loc, F.softplus(raw) + min_scale)


class BernoulliImage(Independent):
    """Independent Bernoulli pixels with logits l, event (C, H, W). Where no gradient is
    wanted (the k-sample estimator), ``log_prob(x)`` is sum_d [x_d l_d - softplus(l_d)],
    the same number as ``Bernoulli.log_prob`` summed in two passes over the logits instead
    of five: the x-term a matrix product when the logits carry leading sample dimensions
    over one image per example ((..., B, D) against (B, D): no copy of the images per
    sample), and one softplus per logit, in at least float32 (logits from bfloat16
    products are widened first), exact to rounding (its linear branch starts where
    log1p(exp(-l)) is below l's last digit). With gradients (training) it is Bernoulli's,
    whose fused kernel has the faster backward (measured: 9.1 against 8.4 ms a step)."""

    def __init__(self, logits: Tensor):
        super().__init__(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (self.base_dist.logits.requires_grad
                                        or value.requires_grad):
            return super().log_prob(value)
        dtype = widened(self.base_dist.logits)
        logits = self.base_dist.logits.flatten(-3).to(dtype)  # (..., D)
        x = value.flatten(-3).to(dtype)
        # outside autocast, which would run the einsum, and so the sum, in bfloat16 (1-2 nats off)
        with torch.autocast(logits.device.type, enabled=False):
            if x.dim() == 2 and logits.dim() >= 2 and logits.shape[-2] == x.shape[0]:
                xl = torch.einsum("...bd,bd->...b", logits, x)
            else:  # any other broadcast
                xl = (logits * x).sum(-1)
            threshold = 20.0 if dtype == torch.float32 else 40.0
            return xl - F.softplus(logits, threshold=threshold).sum(-1)


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Values k / (K - 1) in [0, 1] -> integer levels k in {0, ..., K-1} (as float)."""
    return torch.round(x * (levels - 1))


def discretized_normal_log_prob(x: Tensor, loc: Tensor, scale: Tensor, levels: int) -> Tensor:
    """log P(x) of the level x = k/(K-1) under N(loc, scale^2) cut into K bins at the
    midpoints between levels, the outer bins open to -inf and +inf; elementwise, and it
    sums to 1 over the K levels. Stable in both tails, with finite gradients everywhere."""
    k = to_levels(x, levels)
    half = 0.5 / (levels - 1)
    lo = (x - half - loc) / scale
    hi = (x + half - loc) / scale
    # an open outer bin ends 60 standard deviations beyond both the mean and its finite
    # edge, where Phi is 0 or 1 to float precision: every value and gradient stays finite
    # (an infinite bound gives 0 * inf = nan in the backward pass)
    lo = torch.where(k > 0, lo, hi.clamp(max=0.0) - 60.0)
    hi = torch.where(k < levels - 1, hi, lo.clamp(min=0.0) + 60.0)
    # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): take the side where both tails are small
    flip = lo > 0
    a = torch.special.log_ndtr(torch.where(flip, -lo, hi))
    b = torch.special.log_ndtr(torch.where(flip, -hi, lo))
    diff = (a - b).clamp_min(1e-12)
    exact = a + torch.log(-torch.expm1(-diff))
    # a bin far narrower than the Gaussian: the density times the bin's width
    mid = -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    narrow = mid + math.log(2 * half)
    return torch.where(diff > 1e-4, exact, narrow)


class DiscretizedNormal(Distribution):
    """N(loc, scale^2) rounded to the nearest of K levels k/(K-1) in [0, 1]: a probability
    mass function over the data's grey levels (elementwise; wrap in ``Independent``)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, levels: int, validate_args=False):
        self.loc, self.scale, self.levels = torch.broadcast_tensors(loc, scale) + (levels,)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        """E[x] = sum_k (k/(K-1)) P(k), computed over the K levels."""
        lv = torch.arange(self.levels, device=self.loc.device, dtype=self.loc.dtype) / (
            self.levels - 1)
        lv = lv.view(-1, *([1] * self.loc.dim()))
        p = discretized_normal_log_prob(lv.expand(-1, *self.loc.shape), self.loc, self.scale,
                                        self.levels).exp()  # (K, ...)
        return (p * lv).sum(0)

    def log_prob(self, value: Tensor) -> Tensor:
        return discretized_normal_log_prob(value, self.loc, self.scale, self.levels)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> Tensor:
        y = torch.normal(self.loc.expand(self._extended_shape(sample_shape)),
                         self.scale.expand(self._extended_shape(sample_shape)))
        return to_levels(y.clamp(0, 1), self.levels) / (self.levels - 1)


def discretized_logistic_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor,
                                  levels: int) -> Tensor:
    """log P(x) of the level x = k/(K-1) under a logistic(loc, exp(log_scale)) cut into K
    bins at the midpoints, the outer bins open (Salimans et al. 2017, PixelCNN++);
    elementwise, sums to 1 over the levels, stable in the tails."""
    k = to_levels(x, levels)
    half = 0.5 / (levels - 1)
    inv_s = torch.exp(-log_scale)
    plus, minus = inv_s * (x + half - loc), inv_s * (x - half - loc)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the lowest, open bin
    log_sf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the highest, open bin
    diff = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * (x - loc)
    narrow = mid - log_scale - 2 * F.softplus(mid) + math.log(2 * half)  # pdf * width
    inner = torch.where(diff > 1e-5, torch.log(diff.clamp_min(1e-12)), narrow)
    return torch.where(k == 0, log_cdf_plus, torch.where(k == levels - 1, log_sf_minus, inner))


def dlogistic_mean(loc: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """E[x] of a discretized logistic over K levels: sum_k (k/(K-1)) P(k), level by level."""
    out = torch.zeros_like(loc)
    for k in range(1, levels):
        v = torch.full_like(out, k / (levels - 1))
        out += v * discretized_logistic_log_prob(v, loc, log_scale, levels).exp()
    return out


class CoupledLogisticMixture(Distribution):
    """PixelCNN++'s distribution of a C-channel pixel (Salimans et al. 2017): a mixture of
    M components, each a product over the channels of discretized logistics whose means
    depend linearly on the channels before them,

        p(x) = sum_m pi_m prod_c DLogistic(x_c; a_mc + sum_{j<c} b_mcj x_j, s_mc),

    with b = tanh(raw) in (-1, 1); for grey images the plain mixture. Parameters (M, ...):
    ``logits`` (M, *B, H, W), ``loc`` and ``log_scale`` (M, *B, C, H, W), ``coeffs``
    (M, *B, C(C-1)/2, H, W); event (C, H, W)."""

    arg_constraints: dict = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: Tensor, loc: Tensor, log_scale: Tensor, coeffs: Tensor,
                 levels: int):
        self.logits, self.loc, self.coeffs = logits, loc, torch.tanh(coeffs)
        self.log_scale, self.levels = log_scale.clamp_min(-7.0), levels
        super().__init__(loc.shape[1:-3], loc.shape[-3:], validate_args=False)

    @staticmethod
    def params_per_component(channels: int) -> int:
        return 1 + 2 * channels + channels * (channels - 1) // 2

    @classmethod
    def from_params(cls, params: Tensor, mixtures: int, levels: int
                    ) -> "CoupledLogisticMixture":
        """Decoder output (..., M * params_per_component(C), H, W) -> the distribution."""
        *lead, p, h, w = params.shape
        per = p // mixtures
        c = next(c for c in range(1, 5) if cls.params_per_component(c) == per)
        cc = c * (c - 1) // 2
        split = params.reshape(*lead, per, mixtures, h, w).movedim(-3, 0)  # (M, ..., per, H, W)
        logits, loc, log_scale, coeffs = split.split([1, c, c, cc], dim=-3)
        return cls(logits.squeeze(-3), loc, log_scale, coeffs, levels)

    @staticmethod
    def _channel_loc(loc: Tensor, coeffs: Tensor, prev: list[Tensor] | tuple[Tensor, ...],
                     ch: int) -> Tensor:
        """Channel ch's mean a_ch + sum_{j<ch} b_{ch,j} x_j, given the channels before it
        (``prev[j]``, (..., H, W)); ``loc`` (..., C, H, W), ``coeffs`` (..., C(C-1)/2, H, W)."""
        mu, first = loc[..., ch, :, :], ch * (ch - 1) // 2
        for j in range(ch):
            mu = mu + coeffs[..., first + j, :, :] * prev[j]
        return mu

    def _loc(self, x: Tensor) -> Tensor:
        """Each channel's mean given the channels before it in x (..., C, H, W)."""
        prev = x.unbind(-3)
        return torch.stack([self._channel_loc(self.loc, self.coeffs, prev, ch)
                            for ch in range(self.loc.shape[-3])], -3)

    def log_prob(self, value: Tensor) -> Tensor:
        lp = discretized_logistic_log_prob(value.unsqueeze(0), self._loc(value.unsqueeze(0)),
                                           self.log_scale, self.levels).sum(-3)  # (M, ..., H, W)
        return torch.logsumexp(torch.log_softmax(self.logits, 0) + lp, 0).sum((-2, -1))

    @property
    def mean(self) -> Tensor:
        """Per component the channels' means, each with the channels before it at their
        means (exact for grey images, a plug-in for colour), mixed by the weights."""
        means: list[Tensor] = []
        for ch in range(self.loc.shape[-3]):
            loc = self._channel_loc(self.loc, self.coeffs, means, ch)
            means.append(dlogistic_mean(loc, self.log_scale[..., ch, :, :], self.levels))
        w = torch.softmax(self.logits, 0).unsqueeze(-3)
        return (w * torch.stack(means, -3)).sum(0)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)  # (*S, *B, C, H, W)
        pixel = shape[:-3] + shape[-2:]
        m = Categorical(logits=self.logits.movedim(0, -1)).sample(sample_shape)  # (*S,*B,H,W)

        def take(t: Tensor) -> Tensor:  # (M, *B, K, H, W) -> the picked component (*S,*B,K,H,W)
            t = t.reshape(t.shape[0], *[1] * len(sample_shape), *t.shape[1:])
            t = t.expand(t.shape[0], *shape[:-3], *t.shape[-3:])
            idx = m.unsqueeze(0).unsqueeze(-3).expand(1, *pixel[:-2], t.shape[-3], *pixel[-2:])
            return t.gather(0, idx).squeeze(0)

        loc, log_scale, coeffs = take(self.loc), take(self.log_scale), take(self.coeffs)
        xs: list[Tensor] = []  # the channels drawn so far, each (*S, *B, H, W)
        for ch in range(shape[-3]):
            mu = self._channel_loc(loc, coeffs, xs, ch)
            u = torch.rand(pixel, device=mu.device).clamp(1e-5, 1 - 1e-5)
            y = mu + log_scale[..., ch, :, :].exp() * (torch.log(u) - torch.log1p(-u))
            xs.append(to_levels(y.clamp(0, 1), self.levels) / (self.levels - 1))
        return torch.stack(xs, -3)


class GaussianMixture(MixtureSameFamily):
    """A mixture of diagonal Gaussians, ``logits`` (K,), ``loc`` and ``scale`` (K, L), whose
    log_prob is one matrix product: sum_d (z_d - m_kd)^2 / s_kd^2 expands into
    z^2 . (1/s^2) - 2 z . (m/s^2) + const_k, so (N codes) x (K components) costs an
    (N, 2L) x (2L, K) product instead of an (N, K, L) tensor. The expansion cancels terms
    of hundreds per dimension (m^2/s^2) down to the small distance of a code to a
    component, so the product runs in at least float32, outside autocast: in bfloat16 its
    rounding put log p(z) tens of nats off, the log-sum-exp over the components picked the
    most favourable errors, and a VampPrior run trained on the IWAE bound found that hole
    (the epoch's Monte Carlo KL went negative, docs/quality.md round 11)."""

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor):
        comp = independent_normal(loc, scale)
        super().__init__(Categorical(logits=logits, validate_args=False), comp,
                         validate_args=False)
        prec = scale.pow(-2)  # (K, L)
        self._w = torch.cat([prec, -2 * loc * prec], 1).T  # (2L, K)
        self._c = (torch.log_softmax(logits, 0) - scale.log().sum(1)
                   - 0.5 * (loc.pow(2) * prec).sum(1)
                   - 0.5 * loc.shape[1] * math.log(2 * math.pi))  # (K,)

    def log_prob(self, z: Tensor) -> Tensor:
        z = z.to(widened(z, self._w))
        with torch.autocast(z.device.type, enabled=False):
            quad = torch.cat([z * z, z], -1) @ self._w.to(z.dtype)  # (..., K)
            return torch.logsumexp(self._c.to(z.dtype) - 0.5 * quad, -1)
