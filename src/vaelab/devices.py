"""Which device a command computes on: ``auto`` picks CUDA, then MPS, then the CPU."""
from __future__ import annotations

import torch

from .registry import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` (``cuda:N``) or ``mps`` -> a device that exists here."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available; use --device auto")
    return torch.device(name)
