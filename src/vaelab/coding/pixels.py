"""The pixels on the ANS stack: x pushed and popped under a decoder's p(x|z), exactly as
the likelihood's ``log_prob`` defines it (Bernoulli, discretized Gaussian, PixelCNN++'s
logistic mixture), and under a uniform code (the fallback no model can lose to)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.distributions import Distribution

from ..errors import ConfigError
from ..models.distributions import CoupledLogisticMixture, discretized_logistic_log_prob
from ..registry import Registry
from .latents import coder_models, flat64

Tensor = torch.Tensor
TABLE_FLOATS = 1 << 22  # floats of probability tables computed at once


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
        coder.encode_reverse(x.reshape(-1).astype(np.int32), _bernoulli(),
                             flat64(px.base_dist.probs))

    def decode(self, coder, px, shape, levels):
        return coder.decode(_bernoulli(),
                            flat64(px.base_dist.probs)).reshape(shape)


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
            coder.encode_reverse(flat[a:a + len(table)], _categorical(),
                                 table)

    def decode(self, coder, px, shape, levels):
        out = [coder.decode(_categorical(), table)
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
                                 _categorical(),
                                 self._channel(px, xf, ch, levels))

    def decode(self, coder, px, shape, levels):
        x = np.zeros(shape, np.int64)
        xf = torch.zeros(shape, dtype=torch.float64, device=px.loc.device)
        for ch in range(shape[1]):
            s = coder.decode(_categorical(), self._channel(px, xf, ch, levels))
            x[:, ch] = s.reshape(shape[0], *shape[2:])
            xf[:, ch] = torch.as_tensor(x[:, ch], dtype=torch.float64) / (levels - 1)
        return x




def encode_uniform(coder, x: np.ndarray, levels: int) -> None:
    """Push every pixel (any shape) under the uniform code, log2(levels) bits each."""
    coder.encode_reverse(x.reshape(-1).astype(np.int32), coder_models().Uniform(levels))


def decode_uniform(coder, shape: tuple[int, ...], levels: int) -> np.ndarray:
    return coder.decode(coder_models().Uniform(levels), int(np.prod(shape))).reshape(shape)


def _categorical():
    return coder_models().Categorical(perfect=False)


def _bernoulli():
    return coder_models().Bernoulli(perfect=False)


# ---- the PNG fallback: the deflate stream of an optimized PNG, without its chunks -------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _picture(x: np.ndarray, levels: int):
    """The images (N, C, H, W) stacked into one picture (N*H, W): 1-bit for two levels."""
    from PIL import Image

    n, c, h, w = x.shape
    a = x.transpose(0, 2, 3, 1).reshape(n * h, w, c)
    if levels == 2:
        return Image.fromarray((a[..., 0] * 255).astype(np.uint8)).convert("1")
    return Image.fromarray(a[..., 0] if c == 1 else a)


def png_stream(x: np.ndarray, levels: int) -> bytes:
    """The image data (the IDAT chunks' content) of the optimized PNG of the images
    stacked: what a PNG spends on the pixels, without its 57 bytes of signature and
    chunks (:func:`from_png_stream` puts them back)."""
    import io

    out = io.BytesIO()
    _picture(x, levels).save(out, "PNG", optimize=True)
    png, at, data = out.getvalue(), len(PNG_SIGNATURE), b""
    while at < len(png):
        n = int.from_bytes(png[at:at + 4], "big")
        if png[at + 4:at + 8] == b"IDAT":
            data += png[at + 8:at + 8 + n]
        at += 12 + n
    return data


def from_png_stream(data: bytes, shape: tuple[int, int, int, int], levels: int) -> np.ndarray:
    """The images (N, C, H, W) of a :func:`png_stream`; ValueError if it does not decode
    to them."""
    import io
    import struct

    from PIL import Image

    n, c, h, w = shape
    ihdr = struct.pack(">IIBBBBB", w, n * h, 1 if levels == 2 else 8,
                       0 if c == 1 else 2, 0, 0, 0)
    png = PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    try:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            a = np.asarray(im).astype(np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"the PNG stream does not decode ({e})") from None
    if a.shape[:2] != (n * h, w):
        raise ValueError("the PNG stream holds another shape")
    return a.reshape(n, h, w, c).transpose(0, 3, 1, 2)
