"""Bayes rule, computed: for a model with a 2-D latent, p(x) = integral of p(x|z) p(z) dz
by numerical integration on a grid, the true posterior p(z|x) = p(x|z) p(z) / p(x) beside
the encoder's q(z|x), and the gap between them, KL(q || p(z|x)) = log p(x) - ELBO."""
from __future__ import annotations

import math

import torch

from ..models.distributions import independent_normal
from ..models.vae import VAE
from ..noise import seeded
from ..objectives import elbo

Tensor = torch.Tensor


@torch.no_grad()
def posterior_study(model: VAE, x: Tensor, seed: int = 0, k: int = 1000) -> dict:
    """Bayes rule against the encoder, for a model with a 2-D latent: per image of ``x``
    the exact ``log_px`` (numerical integration, :func:`posterior_grid`), the ``elbo``
    (k samples of q, seeded) and their difference KL(q(z|x) || p(z|x)) = log p(x) - ELBO
    (``kl``), and the ``grids`` to draw."""
    grids = posterior_grid(model, x)
    with seeded(seed, model.device):
        elbos = elbo(model, x, k=k)[1].elbo.tolist()
    exact = [g["log_px"] for g in grids]
    return {"log_px": exact, "elbo": elbos, "kl": [a - b for a, b in zip(exact, elbos)],
            "grids": grids}


@torch.no_grad()
def posterior_grid(model: VAE, x: Tensor, n: int = 201, extent: float = 5.0,
                   mass: float = 1e-7) -> list[dict]:
    """Bayes rule on a grid, for a model with a 2-D latent: for each image of ``x``
    (B, C, H, W), log p(x, z) = log p(x|z) + log p(z) on an n x n grid; the exact
    log p(x) = log sum_grid p(x, z) dA by numerical integration; the true posterior
    p(z|x) = p(x, z) / p(x) and the encoder's q(z|x) on the same grid.

    A coarse grid over [-extent, extent]^2 finds where the posterior has mass (cells above
    ``mass`` times the largest); a second n x n grid over that box, widened by two coarse
    cells, integrates. Returns one dict per image: ``log_px``, ``zs`` (the two axes),
    ``log_post`` and ``log_q`` (n, n), and the two factors of Bayes rule, ``log_lik``
    log p(x|z) and ``log_prior`` log p(z) (n, n)."""
    model.require_planar("the posterior grid")
    model.eval()
    dev = model.device
    prior, q_all = model.prior(), model.encode(x)
    out = []

    def grid(lo: Tensor, hi: Tensor):
        a = torch.linspace(lo[0].item(), hi[0].item(), n, device=dev, dtype=x.dtype)
        b = torch.linspace(lo[1].item(), hi[1].item(), n, device=dev, dtype=x.dtype)
        z = torch.stack(torch.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2)  # (n*n, 2)
        return a, b, z, (a[1] - a[0]) * (b[1] - b[0])

    def log_terms(z: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:  # (n*n,) each
        lik = torch.cat([model.decode(zc).log_prob(xi) for zc in z.split(4096)])
        return lik, prior.log_prob(z)

    def log_joint(z: Tensor, xi: Tensor) -> Tensor:  # (n*n,)
        lik, pri = log_terms(z, xi)
        return lik + pri

    lim = torch.tensor([extent, extent], device=dev, dtype=x.dtype)
    a, b, zc, _ = grid(-lim, lim)
    step = torch.stack([a[1] - a[0], b[1] - b[0]])
    for i in range(len(x)):
        xi = x[i]
        lj = log_joint(zc, xi)
        keep = zc[lj > lj.max() + math.log(mass)]
        a, b, z, area = grid(keep.min(0).values - 2 * step, keep.max(0).values + 2 * step)
        lik, pri = log_terms(z, xi)
        lj = lik + pri
        log_px = torch.logsumexp(lj, 0) + torch.log(area)
        q = independent_normal(q_all.mean[i], q_all.stddev[i])
        out.append({"log_px": log_px.item(), "zs": (a.cpu(), b.cpu()),
                    "log_post": (lj - log_px).reshape(n, n).cpu(),
                    "log_q": q.log_prob(z).reshape(n, n).cpu(),
                    "log_lik": lik.reshape(n, n).cpu(), "log_prior": pri.reshape(n, n).cpu()})
    return out
