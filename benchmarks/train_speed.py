"""Training speed: vaelab's loop against the standard per-item Dataset + DataLoader loop.

The lecture's reference MLP VAE (784-400-20, ReLU, batch 128, Adam 1e-3) on grey
Fashion-MNIST (the 50k training split). Both loops train the same architecture with the
same loss (Bernoulli cross-entropy summed over pixels, the pytorch/examples objective),
in one process run, alternating, so the machine's noise hits both alike.

* baseline: the pytorch/examples `vae/main.py` pipeline: a map-style Dataset that turns
  each uint8 image into a PIL image and then into a float tensor (what torchvision's
  MNIST + ToTensor do), a shuffling DataLoader, the examples' model and loss.
* vaelab: `vaelab.train` (device-resident uint8 data, index batches, fused Adam), timed by
  its own per-epoch clock (the training loop only, as the baseline), on its second epoch
  so that both loops are timed warm.

    python benchmarks/train_speed.py [--epochs 3] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import vaelab
from vaelab.data import load_data


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """What torchvision.transforms.ToTensor does for a PIL image (torchvision has no CPU
    wheel here, so its few lines are restated)."""
    mode_to_nptype = {"I": np.int32, "I;16": np.int16, "F": np.float32}
    img = torch.from_numpy(np.array(pic, mode_to_nptype.get(pic.mode, np.uint8), copy=True))
    if pic.mode == "1":
        img = 255 * img
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
    img = img.permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


class PerItemImages(Dataset):
    """As torchvision.datasets.MNIST(transform=ToTensor()): a PIL image per item."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.data, self.targets = images, targets  # (N, 28, 28) uint8, (N,) int64
        self.transform = to_tensor

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def baseline_epoch(dataset: Dataset, device: torch.device, model=None, opt=None):
    """pytorch/examples vae/main.py train(), less its print every 10 batches."""
    model = model or ExamplesVAE().to(device)
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=128, shuffle=True,
                        **({"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}))
    model.train()
    train_loss = 0.0
    t0 = time.perf_counter()
    for x, _ in loader:
        x = x.to(device)
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        opt.zero_grad()
        loss.backward()
        train_loss += loss.item()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, model, opt


def vaelab_epochs(data, device: torch.device, epochs: int, likelihood: str,
                  precision: str = "fp32") -> tuple[list[float], float]:
    cfg = vaelab.Config().override(dataset="fashion-mnist", binarize="none", latent_dim=20,
                                   hidden="400", likelihood=likelihood, batch_size=128,
                                   epochs=epochs, device=device.type, val_size=10000,
                                   precision=precision)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Bernoulli on grey values: the baseline's loss
        r = vaelab.train(cfg, os.path.join(d, "run"), data=data, progress=False)
    return [m["seconds"] for m in r.history], r.history[-1]["val_elbo"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_data(vaelab.DataConfig(dataset="fashion-mnist", binarize="none"), device)
    dataset = PerItemImages(data.train.images.cpu()[:, 0], data.train.labels.cpu())  # same 50k
    n = len(dataset)

    runs = {"DataLoader + per-item PIL (pytorch/examples)": None,
            "vaelab, Bernoulli (same loss)": ("bernoulli", "fp32"),
            "vaelab, Bernoulli, --precision bf16": ("bernoulli", "bf16"),
            "vaelab, continuous Bernoulli": ("cbernoulli", "fp32")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    val: dict[str, float] = {}
    model = opt = None
    for _ in range(args.epochs):  # alternate so that drifts in machine load hit all alike
        for name, spec in runs.items():
            if spec is None:
                t, model, opt = baseline_epoch(dataset, device, model, opt)
            else:  # two epochs from the same seed; the second is timed (warm, as the
                ts, val[name] = vaelab_epochs(data, device, 2, *spec)  # baseline's model)
                t = ts[-1]
            times[name].append(t)

    hw = (torch.cuda.get_device_name(device) if device.type == "cuda"
          else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"reference MLP VAE 784-400-20, batch 128, Adam; grey Fashion-MNIST, {n} images/epoch")
    print(f"device: {device.type} ({hw}); torch {torch.__version__}; {args.epochs} epochs each, "
          "median")
    print()
    print("| loop | s/epoch (median) | s/epoch (min) | images/s | speed-up "
          "| val ELBO after 2 epochs |")
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(next(iter(times.values())))
    for name, ts in times.items():
        m = statistics.median(ts)
        v = f"{val[name]:.2f}" if name in val else "-"
        print(f"| {name} | {m:.2f} | {min(ts):.2f} | {n / m:,.0f} | {base / m:.2f}x | {v} |")


if __name__ == "__main__":
    main()
