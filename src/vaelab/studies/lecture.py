"""The lecture's computations on the reader's own models, one function per section, each
returning numbers and tensors (the page, :mod:`vaelab.app.lecture`, shows them):

    mle          a Gaussian fitted to one pixel's grey values; the factorized model of images
    bayes        posterior = likelihood x prior / evidence on the 2-D latent's grid, and q(z|x)
    gen_disc     a generative (p(x|y)) and a discriminative (p(y|x)) classifier vs labels
    autoencoder  what codes learned (probes, nearest neighbours), and decoding N(0, I)
    compression  bits per image: raw, PNG, xz, the MLE model, the VAE, a compressed file
    imagination  z ~ p(z), E[x|z], x ~ p(x|z) for the same z, timed
"""
from __future__ import annotations

import io
import lzma
import math
import time

import numpy as np
import torch

from ..config import Config
from ..data.splits import Data, data_examples
from ..models.vae import VAE
from .baselines import BASELINES, BaselineSettings, run_baselines
from .classifiers import Task
from .classify import add_codes, fixed_view, run_classifiers
from .evaluate import evaluate
from .posterior import posterior_study
from .sample import imagine

Tensor = torch.Tensor
LN2 = math.log(2)


def mle(data: Data, seed: int = 0) -> dict:
    """Maximum likelihood, first for numbers: N(mu, sigma^2) fitted to the training grey
    values of the pixel that varies most; the log-likelihood over mu, with its maximum at
    the sample mean. Then for images: the factorized Gaussian (every pixel its own
    discretized Gaussian, fitted alike), its mean, samples and test NLL (the ``gaussian``
    row of ``vaelab baselines``)."""
    x = data.train.stored().double().flatten(1) / data.train.max_value  # (N, D) in [0, 1]
    d = int(x.var(0).argmax())
    v = x[:, d]
    mean, var = v.mean().item(), v.var(unbiased=False).item()
    mus = torch.linspace(0, 1, 401, dtype=torch.float64)
    ll = log_likelihood(v, mus, var)
    best = mus[ll.argmax()].item()
    row = run_baselines(data, ["gaussian"])[0]
    model, _ = BASELINES.get("gaussian")(data, BaselineSettings())
    g = torch.Generator().manual_seed(seed)
    shape = data.image_shape
    return {"pixel": divmod(d % (shape[1] * shape[2]), shape[2]), "n": len(v),
            "values": v, "mean": mean, "var": var, "mus": mus, "ll": ll, "grid_argmax": best,
            "grid_step": (mus[1] - mus[0]).item(),
            "slope_at_mean": ((v - mean).sum() / var).item(),  # d ll / d mu: 0 at the MLE
            "factorized": row, "image_mean": model.loc.float().reshape(shape),
            "samples": model.sample(100, g).float().reshape(100, *shape)}


def log_likelihood(v: Tensor, mus: Tensor, var: float) -> Tensor:
    """sum_i log N(v_i; mu, var) for each mu of ``mus``."""
    sq = ((v[None, :] - mus[:, None]) ** 2).sum(1)
    return -0.5 * len(v) * math.log(2 * math.pi * var) - sq / (2 * var)


def bayes(plane: VAE, data: Data, index: int = 0, seed: int = 0) -> dict:
    """Bayes rule for one test image on the 2-D latent's grid: log p(x|z), log p(z), the
    evidence log p(x) (the grid's integral), the posterior and q(z|x); the gap
    log p(x) - ELBO = KL(q(z|x) || p(z|x))."""
    x = data.test.batch(slice(index, index + 1)).to(plane.device)
    study = posterior_study(plane, x, seed=seed)
    return {"index": index, "image": x.cpu(), "grid": study["grids"][0],
            "log_px": study["log_px"][0], "elbo": study["elbo"][0], "gap": study["kl"][0]}


SIZES = (20, 50, 100, 300)  # labelled examples, then all


def gen_disc(data: Data, cfg: Config, vae: VAE, autoencoder: VAE, seed: int = 0) -> dict:
    """Gaussian naive Bayes (generative: p(x|y) p(y), then Bayes rule) against logistic
    regression (discriminative: p(y|x)) on nested labelled subsets; and probes of the codes
    (logistic regression and 10-NN on the VAE's and the autoencoder's posterior means)."""
    data.require_labels("the generative vs discriminative section")
    task = Task(fixed_view(data, cfg.data.binarize_seed + 10), cfg, None, seed=seed)
    add_codes(task, vae, "VAE", 0.0)
    add_codes(task, autoencoder, "autoencoder", 0.0)
    n = len(data.train)
    curves = run_classifiers(task, ["gaussian naive Bayes", "logistic regression"],
                             [*SIZES, n])
    probes = run_classifiers(task, [f"{how} on {rep} codes" for rep in ("VAE", "autoencoder")
                                    for how in ("logistic regression", "10-NN")], [n])
    return {"curves": curves, "probes": probes, "n_train": n, "n_test": len(data.test),
            "task": task}


