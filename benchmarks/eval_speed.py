"""Speed of the importance-sampled log-likelihood (`vaelab evaluate --k`): its variants
timed in one process, in rounds that alternate, so that the machine's drifts hit all alike.

The model is the Fashion-MNIST MLP VAE of `configs/fashion-mnist-mlp.toml` (784-512-256-50,
Bernoulli decoder), freshly initialised unless --run names a trained run: the arithmetic is
the same. Variants, all on the same images, samples and seed:

* the previous pixel term: `torch.distributions`' Independent(Bernoulli) log-probability
  (five passes over the logits, the images broadcast to every sample), fp32, eager;
* vaelab's estimator (`BernoulliImage`: the x-term a matrix product, one softplus per
  logit), fp32 eager (`--precision fp32 --compile no`) and compiled (`--compile yes`);
* the same with the decoder's matrix products in bfloat16 (`--precision bf16`), eager and
  compiled, where the device has fast bfloat16 (or with --bf16);
* with --loop, one image at a time (what many toolkits do).

Printed per variant: the median seconds over the rounds, images/s, decoder passes (images x
samples) per second against the FLOP bound (the decoder passes' arithmetic at the rate of a
large fp32 matrix product, and at bf16's), the minutes that rate gives for the 10,000 test
images at k = 5000, the mean log p(x) and its difference to fp32 eager; and the seconds the
compiled variants took to compile.

    python benchmarks/eval_speed.py [--k 1000] [--n 500] [--rounds 2] [--run RUN]
    python benchmarks/eval_speed.py --k 5000 --n 10000 --device cuda --rounds 1   # GPU
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager

import torch
from torch.distributions import Bernoulli, Independent

import vaelab
from vaelab.config import Config
from vaelab.devices import fast_bf16
from vaelab.models.likelihoods import BernoulliLikelihood
from vaelab.models.vae import VAE
from vaelab.objectives import log_likelihood, log_weights

sys.path.insert(0, os.path.dirname(__file__))
from common import flops, hardware, matmul_rate, sync  # noqa: E402


@contextmanager
def distributions_bernoulli():
    """The Bernoulli decoder as it was: torch.distributions' Independent(Bernoulli)."""
    call = BernoulliLikelihood.__call__
    BernoulliLikelihood.__call__ = lambda self, params: Independent(
        Bernoulli(logits=params, validate_args=False), 3, validate_args=False)
    try:
        yield
    finally:
        BernoulliLikelihood.__call__ = call


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
    ap.add_argument("--n", type=int, default=500, help="test images")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run", help="a trained run directory (default: fresh weights)")
    ap.add_argument("--loop", action="store_true", help="also time one image at a time")
    ap.add_argument("--bf16", action="store_true",
                    help="time the bf16 variants even where the device has no fast bf16")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.run:
        model, cfg = vaelab.load_run(args.run, device=device)
    else:
        cfg = Config.load("configs/fashion-mnist-mlp.toml")
        model = VAE.from_config(cfg.model, (1, 28, 28)).to(device).eval()
    data = vaelab.load_data(cfg.data, device)
    x = data.test.batch(slice(0, args.n))
    bernoulli = model.likelihood.name == "bernoulli"

    def estimator(bf16=False, compiled=False, before=False):
        def run():
            if before:
                with distributions_bernoulli():
                    return log_likelihood(model, x, k=args.k, bf16=bf16)
            return log_likelihood(model, x, k=args.k, bf16=bf16, compiled=compiled)
        return run

    variants = {"fp32, torch.distributions' Bernoulli (before)": estimator(before=True)} \
        if bernoulli else {}
    variants.update({"fp32": estimator(), "fp32, compiled": estimator(compiled=True)})
    if fast_bf16(device) or args.bf16:
        variants.update({"bf16 products": estimator(bf16=True),
                         "bf16 products, compiled": estimator(bf16=True, compiled=True)})
    if args.loop:
        variants["one image at a time"] = lambda: per_image(model, x, args.k)
    compile_s = {}
    for name in variants:  # warm-up; the compiled ones compile here
        t = time.perf_counter()
        log_likelihood(model, x[:3], k=args.k, bf16="bf16" in name, compiled="compiled" in name)
        sync(device)
        if "compiled" in name:
            compile_s[name] = time.perf_counter() - t
    seconds = {name: [] for name in variants}
    result = {}
    for _ in range(args.rounds):
        for name, run in variants.items():
            sync(device)
            t = time.perf_counter()
            result[name] = run()
            sync(device)
            seconds[name].append(time.perf_counter() - t)
    with torch.no_grad():  # arithmetic of one image's k weights (the decoder's passes)
        image_flops = flops(log_weights, model, x[:1], args.k)
    peak = matmul_rate(device)
    peak16 = matmul_rate(device, torch.bfloat16) if len(variants) > 3 else None
    print(f"importance-sampled log p(x), k = {args.k}, {args.n} {data.name} test images, "
          f"{args.run or 'fresh MLP 784-512-256-50'}; {device.type} ({hardware(device)}); "
          f"torch {torch.__version__}; {torch.get_num_threads()} threads; median of "
          f"{args.rounds} alternating rounds")
    print(f"{image_flops / args.k / 1e6:.2f} MFLOP per decoder pass; 2048x2048 matrix "
          f"product {peak / 1e9:,.0f} GFLOP/s fp32"
          + (f", {peak16 / 1e9:,.0f} bf16" if peak16 else ""))
    print()
    print("| estimator | seconds | compile s | passes/s | of the FLOP bound fp32 / bf16 "
          "| 10k images, k = 5000 | mean log p(x) | vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = result["fp32"]
    for name, s in seconds.items():
        s = statistics.median(s)
        passes = args.n * args.k / s
        bound = peak / (image_flops / args.k)
        bound16 = f" / {100 * passes / (peak16 / (image_flops / args.k)):.0f}%" if peak16 \
            else ""
        lp = result[name]
        print(f"| {name} | {s:.2f} | {compile_s.get(name, 0):.1f} | {passes:,.0f} | "
              f"{100 * passes / bound:.0f}%{bound16} | {1e4 * 5000 / passes / 60:.1f} min | "
              f"{lp.mean().item():.3f} | {(lp - base).mean().item():+.4f} |")


if __name__ == "__main__":
    main()
