"""Plain tensor -> tensor networks. They know nothing of probability: a head in
``distributions`` turns their outputs into distributions."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from .config import ModelConfig, Registry

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


# A net factory builds (encoder, decoder) for images of shape (C, H, W):
#   encoder: (B, C, H, W) -> (B, enc_out)
#   decoder: (..., latent_dim) -> (..., dec_channels, H, W)
NetFactory = Callable[[ModelConfig, tuple[int, int, int], int, int], tuple[nn.Module, nn.Module]]
NETS: Registry[NetFactory] = Registry("net")


@NETS.register("mlp")
def mlp_nets(cfg: ModelConfig, image_shape: tuple[int, int, int], enc_out: int,
             dec_channels: int) -> tuple[nn.Module, nn.Module]:
    c, h, w = image_shape
    d = c * h * w
    encoder = nn.Sequential(nn.Flatten(-3), MLP(d, cfg.hidden, enc_out, cfg.activation))
    decoder = nn.Sequential(MLP(cfg.latent_dim, tuple(reversed(cfg.hidden)), dec_channels * h * w,
                                cfg.activation),
                            nn.Unflatten(-1, (dec_channels, h, w)))
    return encoder, decoder
