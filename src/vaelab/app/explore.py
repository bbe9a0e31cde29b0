"""A trained model, ready to be explored: every question the explorer page asks is one
batched forward pass over tensors (the web server, :mod:`vaelab.app.serve`, is the face).

* imagination: z ~ p(z) at a temperature; E[x|z] and x ~ p(x|z) of the same z;
* the latent map: a plane through the codes (the latent itself when it is 2-D, else the
  first two principal axes of the test images' posterior means), their points and labels,
  and any point of the plane decoded;
* the dimensions ordered by their KL (the most informative first; a VampPrior's by the
  variance of their posterior means);
* an image in: q(z|x), the reconstruction, -ELBO and an importance-sampled log p(x), its
  point on the map, and for a conditional model p(y|x) by Bayes rule;
* interpolations through posterior means (linear) or prior samples (spherical), and for
  a 2-D latent the true posterior p(z|x) on a grid beside q(z|x).
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import torch

from ..data.splits import load_data
from ..noise import seeded
from ..objectives import bits_per_dim, elbo, log_likelihood
from ..runs.rundir import load_run
from ..studies.evaluate import latent_diagnostics, ranked_dimensions
from ..studies.posterior import posterior_grid
from ..studies.sample import imagine, latent_means, slerp

Tensor = torch.Tensor
MAP_POINTS = 2000  # test images drawn on the map


class Explorer:
    """One run, loaded once; thread-safe (one computation at a time)."""

    def __init__(self, spec: str | Path, device: str | torch.device = "cpu",
                 data_dir: str | None = None):
        self.spec = str(spec)
        self.model, self.cfg = load_run(spec, "best", device, data_dir)
        self.model.eval()
        self.lock = threading.Lock()
        data = load_data(self.cfg.data, device)
        split = data.test if len(data.test) else data.val
        n = min(MAP_POINTS, len(split))
        self.data_name = data.name
        self.classes = list(data.classes) if data.classes else []
        self.binary = data.binary
        self.levels = data.levels
        sub = split.subset(torch.arange(n, device=split.images.device))
        with torch.no_grad():
            mu = latent_means(self.model, sub).double().cpu()  # (N, L), the map lives on the CPU
        self.labels = sub.labels.tolist() if sub.labels is not None else []
        self.examples = sub.batch(slice(0, min(n, 100))).cpu()  # images for the page
        diag = latent_diagnostics(self.model, sub)
        self.order, self.dim_labels = ranked_dimensions(diag)  # most informative first
        self.center = mu.mean(0)  # (L,)
        L = self.model.latent_dim
        if L == 2:
            self.axes = torch.eye(2, dtype=torch.float64)
            self.center = torch.zeros(2, dtype=torch.float64)
        elif L == 1:
            self.axes = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
        else:  # the plane of the two principal axes of the codes
            _, _, v = torch.linalg.svd(mu - self.center, full_matrices=False)
            self.axes = v[:2]  # (2, L)
        self.points = ((mu - self.center) @ self.axes.T).tolist() if L > 1 else \
            torch.cat([mu, torch.zeros_like(mu)], 1).tolist()
        with torch.no_grad(), seeded(0, self.model.device):
            q = self.model.prior().sample((4000,)).double().cpu()
        spread = ((q - self.center) @ self.axes.T).abs().quantile(0.99, 0).tolist()
        self.extent = [max(3.0, s) for s in spread]  # the plane shown: +-extent

    # ---- what the page shows ---------------------------------------------------------
    def info(self) -> dict:
        m = self.model
        return {"run": self.spec, "data": self.data_name, "image_shape": list(m.image_shape),
                "latent_dim": m.latent_dim, "layers": m.layers, "likelihood": m.likelihood.name,
                "prior": self.cfg.model.prior, "classes": self.classes,
                "conditional": bool(m.classes), "binary": self.binary, "levels": self.levels,
                "order": self.order, "dim_labels": self.dim_labels,
                "map": {"points": self.points, "labels": self.labels,
                        "extent": self.extent, "plane": m.latent_dim != 2}}

    def _labels(self, n: int, label: int | None) -> Tensor | None:
        if not self.model.classes:
            return None
        y = 0 if label is None else label
        if not 0 <= y < self.model.classes:
            raise ValueError(f"label must be in 0..{self.model.classes - 1}")
        return torch.full((n,), y, dtype=torch.long, device=self.model.device)

    @torch.no_grad()
    def decode(self, z: Tensor, label: int | None = None, sample: bool = False,
               seed: int = 0) -> dict[str, Tensor]:
        """E[x|z] (and x ~ p(x|z)) for codes z (n, L)."""
        with self.lock, seeded(seed, self.model.device):
            z = z.to(self.model.device, torch.float32)
            px = self.model.decode(z, self._labels(len(z), label))
            out = {"mean": px.mean}
            if sample:
                out["sample"] = px.sample()
            return out

    def plane(self, ab: Tensor) -> Tensor:
        """Points (n, 2) of the map -> codes (n, L)."""
        z = self.center + ab.double() @ self.axes
        return z[:, :self.model.latent_dim].float()

    @torch.no_grad()
    def imagine(self, n: int, temperature: float, seed: int, label: int | None = None) -> dict:
        with self.lock:
            return imagine(self.model, n, temperature, seed, self._labels(n, label))

    @torch.no_grad()
    def encode(self, x: Tensor, label: int | None = None, k: int = 256, seed: int = 0) -> dict:
        """An image (1, C, H, W) in [0, 1] on the model's levels: what the model makes of
        it."""
        m = self.model
        x = x.to(m.device)
        dims = math.prod(m.image_shape)
        with self.lock, seeded(seed, m.device):
            if m.classes:  # p(y|x) by Bayes rule from log p(x|y) (uniform prior over y)
                from ..studies.classifiers import bayes_posterior, class_log_likelihoods

                ll = class_log_likelihoods(m, x, k=max(8, k // 8), seed=seed)[0]  # (K,)
                post = bayes_posterior(ll[None], torch.zeros(m.classes,
                                                             device=ll.device))[0].exp()
                label = int(post.argmax()) if label is None else label
            y = self._labels(1, label)
            q = m.encode(x, y)
            recon = m.decode(q.mean, y).mean
            _, t = elbo(m, x, k=32, y=y)
            log_px = log_likelihood(m, x, k=k, batch_size=1, seed=seed,
                                    labels=y).item()
        mu = q.mean[0].double().cpu()
        out = {"mean": mu.tolist(), "std": q.stddev[0].double().cpu().tolist(),
               "recon": recon, "elbo": t.elbo.mean().item(), "log_px": log_px, "k": k,
               "discrete": m.likelihood.discrete,
               "point": (((mu - self.center) @ self.axes.T).tolist() if m.latent_dim > 1
                         else [mu[0].item(), 0.0])}
        out["bits_per_dim"] = bits_per_dim(-out["elbo"], dims, m.likelihood.discrete)
        out["nll_bits_per_dim"] = bits_per_dim(-log_px, dims, m.likelihood.discrete)
        if m.classes:
            out["p_y"] = post.tolist()
            out["label"] = label
        return out

    @torch.no_grad()
    def interpolate(self, xa: Tensor | None, xb: Tensor | None, steps: int, seed: int
                    ) -> Tensor:
        """Decoder means along the line between two images' posterior means, or (no
        images) along the great circle between two prior samples: (steps, C, H, W)."""
        m = self.model
        with self.lock, seeded(seed, m.device):
            t = torch.linspace(0, 1, steps, device=m.device)
            if xa is None:
                z = m.prior().sample((2,))  # (2, L)
                path = slerp(z[0], z[1], t)
            else:
                za, zb = m.encode(xa.to(m.device)).mean[0], m.encode(xb.to(m.device)).mean[0]
                path = za + t[:, None] * (zb - za)
            return m.decode(path).mean

    @torch.no_grad()
    def bayes(self, x: Tensor, n: int = 81) -> dict:
        """For a 2-D latent: the true posterior p(z|x) and q(z|x) on one grid (n x n)."""
        with self.lock:
            g = posterior_grid(self.model, x.to(self.model.device), n=n)[0]
        a, b = g["zs"]
        return {"log_post": g["log_post"], "log_q": g["log_q"], "log_px": g["log_px"],
                "box": [a[0].item(), a[-1].item(), b[0].item(), b[-1].item()]}

    def quantize(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1] -> the model's data: binarized at 1/2 for a binary model,
        rounded to its grey levels otherwise."""
        if self.binary:
            return (x > 0.5).float()
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)
