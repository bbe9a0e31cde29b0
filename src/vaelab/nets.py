"""Plain tensor -> tensor networks. They know nothing of probability: a head in
``distributions`` turns their outputs into distributions."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .config import ModelConfig, Registry

Tensor = torch.Tensor

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
for _name, _cls in {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU,
                    "tanh": nn.Tanh, "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU}.items():
    ACTIVATIONS.register(_name)(_cls)


class MLP(nn.Sequential):
    """Linear layers with an activation between them: ``in -> hidden... -> out``.
    Works on any leading dimensions: ``(..., in) -> (..., out)``."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: str = "relu"):
        act = ACTIVATIONS.get(activation)
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act()]
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
    enc = MLP(d + classes, cfg.hidden, enc_out, cfg.activation)
    dec = MLP(cfg.latent_dim + classes, tuple(reversed(cfg.hidden)), dec_channels * h * w,
              cfg.activation)
    if classes:
        return Labelled(flat, enc, nn.Identity(), classes), \
            Labelled(nn.Identity(), dec, unflat, classes)
    return nn.Sequential(flat, enc), nn.Sequential(dec, unflat)
