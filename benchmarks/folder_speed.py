"""Folder data: decoding, loading and batching a directory of images.

Writes N PNG images (smoothed noise, S x S, RGB) to a temporary directory (or uses --dir),
then, each into an empty cache directory, times vaelab's one-off decode with one thread
and with the default thread pool, the later start from the kept (memory-mapped) copy, and
one shuffled pass of batches over the training split, memory-mapped against the same
images held in memory. Memory: the process's peak resident set over each step (VmHWM,
which counts the mapped file's pages) and its anonymous memory after it (its own), beside
the size of the decoded images: mapped splits add no copy of them.

    python benchmarks/folder_speed.py [--n 20000] [--size 32] [--dir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vaelab.data.datasets
import vaelab.data.folders
from vaelab.config import DataConfig
from vaelab.data.splits import load_data

sys.path.insert(0, os.path.dirname(__file__))
from common import PeakMemory, hardware, proc_status  # noqa: E402


def write_folder(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((size, size), Image.Resampling.BILINEAR).save(
            d / f"{i}.png")


def timed(fn):
    """(result, seconds, peak resident memory, anonymous memory after): the peak counts the
    pages of the mapped file, which the kernel may drop; the anonymous memory is the
    process's own."""
    with PeakMemory(torch.device("cpu")) as mem:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, seconds, mem.bytes, proc_status("RssAnon")


def epoch(split) -> float:
    """Images/s of the fastest of three shuffled passes (the first one maps the pages in)."""
    best = float("inf")
    for seed in range(3):
        t = time.perf_counter()
        for x in split.batches(128, shuffle=True, generator=torch.Generator().manual_seed(seed)):
            x.sum()
        best = min(best, time.perf_counter() - t)
    return len(split) / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="images to write")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--dir", default=None, help="an existing folder of images instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "images"
        if not args.dir:
            write_folder(root, args.n, args.size)
        cfg = DataConfig(dataset="folder", data_dir=str(root), channels=3)
        print(f"cpu ({hardware(torch.device('cpu'))}); torch {torch.__version__}; {root}")
        print()
        print("| step | seconds | images/s | peak resident (VmHWM) | anonymous after (RssAnon) |")
        print("|---|---:|---:|---:|---:|")
        rows, data = [], None
        rss_before, anon_before = proc_status("VmRSS"), proc_status("RssAnon")
        for threads in (1, vaelab.data.folders.DECODE_THREADS):
            os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(dir=tmp)  # an empty cache
            vaelab.data.folders.DECODE_THREADS = threads
            data, *r = timed(lambda: load_data(cfg))
            rows.append((f"decode (DECODE_THREADS = {threads}) and load", *r))
        n = len(data.train) + len(data.val) + len(data.test)
        data, *r = timed(lambda: load_data(cfg))
        rows.append(("load the kept copy (memory-mapped)", *r))
        for name, s, peak, anon in rows:
            print(f"| {name} | {s:.2f} | {n / s:,.0f} | {peak / 2**20:,.0f} MiB "
                  f"| {anon / 2**20:,.0f} MiB |")
        held = dataclasses.replace(data.train, images=data.train.stored(), rows=None)
        for name, split in (("memory-mapped", data.train), ("held in memory", held)):
            print(f"| a shuffled pass of batches of 128, {name} | | {epoch(split):,.0f} | | |")
        print()
        print(f"{n:,} images of shape {data.image_shape}: "
              f"{n * np.prod(data.image_shape) / 2**20:,.0f} MiB decoded; before the first "
              f"step the process held {rss_before / 2**20:,.0f} MiB, "
              f"{anon_before / 2**20:,.0f} MiB of it anonymous")


if __name__ == "__main__":
    main()
