"""Generation ("imagination") and reconstruction: tensors only, no files.

From one z ~ p(z) both the mean image E[x|z] and a sample x ~ p(x|z) are taken, so the
"Mean samples" and "Samples" grids show the same latent codes."""
from __future__ import annotations

import torch

from .model import VAE, seeded

Tensor = torch.Tensor


@torch.no_grad()
def imagine(model: VAE, n: int = 100, temperature: float = 1.0, seed: int | None = 0
            ) -> dict[str, Tensor]:
    """z ~ p(z) at ``temperature``; returns ``z`` (n, L), ``mean`` = E[x|z] and
    ``sample`` ~ p(x|z), both (n, C, H, W)."""
    model.eval()
    with seeded(seed, model.device):
        z, px = model.sample(n, temperature)
        return {"z": z, "mean": px.mean, "sample": px.sample()}


@torch.no_grad()
def reconstruct(model: VAE, x: Tensor) -> Tensor:
    """E[x | z = E_q[z|x]]: the decoder's mean at the posterior mean (no sampling)."""
    model.eval()
    return model.decode(model.encode(x).mean).mean
