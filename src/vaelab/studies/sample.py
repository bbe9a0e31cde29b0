"""Generation ("imagination") and reconstruction: tensors only, no files.

From one z ~ p(z) both the mean image E[x|z] and a sample x ~ p(x|z) are taken, so the
"Mean samples" and "Samples" grids show the same latent codes."""
from __future__ import annotations

import torch

from ..models.priors import StandardNormalPrior
from ..models.vae import VAE
from ..noise import seeded

Tensor = torch.Tensor


@torch.no_grad()
def imagine(model: VAE, n: int = 100, temperature: float = 1.0, seed: int | None = 0,
            y: Tensor | None = None) -> dict[str, Tensor]:
    """z ~ p(z) at ``temperature``; returns ``z`` (n, L), ``mean`` = E[x|z] and
    ``sample`` ~ p(x|z), both (n, C, H, W). A conditional model needs the labels y (n,)."""
    model.eval()
    with seeded(seed, model.device):
        z, px = model.sample(n, temperature, y)
        return {"z": z, "mean": px.mean, "sample": px.sample()}


@torch.no_grad()
def reconstruct(model: VAE, x: Tensor, y: Tensor | None = None) -> Tensor:
    """E[x | z = E_q[z|x]]: the decoder's mean at the posterior mean (no sampling)."""
    model.eval()
    return model.decode(model.encode(x, y).mean, y).mean


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between codes a, b (..., L) at fractions t (T,) -> (T, ..., L).
    Under a N(0, I) prior it keeps the norm typical of the prior, where the straight line
    between two samples passes through the improbable region near 0 (White 2016)."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(cos)[None, ..., None]  # (1, ..., 1)
    t = t.reshape(-1, *[1] * a.dim())
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def interpolate(model: VAE, xa: Tensor, xb: Tensor, steps: int = 10) -> Tensor:
    """Decoder means along the straight line between the posterior means E_q[z|x_a] and
    E_q[z|x_b] (codes, not samples): (P, steps, C, H, W) for P pairs of images."""
    model.eval()
    za, zb = model.encode(xa).mean, model.encode(xb).mean  # (P, L)
    t = torch.linspace(0, 1, steps, device=za.device)[:, None, None]  # (S, 1, 1)
    return model.decode(za + t * (zb - za)).mean.transpose(0, 1)  # (S, P, ...) -> (P, S, ...)


@torch.no_grad()
def prior_interpolate(model: VAE, pairs: int = 5, steps: int = 10, seed: int | None = 0
                      ) -> Tensor:
    """Decoder means along great circles between pairs of prior samples: (P, S, C, H, W)."""
    model.eval()
    with seeded(seed, model.device):
        z = model.prior().sample((2, pairs))  # (2, P, L)
    t = torch.linspace(0, 1, steps, device=z.device)
    return model.decode(slerp(z[0], z[1], t)).mean.transpose(0, 1)


@torch.no_grad()
def prior_quantiles(model: VAE, n: int, tail: float = 0.05, samples: int = 20_000,
                    seed: int = 0) -> Tensor:
    """(n, L): for every latent dimension, n values with equally spaced probabilities from
    ``tail`` to 1 - ``tail`` under the prior's marginal of that dimension (Kingma & Welling
    2014, fig. 4: a grid on the unit square through the inverse CDF). Exact for N(0, I);
    for a learned or hierarchical prior, quantiles of ``samples`` seeded draws of p(z)."""
    p = torch.linspace(tail, 1 - tail, n, device=model.device)
    if isinstance(model.prior, StandardNormalPrior):
        return torch.distributions.Normal(0.0, 1.0).icdf(p)[:, None].expand(n, model.latent_dim)
    with seeded(seed, model.device):
        z = model.prior().sample((samples,)).reshape(samples, -1)  # (S, L)
    return torch.quantile(z, p, dim=0)


@torch.no_grad()
def traverse(model: VAE, x: Tensor, dims: list[int], steps: int = 11,
             y: Tensor | None = None) -> Tensor:
    """Latent traversals: start at the posterior mean of one image x (1, C, H, W) (with
    label y (1,) for a conditional model), move one coordinate over the prior's quantiles
    of that coordinate, decode the means: (len(dims), steps, C, H, W)."""
    model.eval()
    z0 = model.encode(x, y).mean[0]  # (L,)
    values = prior_quantiles(model, steps)  # (S, L)
    z = z0.repeat(len(dims), steps, 1)  # (R, S, L)
    for r, d in enumerate(dims):
        z[r, :, d] = values[:, d]
    return model.decode(z, None if y is None else y.expand(steps)).mean


@torch.no_grad()
def manifold(model: VAE, n: int = 20) -> Tensor:
    """2-D latent: decoder means over an n x n grid of prior quantiles, (n, n, C, H, W);
    rows run from high z2 (top) to low, columns from low z1 to high."""
    model.require_planar("the manifold")
    model.eval()
    q = prior_quantiles(model, n)  # (n, 2)
    z = torch.stack(torch.meshgrid(q[:, 1].flip(0), q[:, 0], indexing="ij"), -1)[..., [1, 0]]
    return model.decode(z).mean


@torch.no_grad()
def latent_means(model: VAE, split, batch_size: int = 1000) -> Tensor:
    """E_q[z|x] (E_q[z|x,y] for a conditional model) for every image of a split: (N, L).
    Held-out splits are fixed, so this is deterministic."""
    model.eval()
    if model.classes:
        return torch.cat([model.encode(x, y).mean
                          for x, y in split.batches(batch_size, labels=True)])
    return torch.cat([model.encode(x).mean for x in split.batches(batch_size)])
