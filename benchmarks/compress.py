"""Lossless compression with a trained run: rates against K, against -log p(x), and
against general-purpose codecs.

    python benchmarks/compress.py RUN [RUN ...] [--split test] [--k 5000]
        [--samples 1,8,16,32,64] [--repeat 1] [--n N] [--nll-cache NPY]

For each run: its split (the test set by default) prepared by the run's protocol (a
Bernoulli run: binarized once with the run's seed; a grey run: the 8-bit or 17-level
images). Printed per run:

* rates against K: for each number of importance samples, the file (``vaelab.compress``,
  decoded back and checked equal) in bits/dim and against the model's -log p(x)
  (importance-sampled with ``--k`` samples, ``vaelab.log_likelihood``, seed 0) and its
  -ELBO, with the speed of compress and decompress (best of ``--repeat``);
* the cost of 1, 10, 100 and all images at the default K against their -log2 p(x), and
  the images a one-image file codes larger than that image's optimized PNG (of the first
  200);
* the general-purpose codecs on the same pixels: gzip / bz2 / xz (level 9), one optimized
  PNG and one lossless WebP of all images tiled (1-bit PNG for binary images), and the
  factorized maximum-likelihood model (``vaelab baselines``).
"""
from __future__ import annotations

import argparse
import bz2
import dataclasses
import gzip
import io
import lzma
import math
import time

import numpy as np
import torch

import vaelab
from vaelab.coding.compress import CodingSettings, compress, decompress, levels_of
from vaelab.objectives import log_likelihood
from vaelab.studies.baselines import run_baselines


def tiled(x: np.ndarray, binary: bool):
    """All images (N, C, H, W) in one picture, sqrt(N) per row."""
    from PIL import Image

    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, img in enumerate(x):
        r, q = divmod(i, cols)
        canvas[r * h:(r + 1) * h, q * w:(q + 1) * w] = img.transpose(1, 2, 0)
    a = canvas[..., 0] if c == 1 else canvas
    if binary:
        return Image.fromarray(a * 255).convert("1")
    return Image.fromarray(a)


def codec_sizes(x: np.ndarray, binary: bool) -> dict[str, int]:
    raw = x.tobytes()
    pic = tiled(x, binary)
    webp = io.BytesIO()
    (pic.convert("L") if binary else pic).save(webp, "WEBP", lossless=True, quality=100,
                                               method=6)
    return {"raw bytes": len(raw), "gzip -9": len(gzip.compress(raw, 9)),
            "bz2 -9": len(bz2.compress(raw, 9)), "xz -9": len(lzma.compress(raw, preset=9)),
            "PNG (optimized, tiled)": len(_png(pic)),
            "WebP lossless (tiled)": len(webp.getvalue())}


def one_png(img: np.ndarray, binary: bool) -> int:
    return len(_png(tiled(img[None], binary)))


def _png(pic) -> bytes:
    out = io.BytesIO()
    pic.save(out, "PNG", optimize=True)
    return out.getvalue()


