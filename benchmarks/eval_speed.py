"""Speed of the importance-sampled log-likelihood: vaelab's batched estimator against the
common one-image-at-a-time loop, in one process run.

The model is the Fashion-MNIST MLP VAE of `configs/fashion-mnist-mlp.toml` (784-512-256-50,
Bernoulli decoder), freshly initialised unless --run names a trained run: the arithmetic is
the same. The per-image loop is what many toolkits do: for each test image, draw its k
samples in one batch and take the logsumexp.

    python benchmarks/eval_speed.py [--k 1000] [--n 200] [--device cpu] [--run RUN]
    python benchmarks/eval_speed.py --k 5000 --n 10000 --device cuda --skip-loop   # GPU

Where the device has fast bfloat16 (a CPU with AVX512-BF16 or AMX, a recent GPU) it also
times the estimator with the decoder's matrix products in bf16 and prints how far its
mean log p(x) is from float32's on the same images, samples and seed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

import vaelab
from vaelab.config import Config
from vaelab.devices import fast_bf16
from vaelab.models.vae import VAE
from vaelab.objectives import log_weights
from vaelab.objectives import log_likelihood

sys.path.insert(0, os.path.dirname(__file__))
from common import flops, hardware, matmul_rate, sync  # noqa: E402


def per_image(model: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(len(x)):
            lw = log_weights(model, x[i:i + 1], k)  # (k, 1)
            out.append(torch.logsumexp(lw, 0) - math.log(k))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--n", type=int, default=200, help="test images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run", help="a trained run directory (default: fresh weights)")
    ap.add_argument("--skip-loop", action="store_true", help="time only the batched estimator")
    ap.add_argument("--bf16", action="store_true",
                    help="time the bf16 estimator even where the device has no fast bf16")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.run:
        model, cfg = vaelab.load_run(args.run, device=device)
    else:
        cfg = Config.load("configs/fashion-mnist-mlp.toml")
        model = VAE.from_config(cfg.model, (1, 28, 28)).to(device).eval()
    data = vaelab.load_data(cfg.data, device)
    x = data.test.batch(slice(0, args.n))

    rows = []
    log_likelihood(model, x[:10], k=args.k)  # warm-up
    sync(device)
    t = time.perf_counter()
    ll = log_likelihood(model, x, k=args.k)
    sync(device)
    rows.append(("vaelab, batched (k, B) with chunking", time.perf_counter() - t, ll))
    if fast_bf16(device) or args.bf16:
        t = time.perf_counter()
        llb = log_likelihood(model, x, k=args.k, bf16=True)
        sync(device)
        rows.insert(0, ("vaelab, the same, decoder products in bf16 (--precision bf16)",
                        time.perf_counter() - t, llb))
    if not args.skip_loop:
        t = time.perf_counter()
        ll1 = per_image(model, x, args.k)
        sync(device)
        rows.append(("one image at a time", time.perf_counter() - t, ll1))
    with torch.no_grad():  # arithmetic of one image's k weights
        image_flops = flops(log_weights, model, x[:1], args.k)
    peak = matmul_rate(device)
    print(f"importance-sampled log p(x), k = {args.k}, {args.n} Fashion-MNIST test images, "
          f"MLP 784-512-256-50; {device.type} ({hardware(device)}); torch {torch.__version__}")
    print(f"{image_flops / 1e9:.2f} GFLOP per image; 2048x2048 fp32 matrix product "
          f"{peak / 1e9:,.0f} GFLOP/s")
    print()
    print("| estimator | seconds | images/s | speed-up | GFLOP/s (% of fp32 matmul) "
          "| mean log p(x) | vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s, lp in rows:
        rate = image_flops * args.n / s
        print(f"| {name} | {s:.2f} | {args.n / s:,.1f} | {rows[-1][1] / s:.2f}x | "
              f"{rate / 1e9:,.0f} ({100 * rate / peak:.0f}%) | {lp.mean().item():.3f} | "
              f"{(lp - ll).mean().item():+.3f} |")


if __name__ == "__main__":
    main()
