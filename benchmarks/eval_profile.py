"""Where the time of the importance-sampled log-likelihood goes on a CPU: one chunk of the
estimator (the encoder on a batch of images, k samples of z, the decoder's passes and
their log-weights; as `vaelab evaluate --k` runs it) profiled by operator, then the same
chunk eager against `torch.compile`, alternating in one process.

    python benchmarks/eval_profile.py [--config configs/fashion-mnist-mlp-ema.toml]
        [--batch 100] [--samples 53] [--rounds 3]

The model is freshly initialised (the arithmetic is the trained model's) for 28x28 images
(the MNIST-likes' configs); the images are random binary ones.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from vaelab.config import Config
from vaelab.errors import ConfigError
from vaelab.models.vae import VAE
from vaelab.objectives import weights_at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fashion-mnist-mlp-ema.toml")
    ap.add_argument("--batch", type=int, default=100, help="images per chunk (evaluate's 100)")
    ap.add_argument("--samples", type=int, default=53,
                    help="samples of z per chunk (what evaluate's default budget gives a "
                    "784-pixel MLP at batch 100)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        cfg = Config.load(args.config)
        model = VAE.from_config(cfg.model, (1, 28, 28)).eval()
    except ConfigError as e:
        sys.exit(f"eval_profile.py: {e}")
    torch.manual_seed(0)
    x = (torch.rand(args.batch, 1, 28, 28) < 0.3).float()

    def chunk(x: torch.Tensor) -> torch.Tensor:
        q = model.encode(x)
        return torch.logsumexp(weights_at(model, q, x, q.sample((args.samples,))), 0)

    compiled = torch.compile(chunk, dynamic=False)
    passes = args.batch * args.samples
    with torch.no_grad():
        chunk(x)
        t0 = time.perf_counter()
        compiled(x)
        print(f"compiling the chunk: {time.perf_counter() - t0:.1f} s")
        with torch.profiler.profile() as prof:
            for _ in range(5):
                chunk(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
        print(f"| round | eager ms / chunk | compiled ms / chunk | ratio |  ({passes} decoder "
              "passes per chunk)\n|---:|---:|---:|---:|")
        for r in range(args.rounds):
            ms = []
            for f in (chunk, compiled):
                t0 = time.perf_counter()
                for _ in range(20):
                    f(x)
                ms.append((time.perf_counter() - t0) / 20 * 1000)
            print(f"| {r + 1} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[0] / ms[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