def timed(model, x, settings: CodingSettings, repeat: int, device: str):
    """The file, its stats and the best compress and decompress times."""
    enc, dec, stats = [], [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        blob = compress(model, x, settings=settings, stats=stats, device=device)
        enc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = decompress(model, blob)
        dec.append(time.perf_counter() - t0)
        assert np.array_equal(back, x), "round trip failed"
    return blob, stats, min(enc), min(dec)


def _nll(model, s, k: int, cache: str | None):
    """-log p(x) of every image (k samples, seed 0), kept in ``cache`` (a .npy) if given:
    the speed rows can be measured again without the minutes of k = 5000."""
    import os

    if not k:
        return None
    if cache and os.path.exists(cache):
        out = np.load(cache)
        if len(out) == len(s):
            return out
    out = -log_likelihood(model, s, k=k, seed=0).double().cpu().numpy()
    if cache:
        np.save(cache, out)
    return out


def bench(run: str, split: str, k: int, repeat: int, settings: CodingSettings,
          samples: list[int], device: str = "cpu", first: int | None = None,
          cache: str | None = None) -> None:
    model, cfg = vaelab.load_run(run)
    data = vaelab.load_data(cfg.data)
    s = data.split(split)
    if first:  # the first images only (speed measurements)
        s = s.subset(slice(0, first))
    x = s.stored().cpu().numpy()
    n, dims = len(x), x[0].size
    pixels = n * dims
    levels = levels_of(model)
    print(f"\n## {run}: {data.name} {split} set, {n} images of {tuple(x.shape[1:])}, "
          f"{levels} levels, likelihood {model.likelihood.name}, prior "
          f"{cfg.model.prior}, {model.layers} layer(s); {torch.get_num_threads()} CPU "
          f"threads, nets on {device}\n")
    ev = vaelab.evaluate(model, dataclasses.replace(data, **{split: s}), split, seed=0)
    nll = _nll(model, s, k, cache)  # nats per image
    to_bpd = 1 / (dims * math.log(2))
    nll_bpd = nll.mean() * to_bpd if k else float("nan")
    print(f"model: -ELBO {ev['bits_per_dim']:.4f} bits/dim, -log p(x) (k = {k}) "
          f"{nll_bpd:.4f} bits/dim\n")
    print("| K | file bits/dim | vs -log p(x) | vs -ELBO | first images coded directly "
          "| compress images/s | decompress images/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for K in samples:
        blob, stats, enc, dec = timed(model, x, dataclasses.replace(settings, samples=K),
                                      repeat, device)
        bpd = 8 * len(blob) / pixels
        print(f"| {K} | {bpd:.4f} | {100 * (bpd / nll_bpd - 1):+.2f} % | "
              f"{100 * (bpd / ev['bits_per_dim'] - 1):+.2f} % | {stats['direct']} | "
              f"{n / enc:,.0f} | {n / dec:,.0f} |", flush=True)
    if k:
        per_image(model, x, nll, settings, levels)
    codecs(data, s, split, x, levels, ev, nll_bpd)


def per_image(model, x, nll, settings: CodingSettings, levels: int) -> None:
    print(f"\nThe cost of a file of the first N images (K = {settings.samples}), "
          "against their -log2 p(x):\n")
    print("| images | file bytes | of which header | -log2 p(x), bytes | file / -log2 p(x) |")
    print("|---:|---:|---:|---:|---:|")
    for count in sorted({1, 10, 100, len(x)}):
        if count > len(x):
            continue
        stats: dict = {}
        blob = compress(model, x[:count], settings=settings, stats=stats)
        ideal = nll[:count].sum() / math.log(2) / 8
        print(f"| {count:,} | {len(blob):,} | {stats['header_bytes']} | {ideal:,.1f} | "
              f"{len(blob) / ideal:.3f} |")
    sizes = [(len(compress(model, x[i:i + 1], settings=settings)),
              one_png(x[i], levels == 2)) for i in range(min(200, len(x)))]
    f, p = np.array(sizes).T
    print(f"\nOne image per file, the first {len(f)}: file {f.mean():.1f} bytes on average "
          f"(at most {f.max()}), its optimized PNG {p.mean():.1f} (at least {p.min()}); "
          f"files larger than their PNG: {(f > p).sum()}")


def codecs(data, s, split, x, levels, ev, nll_bpd) -> None:
    pixels = x.size
    rows = [("model -ELBO (vaelab evaluate)", ev["bits_per_dim"]),
            ("model -log p(x), importance-sampled", nll_bpd)]
    base = "bernoulli" if levels == 2 else "gaussian"
    b = run_baselines(dataclasses.replace(data, **{split: s}), [base], split)[0]
    rows.append((f"factorized {base} (MLE, vaelab baselines)", b["bits_per_dim"]))
    for name, size in codec_sizes(x, levels == 2).items():
        rows.append((name, 8 * size / pixels))
    print("\n| code | bits/dim | vs -log p(x) |")
    print("|---|---:|---:|")
    for name, bpd in rows:
        print(f"| {name} | {bpd:.4f} | {bpd / nll_bpd:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--k", type=int, default=5000,
                   help="importance samples of -log p(x) (default 5000; 0: skip)")
    p.add_argument("--samples", default="1,8,16,32,64",
                   help="the K of the files, comma-separated")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--latent-bits", type=int, default=CodingSettings().latent_bits)
    p.add_argument("--batch-size", type=int, default=CodingSettings().batch_size)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--n", type=int, help="the first N images of the split only")
    p.add_argument("--nll-cache", metavar="NPY", help="keep -log p(x) of every image here "
                   "(computed once, then read back; one run per file)")
    args = p.parse_args()
    settings = CodingSettings(latent_bits=args.latent_bits, batch_size=args.batch_size)
    samples = [int(v) for v in args.samples.split(",")]
    for run in args.runs:
        bench(run, args.split, args.k, args.repeat, settings, samples, args.device, args.n,
              args.nll_cache)


if __name__ == "__main__":
    main()