def autoencoder(task: Task, vae: VAE, ae: VAE, seed: int = 0) -> dict:
    """Nearest neighbours in the autoencoder's code space (test images, then the five
    training images with the closest codes), and what decoding z ~ N(0, I) gives: the VAE's
    prior samples beside the autoencoder's decoder on the same z."""
    train_codes, test_codes, _ = task.features["autoencoder"]
    queries = torch.arange(6)
    dist = torch.cdist(test_codes[queries], train_codes)  # (6, N)
    nearest = dist.topk(5, largest=False).indices  # (6, 5)
    train_x = task.data.train.batch(slice(None)).cpu()
    test_x = task.data.test.batch(queries.to(task.data.test.images.device)).cpu()
    rows = torch.cat([test_x[:, None], train_x[nearest]], 1)  # (6, 6, C, H, W)
    with torch.no_grad():  # z ~ N(0, I) in each model's own code space, seeded alike
        ae_images, vae_images = (
            m.decode(torch.randn(36, m.latent_dim, generator=torch.Generator().manual_seed(
                seed)).to(m.device)).mean.cpu() for m in (ae, vae))
    return {"neighbours": rows.flatten(0, 1), "ae_prior": ae_images, "vae_prior": vae_images}


def compression(data: Data, vae: VAE, factorized: dict, k: int, seed: int = 0) -> dict:
    """Bits per test image: as stored (8 bits a pixel), as PNG (each its own file, and all
    in one), all of them under xz, the factorized MLE model's -log2 p(x), the VAE's -ELBO
    and -log2 p(x) (importance-sampled, k samples; the numbers of ``vaelab evaluate --k``).
    The file that ``vaelab compress`` writes is the page's to add (coding is no study's)."""
    from PIL import Image

    stored = data.test.stored().cpu().numpy()  # uint8 (N, C, H, W), levels 0..K-1
    n, pixels = len(stored), stored[0].size
    scale = 255 // max(1, data.levels - 1)  # as an 8-bit image would hold them
    eight = (stored.astype(np.uint16) * scale).clip(0, 255).astype(np.uint8)

    def png_bytes(a: np.ndarray) -> int:  # (C, H, W) uint8, saved as small as PNG goes
        buf = io.BytesIO()
        Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(
            buf, "PNG", optimize=True)
        return len(buf.getvalue())

    png = sum(png_bytes(img) for img in eight)
    strip = png_bytes(np.concatenate(list(eight), axis=1))  # all images, one under another
    ev = evaluate(vae, data, "test", 1000, seed, k)
    rows = {"raw (8 bits a pixel)": 8.0 * pixels,
            "PNG, each image its own file": 8.0 * png / n,
            "PNG, all images in one file": 8.0 * strip / n,
            "xz, all images": 8.0 * len(lzma.compress(eight.tobytes(), preset=9)) / n,
            "factorized Gaussian (MLE), -log2 p(x)": factorized["nll"] / LN2,
            "VAE, -ELBO": -ev["elbo"] / LN2,
            f"VAE, -log2 p(x) (k = {k})": ev["nll"] / LN2}
    return {"rows": rows, "n": n, "pixels": pixels, "evaluation": ev, "images": stored}


def imagination(vae: VAE, data: Data, n: int = 100, seed: int = 0, repeat: int = 5) -> dict:
    """The lecture's figure (test images; E[x|z] and x ~ p(x|z) for the same z ~ p(z)) and
    the time of that single pass: images per second of ``imagine`` on this machine."""
    g = imagine(vae, n, seed=seed)
    batch = 1000
    imagine(vae, batch, seed=seed)  # warm
    t0 = time.perf_counter()
    for i in range(repeat):
        imagine(vae, batch, seed=seed + i)
    seconds = (time.perf_counter() - t0) / repeat
    return {"data": data_examples(data, n, seed=seed), "mean": g["mean"].cpu(),
            "sample": g["sample"].cpu(), "images_per_second": batch / seconds,
            "batch": batch, "device": str(vae.device)}
