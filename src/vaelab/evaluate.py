"""Evaluation of a trained model on a split: ELBO, reconstruction and KL in nats per example,
and bits per dimension. Returns plain dicts; printing is the CLI's job."""
from __future__ import annotations

import math

import torch

from .data import Data
from .model import VAE, seeded
from .objectives import bits_per_dim, elbo_over


@torch.no_grad()
def evaluate(model: VAE, data: Data, split: str = "test", batch_size: int = 1000,
             seed: int = 0) -> dict:
    """Test-set ELBO terms of ``model``. Seeded, and the caller's RNG is left untouched.

    ``elbo`` is a lower bound on log p(x) (nats per example, <= 0 for discrete data);
    ``bits_per_dim`` is ``-elbo / (D ln 2)``. For a continuous likelihood (``discrete`` is
    False) these are densities on [0, 1]^D, not probabilities of the 8-bit data."""
    s = data.split(split)
    model.eval()
    with seeded(seed, model.device):
        res = elbo_over(model, s.batches(batch_size))
    dims = math.prod(data.image_shape)
    return {"dataset": data.name, "split": split, "n": res["n"], "elbo": res["elbo"],
            "recon": res["recon"], "kl": res["kl"],
            "bits_per_dim": bits_per_dim(-res["elbo"], dims), "dims": dims,
            "likelihood": model.likelihood.name, "discrete": model.likelihood.discrete}
