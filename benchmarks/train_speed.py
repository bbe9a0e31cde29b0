"""Training speed: vaelab's loop against the standard per-item Dataset + DataLoader loop.

Two models on grey Fashion-MNIST (the 50k training split), batch 128, Adam 1e-3:

* mlp: the lecture's reference MLP VAE (784-400-20, ReLU). Baseline: the pytorch/examples
  `vae/main.py` pipeline: a map-style Dataset that turns each uint8 image into a PIL image
  and then into a float tensor (what torchvision's MNIST + ToTensor do), a shuffling
  DataLoader, the examples' model and loss (Bernoulli cross-entropy summed over pixels).
* conv: vaelab's conv VAE (2 stride-2 stages of 32 and 64 channels, a residual block
  each, latent 20). Baseline: the same per-item DataLoader feeding the same model and
  loss through a plain eager step (so only the data path and the step differ).

The floor: for the mlp, a plain loop written in the file with nothing of vaelab (the same
784-400-20 model as the fewest torch ops, the images resident as floats, index batches,
Adam), eager and with its loss under torch.compile; every loop's images/s is also printed
as a fraction of the plain loops' (their first epoch, the compiled one's compilation, is
not timed).

vaelab runs `vaelab.train` (device-resident uint8 data, index batches, fused Adam; its
precision and compilation as `auto` decides them for a run of the default 60 epochs),
timed by its own per-epoch clock (the training loop only, as the baseline, less any
compiling) on its second epoch, so that every loop is timed warm: the run is stopped by a
time limit after its first epoch and resumed for the second. All loops run in one
process, alternating epoch by epoch (each round from another loop on), so the machine's
noise hits them alike. Printed per
loop: seconds per epoch, images/s, speed-up over the model's DataLoader loop, peak memory,
and the arithmetic rate (FLOPs of a training step, counted, times images/s) against the
measured rate of a large matrix product on the same device.

    python benchmarks/train_speed.py [--epochs 3] [--models mlp,conv] [--device cpu]
    python benchmarks/train_speed.py --device cuda --epochs 5          # on a GPU
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
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
from vaelab.data.splits import Data, load_data, resolve
from vaelab.models.vae import VAE
from vaelab.objectives import elbo
from vaelab.devices import _cpu_bf16_speedup
from vaelab.training.step import Loss

sys.path.insert(0, os.path.dirname(__file__))
from common import PeakMemory, flops, hardware, matmul_rate, sync  # noqa: E402


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


MODELS = {"mlp": dict(hidden="400", latent_dim=20, activation="relu"),
          "conv": dict(net="conv", conv_widths="32,64", latent_dim=20, activation="relu")}


def config(model: str, **train) -> vaelab.Config:
    return vaelab.Config().override(dataset="fashion-mnist", binarize="none",
                                    likelihood="bernoulli", batch_size=128, eval_batch_size=250,
                                    **MODELS[model], **train)


def vaelab_model(cfg: vaelab.Config, data: Data) -> VAE:
    return VAE.from_config(resolve(cfg, data).model, data.image_shape)


class Plain(nn.Module):
    """The reference MLP VAE (784-400-20, ReLU) as the fewest torch ops: one matrix for
    the posterior's mean and log-variance, Bernoulli logits; its loss the summed negative
    ELBO. Written here with nothing of vaelab: the floor a training loop cannot beat."""

    def __init__(self):
        super().__init__()
        self.enc, self.q = nn.Linear(784, 400), nn.Linear(400, 40)
        self.dec, self.out = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        mu, logvar = self.q(F.relu(self.enc(x))).chunk(2, -1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.out(F.relu(self.dec(z)))
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def plain_epoch(images: torch.Tensor, device: torch.device, state=None, compiled=False):
    """One epoch of the plain loop: the images resident on the device as floats, a random
    permutation cut into batches of 128, Adam 1e-3 (foreach); ``compiled``: the loss
    under torch.compile (its first epoch pays the compilation)."""
    if state is None:
        model = Plain().to(device)
        step = torch.compile(model) if compiled else model
        state = model, step, torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    model, step, opt = state
    x_all = images.to(device).reshape(len(images), -1).float().div_(255)
    t0 = time.perf_counter()
    for idx in torch.randperm(len(x_all), device=device).split(128):
        loss = step(x_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0, state


def baseline_epoch(dataset: Dataset, device: torch.device, state=None, model_cfg=None,
                   data=None):
    """pytorch/examples vae/main.py train(), less its print every 10 batches; with
    ``model_cfg``, a vaelab model and its ELBO in the same plain loop."""
    if state is None:
        model = (ExamplesVAE() if model_cfg is None else vaelab_model(model_cfg, data)).to(device)
        state = model, torch.optim.Adam(model.parameters(), lr=1e-3)
    model, opt = state
    loader = DataLoader(dataset, batch_size=128, shuffle=True,
                        **({"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}))
    model.train()
    train_loss = 0.0
    t0 = time.perf_counter()
    for x, _ in loader:
        x = x.to(device)
        if model_cfg is None:
            recon, mu, logvar = model(x)
            bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
        else:
            loss = elbo(model, x)[0]
        opt.zero_grad()
        loss.backward()
        train_loss += loss.item()
        opt.step()
    sync(device)
    return time.perf_counter() - t0, state


def vaelab_epoch(data: Data, device: torch.device, cfg: vaelab.Config
                 ) -> tuple[float, float, tuple[str, float]]:
    """Seconds of the second epoch of a fresh run of the config's length (the default 60
    epochs: compile = "auto" decides for the whole run), less any compiling in it; the
    validation ELBO; and how it trained: the precision (``auto`` resolved) and, when the
    step was compiled, the first epoch's seconds of compiling. The run is stopped after each
    of its first two epochs by a time limit and resumed, as a job with one would be."""
    cfg = cfg.override(device=device.type)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Bernoulli on grey values: the baseline's loss
        run = os.path.join(d, "run")
        first = vaelab.train(cfg, run, data=data, progress=False, time_limit=1e-3).history[-1]
        cfg = vaelab.Config.load(os.path.join(run, "config.toml"))
        h = vaelab.train(cfg, run, resume=True, data=data, progress=False,
                         time_limit=1e-3).history[-1]
    compiling = first.get("compile_seconds", 0.0)
    how = (cfg.train.precision + (" compiled" if compiling else ""), compiling)
    return h["seconds"] - h.get("compile_seconds", 0.0), h["val_elbo"], how


def kinds(runs: list[tuple[str, float]]) -> str:
    """How a loop's timed runs trained, counted, with the longest of their first epochs'
    compiling (the cold one: later runs in the process find the compiled code cached):
    "bf16 compiled x5 (3.0 s)"."""
    out = []
    for kind in sorted({k for k, _ in runs}):
        secs, n = max(c for k, c in runs if k == kind), sum(k == kind for k, _ in runs)
        out.append(f"{kind} x{n}" + (f" ({secs:.1f} s)" if secs else ""))
    return ", ".join(out)


def step_flops(cfg: vaelab.Config, data: Data, device: torch.device) -> float:
    """FLOPs per image of one training step (forward and backward) at batch 128."""
    model = vaelab_model(cfg, data).to(device)
    loss = Loss(model, cfg.train, device)
    x = data.train.batch(slice(0, 128))
    return flops(lambda: loss(x, None, torch.tensor(1.0, device=device))[0].backward()) / 128


PLAIN = "plain loop: fewest torch ops, data resident, eager"
PLAIN_COMPILED = "plain loop, its loss under torch.compile"


def contenders(model: str, device: torch.device) -> dict[str, dict | str | None]:
    """Loop name -> vaelab train settings (None: the DataLoader loop; "plain",
    "plain-compiled": the plain loop)."""
    base = ("DataLoader + per-item PIL (pytorch/examples)" if model == "mlp"
            else "DataLoader + per-item PIL, same model, eager step")
    if device.type == "cuda":
        return {base: None, "vaelab, eager (--compile no)": {"compile": "no"},
                "vaelab (compiled step)": {},
                "vaelab, compiled, --precision bf16": {"precision": "bf16"}}
    loops = {base: None, "vaelab (default: --precision auto --compile auto)": {},
             "vaelab, --precision fp32": {"precision": "fp32"}}
    if model == "mlp":  # (auto compiles an MLP's long runs on a CPU, not a conv net's)
        loops.update({"vaelab, --compile no": {"compile": "no"},
                      "vaelab, --precision fp32 --compile no (the defaults before)":
                          {"precision": "fp32", "compile": "no"},
                      PLAIN: "plain", PLAIN_COMPILED: "plain-compiled"})
        # what the optimiser's extras cost per step: the schedule, the moving average,
        # AdamW and clipping (the average's own validation is not in the epoch's seconds)
        loops["vaelab, cosine + EMA + AdamW + clipping"] = {
            "lr_schedule": "cosine", "ema": 0.999, "weight_decay": 1e-4, "grad_clip": 1000.0}
    return loops


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs of each loop")
    ap.add_argument("--models", default="mlp,conv")
    ap.add_argument("--images", type=int, default=50_000, help="training images per epoch")
    ap.add_argument("--conv-images", type=int, default=None,
                    help="per epoch for the conv model (default: 50000 on a GPU, 5000 on "
                         "a CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    full = load_data(vaelab.DataConfig(dataset="fashion-mnist", binarize="none"), device)
    peaks = {torch.float32: matmul_rate(device, torch.float32),
             torch.bfloat16: matmul_rate(device, torch.bfloat16)}
    print(f"device: {device.type} ({hardware(device)}); torch {torch.__version__}; grey "
          f"Fashion-MNIST, batch 128, Adam; median of {args.epochs} epochs per loop")
    print(f"2048x2048 matrix product: {peaks[torch.float32] / 1e9:,.0f} GFLOP/s fp32, "
          f"{peaks[torch.bfloat16] / 1e9:,.0f} GFLOP/s bf16")
    if device.type == "cpu":
        print(f"bf16 products of a decoder's size at {_cpu_bf16_speedup():.2f}x fp32's rate")
    print()
    print("| model | loop | images/epoch | s/epoch | images/s | speed-up | of the plain loop "
          "(eager / compiled) | peak memory | GFLOP/s (% of matmul) | trained in (first epoch's "
          "compiling) | val ELBO |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in args.models.split(","):
        n = args.images if name == "mlp" else (
            args.conv_images or (50_000 if device.type == "cuda" else 5_000))
        data = dataclasses.replace(full, train=full.train.subset(slice(0, n)),
                                   val=full.val.subset(slice(0, 1000)))
        dataset = PerItemImages(data.train.images.cpu()[:, 0], data.train.labels.cpu())
        runs = contenders(name, device)
        times: dict[str, list[float]] = {k: [] for k in runs}
        mem: dict[str, int] = {}
        val: dict[str, float] = {}
        used: dict[str, list[tuple[str, float]]] = {}  # how each timed vaelab run trained
        state, plain = None, {}
        order = list(runs.items())
        for epoch in range(args.epochs + 1):  # alternate, so drifts in load hit all alike,
            turn = epoch % len(order)  # each epoch from another loop on (what runs after
            for loop, spec in order[turn:] + order[:turn]:  # the PIL loop's heap pays more)
                if epoch == args.epochs and not isinstance(spec, str):
                    continue  # (the plain loops' first epoch is a warm-up: one more)
                with PeakMemory(device) as peak:
                    if isinstance(spec, str):
                        t, plain[spec] = plain_epoch(data.train.images[:, 0], device,
                                                     plain.get(spec), spec == "plain-compiled")
                        if epoch == 0:
                            continue
                    elif spec is None:
                        t, state = baseline_epoch(dataset, device, state,
                                                  None if name == "mlp" else config(name), data)
                    else:
                        t, val[loop], trained = vaelab_epoch(data, device, config(name, **spec))
                        used.setdefault(loop, []).append(trained)
                times[loop].append(t)
                mem[loop] = max(mem.get(loop, 0), peak.bytes or 0)
        per_image = step_flops(config(name), data, device)
        base = statistics.median(next(iter(times.values())))
        floors = {k: n / statistics.median(times[k]) for k in (PLAIN, PLAIN_COMPILED)
                  if k in times}
        for loop, ts in times.items():
            m = statistics.median(ts)
            peak_rate = peaks[torch.bfloat16 if any("bf16" in k for k, _ in used.get(loop, ()))
                              else torch.float32]
            rate = per_image * n / m
            v = f"{val[loop]:.2f}" if loop in val else "-"
            ran = kinds(used[loop]) if loop in used else "-"
            of = " / ".join(f"{n / m / f:.2f}" for f in floors.values()) or "-"
            print(f"| {name} | {loop} | {n:,} | {m:.2f} | {n / m:,.0f} | {base / m:.2f}x | "
                  f"{of} | {mem[loop] / 2**20:,.0f} MiB | {rate / 1e9:,.0f} "
                  f"({100 * rate / peak_rate:.0f}%) | {ran} | {v} |", flush=True)
    print()
    print(f"FLOPs per image of a training step: counted by torch.utils.flop_counter; peak "
          f"memory: {'allocated CUDA memory' if device.type == 'cuda' else 'the process peak RSS'}")


if __name__ == "__main__":
    main()
