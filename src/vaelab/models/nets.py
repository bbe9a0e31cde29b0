"""Plain tensor -> tensor networks. They know nothing of probability: a head in
``distributions`` turns their outputs into distributions."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..registry import Registry

Tensor = torch.Tensor

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
for _name, _cls in {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU,
                    "tanh": nn.Tanh, "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU}.items():
    ACTIVATIONS.register(_name)(_cls)


class MLP(nn.Sequential):
    """Linear layers with an activation (and optionally dropout) between them:
    ``in -> hidden... -> out``.
    Works on any leading dimensions: ``(..., in) -> (..., out)``."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: str = "relu", dropout: float = 0.0):
        act = ACTIVATIONS.get(activation)
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            # dropout beside the activation: the Linear layers keep their names either way
            layers += [nn.Linear(a, b), nn.Sequential(act(), nn.Dropout(dropout)) if dropout
                       else act()]
        layers.append(nn.Linear(widths[-1], out_features))
        super().__init__(*layers)


class Labelled(nn.Module):
    """``post(net([pre(h), onehot(y)]))``: a net that also reads a class label y (B,), its
    one-hot code appended to the features (..., F) -> (..., F + K), broadcast over leading
    sample dimensions. The conditional VAE's encoder and decoder."""

    def __init__(self, pre: nn.Module, net: nn.Module, post: nn.Module, classes: int):
        super().__init__()
        self.pre, self.net, self.post, self.classes = pre, net, post, classes

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        h = self.pre(h)  # (..., B, F)
        onehot = nn.functional.one_hot(y, self.classes).to(h.dtype)  # (B, K)
        return self.post(self.net(torch.cat([h, onehot.expand(*h.shape[:-1], -1)], -1)))


# A net factory builds (encoder, decoder) for images of shape (C, H, W), conditioned on a
# label of ``classes`` values when classes > 0 (then both also take y: (B,)):
#   encoder: (B, C, H, W) -> (B, enc_out)
#   decoder: (..., latent_dim) -> (..., dec_channels, H, W)
NetFactory = Callable[[ModelConfig, tuple[int, int, int], int, int, int],
                      tuple[nn.Module, nn.Module]]
NETS: Registry[NetFactory] = Registry("net")


@NETS.register("mlp")
def mlp_nets(cfg: ModelConfig, image_shape: tuple[int, int, int], enc_out: int,
             dec_channels: int, classes: int = 0) -> tuple[nn.Module, nn.Module]:
    c, h, w = image_shape
    d = c * h * w
    flat, unflat = nn.Flatten(-3), nn.Unflatten(-1, (dec_channels, h, w))
    enc = MLP(d + classes, cfg.hidden, enc_out, cfg.activation, cfg.dropout)
    dec = MLP(cfg.latent_dim + classes, tuple(reversed(cfg.hidden)), dec_channels * h * w,
              cfg.activation, cfg.dropout)
    if classes:
        return Labelled(flat, enc, nn.Identity(), classes), \
            Labelled(nn.Identity(), dec, unflat, classes)
    return nn.Sequential(flat, enc), nn.Sequential(dec, unflat)


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))): 3x3 convolutions that keep channels and size."""

    def __init__(self, channels: int, activation: str):
        super().__init__()
        act = ACTIVATIONS.get(activation)
        self.body = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1), act(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _stage_sizes(h: int, w: int, stages: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 stage (ceil), from the image's own size."""
    sizes = [(h, w)]
    for _ in range(stages):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, F): per stage a stride-2 conv (halving the size, rounding up)
    and residual blocks; then flattened. Any image size, grayscale or RGB."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for width in cfg.conv_widths:
            layers.append(nn.Conv2d(c, width, 3, stride=2, padding=1))
            layers += [ResBlock(width, cfg.activation) for _ in range(cfg.res_blocks)]
            c = width
        layers.append(ACTIVATIONS.get(cfg.activation)())
        self.net = nn.Sequential(*layers, nn.Flatten(-3))
        hh, ww = _stage_sizes(h, w, len(cfg.conv_widths))[-1]
        self.features = c * hh * ww

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(..., F) -> (..., out_channels, H, W): the encoder's stages in reverse, each
    upsampling (nearest) to the exact size the encoder had there, then a 3x3 conv."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], out_channels: int):
        super().__init__()
        _, h, w = image_shape
        self.sizes = _stage_sizes(h, w, len(cfg.conv_widths))[::-1]  # smallest first
        widths = list(reversed(cfg.conv_widths))
        self.top = (widths[0], *self.sizes[0])
        self.features = widths[0] * self.sizes[0][0] * self.sizes[0][1]
        act = ACTIVATIONS.get(cfg.activation)
        self.stages = nn.ModuleList()
        for i, width in enumerate(widths):
            nxt = widths[i + 1] if i + 1 < len(widths) else widths[-1]
            self.stages.append(nn.ModuleList([
                nn.Sequential(*[ResBlock(width, cfg.activation) for _ in range(cfg.res_blocks)]),
                nn.Sequential(act(), nn.Conv2d(width, nxt, 3, padding=1))]))
        self.out = nn.Sequential(act(), nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, h: Tensor) -> Tensor:
        lead = h.shape[:-1]
        x = h.reshape(-1, *self.top)  # (N, C, h, w)
        for (blocks, conv), size in zip(self.stages, self.sizes[1:]):
            x = conv(nn.functional.interpolate(blocks(x), size=size, mode="nearest"))
        x = self.out(x)
        return x.reshape(*lead, *x.shape[1:])


@NETS.register("conv")
def conv_nets(cfg: ModelConfig, image_shape: tuple[int, int, int], enc_out: int,
              dec_channels: int, classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """Convolutional encoder and decoder with residual blocks (``conv_widths``,
    ``res_blocks``), joined to the latent by linear layers (which also read the label of a
    conditional model)."""
    trunk, head = ConvEncoder(cfg, image_shape), ConvDecoder(cfg, image_shape, dec_channels)
    enc = nn.Linear(trunk.features + classes, enc_out)
    dec = nn.Linear(cfg.latent_dim + classes, head.features)
    if classes:
        return Labelled(trunk, enc, nn.Identity(), classes), \
            Labelled(nn.Identity(), dec, head, classes)
    return nn.Sequential(trunk, enc), nn.Sequential(dec, head)
