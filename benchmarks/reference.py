"""The plain recipe, in plain PyTorch (no vaelab imports): the floor every vaelab default
must clear, on the same data, splits, binarization seeds and k = 5000 protocol as
`vaelab evaluate`.

    encoder 784-512-512-2*50, decoder 50-512-512-784, ELU; Gaussian q, N(0, I) prior;
    Bernoulli logits on binarized images, on grey levels a Gaussian discretized to them;
    Adam, lr 1e-3, batch 100, cosine annealing to 0 over all epochs (stepped per epoch);
    KL weight rising linearly from 1/25 to 1 over the first 10 % of the epochs;
    training images re-binarized every epoch; 250 epochs; test binarized once.

    python benchmarks/reference.py --dataset digits
    python benchmarks/reference.py --dataset fashion-mnist [--data-dir DIR]
    python benchmarks/reference.py --dataset idx --data-dir DIR   # MNIST-named IDX files
    python benchmarks/reference.py --dataset fashion-mnist --minutes 15  # equal time

With ``--minutes M`` the recipe gets M minutes of training instead of 250 epochs: its
epochs (and so its cosine and warm-up lengths) are set after the first one is timed.

Prints one JSON line: nll (k importance samples, nats per test image), its standard error,
the test ELBO, the best validation ELBO's epoch, the minutes of training.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
PLACES = [Path("/usr/share/datasets/fashion-mnist"), Path.home() / ".cache/vaelab/fashion-mnist"]


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def idx_pair(root: Path, part: str) -> np.ndarray:
    for name in (NAMES[part][0] + ".gz", NAMES[part][0]):
        if (root / name).is_file():
            return read_idx(root / name)
    raise SystemExit(f"{root} has no {NAMES[part][0]}[.gz]")


def load(dataset: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, int, str, int]:
    """(train images, test images, max value, default binarization, default val size)."""
    if dataset == "digits":  # vaelab's: a fixed 20 % (seed 0) held out as the test set
        from sklearn.datasets import load_digits

        x = load_digits().images.astype(np.uint8)
        perm = np.random.default_rng(0).permutation(len(x))
        n_test = int(round(0.2 * len(x)))
        return x[perm[n_test:]], x[perm[:n_test]], 16, "none", None
    roots = [Path(data_dir)] if data_dir else PLACES
    root = next((r for r in roots if (r / (NAMES["test"][0] + ".gz")).is_file()
                 or (r / NAMES["test"][0]).is_file()), None)
    if root is None:
        raise SystemExit(f"no {dataset} files in {', '.join(map(str, roots))}; give --data-dir")
    binarize = "dynamic" if dataset == "fashion-mnist" else "none"
    val = 10000 if dataset == "fashion-mnist" else None
    return idx_pair(root, "train"), idx_pair(root, "test"), 255, binarize, val


def binarize_once(images: np.ndarray, max_value: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.from_numpy(images).float() / max_value, generator=g)


def dnormal_log_prob(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, levels: int
                     ) -> torch.Tensor:
    """log P(level of x) under N(loc, scale^2) discretized to ``levels`` bins on [0, 1]
    (the end bins hold the tails), with finite values and gradients everywhere."""
    half = 0.5 / (levels - 1)
    raw_hi, raw_lo = (x + half - loc) / scale, (x - half - loc) / scale
    # the end bins reach 60 sigma past their other edge (and the mean): infinite to float
    # precision, and finite, so that no branch torch.where drops leaks a NaN gradient
    lo = torch.where(x <= 1e-6, raw_hi.clamp(max=0) - 60, raw_lo)
    hi = torch.where(x >= 1 - 1e-6, raw_lo.clamp(min=0) + 60, raw_hi)
    right = lo > 0  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): use the small tails
    big = torch.special.log_ndtr(torch.where(right, -lo, hi))
    small = torch.special.log_ndtr(torch.where(right, -hi, lo))
    gap = (big - small).clamp_min(1e-12)
    mass = big + torch.log(-torch.expm1(-gap))
    # a bin much narrower than the Gaussian: its density at x times the bin's width
    density = -0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
    return torch.where(gap > 1e-4, mass, density + math.log(2 * half))


class VAE(nn.Module):
    def __init__(self, d: int, latent: int = 50, hidden: int = 512, grey_levels: int = 0):
        super().__init__()
        out = 2 * d if grey_levels else d
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.ELU(), nn.Linear(hidden, hidden),
                                 nn.ELU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ELU(), nn.Linear(hidden, hidden),
                                 nn.ELU(), nn.Linear(hidden, out))
        self.latent, self.levels = latent, grey_levels

    def log_px_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (..., B)
        out = self.dec(z)
        if not self.levels:
            return -nn.functional.binary_cross_entropy_with_logits(
                out, x.expand_as(out), reduction="none").sum(-1)
        loc, raw = out.chunk(2, -1)
        scale = nn.functional.softplus(raw) + 1e-3
        return dnormal_log_prob(x.expand_as(loc), loc, scale, self.levels).sum(-1)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.enc(x).chunk(2, -1)
        return mu, nn.functional.softplus(raw) + 1e-6

    def elbo(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, std = self.posterior(x)
        z = mu + std * torch.randn_like(std)
        kl = 0.5 * (mu ** 2 + std ** 2 - 1 - 2 * std.log()).sum(-1)
        return self.log_px_z(x, z), kl

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, chunk: int = 500) -> torch.Tensor:
        mu, std = self.posterior(x)
        ws = []
        for i in range(0, k, chunk):
            eps = torch.randn(min(chunk, k - i), *mu.shape)
            z = mu + std * eps
            log_q = (-0.5 * eps ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_p = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            ws.append(self.log_px_z(x, z) + log_p - log_q)
        return torch.logsumexp(torch.cat(ws), 0) - math.log(k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist", "idx"])
    ap.add_argument("--data-dir")
    ap.add_argument("--epochs", type=int, default=250)
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="fit the epochs to this many minutes of training (after the first)")
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--binarize", choices=["auto", "none", "dynamic"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.minutes < 0 or a.epochs < 2:
        ap.error("--minutes must be >= 0 (0: --epochs) and --epochs >= 2")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train_x, test_x, top, binarize, val_size = load(a.dataset, a.data_dir)
    binarize = binarize if a.binarize == "auto" else a.binarize
    n = len(train_x)
    val_size = val_size if val_size is not None else n // 10
    perm = np.random.default_rng(0).permutation(n)  # vaelab's split_seed 0: val first
    val_x, train_x = train_x[perm[:val_size]], train_x[perm[val_size:]]

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(len(t), -1)

    if binarize == "dynamic":  # val and test drawn once with vaelab's seeds, train anew
        val, test = (flat(binarize_once(v, top, s)) for v, s in ((val_x, 1), (test_x, 2)))
        grey = flat(torch.from_numpy(train_x).float() / top)
    else:
        val, test, grey = (flat(torch.from_numpy(v).float() / top)
                           for v in (val_x, test_x, train_x))
    model = VAE(grey.shape[1], grey_levels=0 if binarize == "dynamic" else top + 1)
    lr = 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    epochs, best, best_epoch, t0 = a.epochs, -math.inf, 0, time.perf_counter()
    state, epoch = None, 0
    while epoch < epochs:
        for group in opt.param_groups:  # cosine annealing to 0, stepped per epoch
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        warm = max(1, round(0.1 * epochs))
        beta = min(1.0, 1 / 25 + (1 - 1 / 25) * epoch / warm)
        x_all = torch.bernoulli(grey) if binarize == "dynamic" else grey
        model.train()
        for idx in torch.randperm(len(x_all)).split(100):
            recon, kl = model.elbo(x_all[idx])
            loss = -(recon - beta * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            recon, kl = model.elbo(val)
            v = (recon - kl).mean().item()
        if v > best:
            best, best_epoch = v, epoch + 1
            state = {k: t.clone() for k, t in model.state_dict().items()}
        epoch += 1
        if a.minutes and epoch == 1:
            epochs = max(2, int(a.minutes * 60 / (time.perf_counter() - t0)))
    minutes = (time.perf_counter() - t0) / 60
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(a.seed)
        recon, kl = model.elbo(test)
        ll = torch.cat([model.log_likelihood(b, a.k) for b in test.split(100)])
    print(json.dumps({"dataset": a.dataset, "binarize": binarize, "epochs": epochs,
                      "k": a.k, "nll": -ll.mean().item(),
                      "nll_stderr": ll.std().item() / math.sqrt(len(ll)),
                      "elbo": (recon - kl).mean().item(), "best_val_elbo": best,
                      "best_epoch": best_epoch, "train_minutes": round(minutes, 2),
                      "n_train": len(grey), "n_test": len(test)}))


if __name__ == "__main__":
    main()
