"""Lossless compression with a trained run, against general-purpose codecs.

    python benchmarks/compress.py RUN [RUN ...] [--split test] [--k 5000] [--repeat 1]

For each run: its split (the test set by default) prepared by the run's protocol (a
Bernoulli run: binarized once with the run's seed; a grey run: the 8-bit or 17-level
images), coded with ``vaelab.compress`` and decoded back (checked equal). Printed per run:
the file's size in bits/dim beside the model's -ELBO and importance-sampled -log p(x) in
bits/dim on the same images (``vaelab.evaluate``), the ideal code length the coded z had
(sum of -log2 p(x|z)p(z)/q(z|x)), the initial-bits overhead, gzip / bz2 / xz (level 9) of
the raw pixel bytes, one optimized PNG and one lossless WebP of all images tiled into a
grid (1-bit PNG for binary images), the factorized maximum-likelihood model's code length
(``vaelab baselines``), and the speed of compress and decompress in images/s.
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
from vaelab.coding.compress import CodingSettings, compress, decompress, initial_words, levels_of
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
    png, webp = io.BytesIO(), io.BytesIO()
    pic.save(png, "PNG", optimize=True)
    (pic.convert("L") if binary else pic).save(webp, "WEBP", lossless=True, quality=100,
                                               method=6)
    return {"raw bytes": len(raw), "gzip -9": len(gzip.compress(raw, 9)),
            "bz2 -9": len(bz2.compress(raw, 9)), "xz -9": len(lzma.compress(raw, preset=9)),
            "PNG (optimized, tiled)": len(png.getvalue()),
            "WebP lossless (tiled)": len(webp.getvalue())}


def bench(run: str, split: str, k: int, repeat: int, settings: CodingSettings,
          device: str = "cpu", first: int | None = None) -> None:
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
          f"{cfg.model.prior}, {model.layers} layer(s)\n")
    enc, dec, stats = [], [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        blob = compress(model, x, settings=settings, stats=stats, device=device)
        enc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = decompress(model, blob)
        dec.append(time.perf_counter() - t0)
        assert np.array_equal(back, x), "round trip failed"
    ev = vaelab.evaluate(model, dataclasses.replace(data, **{split: s}), split, k=k, seed=0)
    start = 32 * len(initial_words(model, settings))
    rows = [("vaelab compress (the file)", 8 * len(blob) / pixels),
            ("  of which header and checksum", 8 * stats["header_bytes"] / pixels),
            ("  of which initial words", start / pixels),
            ("ideal: sum of -log2 p(x|z)p(z)/q(z|x) of the coded z", stats["ideal_bits"] / pixels),
            ("model -ELBO (vaelab evaluate)", ev["bits_per_dim"]),
            (f"model -log p(x), importance-sampled, k = {k}", ev.get("nll_bits_per_dim"))]
    base = "bernoulli" if levels == 2 else "gaussian"
    b = run_baselines(dataclasses.replace(data, **{split: s}), [base], split)[0]
    rows.append((f"factorized {base} (MLE, vaelab baselines)", b["bits_per_dim"]))
    for name, size in codec_sizes(x, levels == 2).items():
        rows.append((name, 8 * size / pixels))
    print("| code | bits/dim | vs -ELBO |")
    print("|---|---:|---:|")
    for name, bpd in rows:
        if bpd is None:
            continue
        print(f"| {name} | {bpd:.4f} | {bpd / ev['bits_per_dim']:.3f} |")
    elbo_bits = ev["bits_per_dim"] * pixels
    body = 8 * len(blob) - 8 * stats["header_bytes"] - start
    print(f"\nfile: {len(blob):,} bytes for {pixels:,} pixels; size / -ELBO - 1 = "
          f"{100 * (8 * len(blob) / elbo_bits - 1):+.2f} %; without header and initial "
          f"words: {100 * (body / elbo_bits - 1):+.2f} %")
    where = f"{device}, {torch.get_num_threads()} CPU threads"
    print(f"speed ({where}): compress {n / min(enc):,.0f} images/s, "
          f"decompress {n / min(dec):,.0f} images/s (best of {repeat}; "
          f"{stats['batches']} batches of up to {settings.batch_size})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--k", type=int, default=5000, help="importance samples (default 5000)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--latent-bits", type=int, default=CodingSettings().latent_bits)
    p.add_argument("--batch-size", type=int, default=CodingSettings().batch_size)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--n", type=int, help="the first N images of the split only")
    args = p.parse_args()
    settings = CodingSettings(latent_bits=args.latent_bits, batch_size=args.batch_size)
    for run in args.runs:
        bench(run, args.split, args.k, args.repeat, settings, args.device, args.n)


if __name__ == "__main__":
    main()
