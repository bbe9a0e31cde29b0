"""One training step, eager against compiled: vaelab's own step (forward, backward, fused
Adam, the weights' moving average) on a config's model, timed in one process in rounds
that alternate, so that the machine's drifts hit every variant alike; with ``--epochs N``
also whole training epochs of `vaelab.train`'s loop (data, binarization, warm-up,
schedule, checks), eager and compiled, alternating epoch by epoch (``--keep-denormals``:
and eager with denormal floats kept, as before training flushed them to zero; with the
count of denormal values in each run's Adam state at the end). Everything runs with
denormals flushed, as `vaelab.train` does.

Variants: vaelab's step eager (`--compile no`), compiled (`--compile yes`: the loss, its
backward and the reparameterized noise in one graph), and the compiled step with Adam
compiled as well (foreach Adam, capturable, under torch.compile: the whole step in
graphs, against fused Adam's one kernel). ``--vary "KEY=VALUE ..."`` (repeatable) adds a
variant with those training settings (``batch_size``, ``compile``, ``precision``), each
round then stepping every variant over the same images, cut into its own batches.
Printed: the compilation's seconds (its first steps), the median and the best round's
milliseconds per step, seconds per epoch of 50,000 images, and each variant's speed
against the eager step; then the data path alone (an epoch's batches drawn, shuffled and
binarized, per batch).

    python benchmarks/step_speed.py                                   # the reference MLP
    python benchmarks/step_speed.py --config configs/fashion-mnist-mlp-ema.toml --epochs 30
    python benchmarks/step_speed.py --epochs 8 --keep-denormals --rounds 1 --steps 5
    python benchmarks/step_speed.py --config configs/fashion-mnist-mlp-vamp-ema.toml \
        --vary "batch_size=128 compile=no precision=fp32" --vary "compile=no precision=fp32" \
        --vary "compile=yes precision=fp32" --vary "compile=yes precision=bf16"
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import vaelab
from vaelab.config import TrainConfig
from vaelab.data.splits import load_data, resolve
from vaelab.devices import SINGLE, flushing_denormals
from vaelab.models.vae import VAE
from vaelab.training.schedule import WeightAverage
from vaelab.training.loop import start, train_epoch
from vaelab.training.step import Stepper, make_optimizer

REFERENCE = dict(dataset="fashion-mnist", binarize="none", likelihood="bernoulli",
                 hidden="400", latent_dim=20, activation="relu", batch_size=128, ema=0.999)


KEPT = "eager, denormals kept (not flushed to zero)"
KINDS = {"eager": {"compile": "no"}, "compiled": {"compile": "yes"},
         "compiled, Adam compiled too": {"compile": "yes"}}


def variant(cfg: vaelab.Config, shape, kind: str, device: torch.device):
    """A step function ``x -> None`` of one of the variants, from the same initial weights
    (``kind``: one of KINDS, or "KEY=VALUE ..." training settings)."""
    torch.manual_seed(0)
    model = VAE.from_config(cfg.model, shape).to(device)
    tc = settings(cfg, kind).train
    average = WeightAverage(model, tc.ema) if tc.ema else None
    if kind == "compiled, Adam compiled too":
        opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(tc.lr), foreach=True,
                               capturable=True)
        opt.step = torch.compile(opt.step)  # what the Stepper calls
    else:
        opt = make_optimizer(model, tc.lr)
    stepper = Stepper(model, opt, tc, device, SINGLE)
    count = [0]

    def step(x):
        stepper(x, None, 1.0, len(x))
        if average:
            average.update(count[0])
        count[0] += 1
    return step


def settings(cfg: vaelab.Config, kind: str) -> vaelab.Config:
    """``cfg`` with a variant's settings."""
    if kind in KINDS:
        return cfg.override(**KINDS[kind])
    bad = [item for item in kind.split() if "=" not in item]
    if bad:
        raise ValueError(f"{', '.join(bad)}: write settings as KEY=VALUE")
    values = dict(item.split("=", 1) for item in kind.split())
    model = [k for k in values if k not in {f.name for f in dataclasses.fields(TrainConfig)}]
    if model:  # (every variant steps the config's model)
        raise ValueError(f"{', '.join(model)}: only training settings vary here")
    return cfg.override(**values)


def epochs(cfg: vaelab.Config, n: int,
           keep: bool = False) -> dict[str, tuple[list[float], int]]:
    """Seconds of ``n`` training epochs of two fresh runs, eager and compiled, alternating
    (the compilation left out: its seconds are in the epoch's ``compile_seconds``); with
    ``keep``, a third, eager with denormal floats kept during its epochs (not flushed); and
    the number of denormal values in each run's Adam state after the last."""
    class NoBar:
        disable = True

        def update(self):
            pass

    runs, data = {}, None
    with tempfile.TemporaryDirectory() as d:
        kinds = ("eager", "compiled") + ((KEPT,) if keep else ())
        for i, kind in enumerate(kinds):
            run = cfg.override(compile="yes" if kind == "compiled" else "no")
            s = start(run, Path(d) / str(i), False, data)
            data = s.data
            runs[kind] = (s, Stepper(s.model, s.opt, s.cfg.train, s.device, s.world), [])
        for epoch in range(1, n + 1):
            for kind, (s, stepper, seconds) in runs.items():
                with flushing_denormals(kind != KEPT):
                    m = train_epoch(s, stepper, epoch, NoBar())
                seconds.append(m["seconds"] - m.get("compile_seconds", 0.0))
    with flushing_denormals(False):  # (flushed, a denormal compares equal to zero)
        return {kind: (seconds, denormals(s.opt)) for kind, (s, _, seconds) in runs.items()}


def denormals(opt: torch.optim.Optimizer) -> int:
    """Nonzero values below float32's smallest normal number in the optimiser's state."""
    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((v != 0) & (v.abs() < tiny)).sum()) for state in opt.state.values()
               for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def data_path(data, batch_size: int, device: torch.device, rounds: int = 3) -> float:
    """Seconds per batch of drawing an epoch's batches (the median of ``rounds`` epochs)."""
    per = []
    for r in range(rounds):
        gen = torch.Generator(device).manual_seed(r)
        t0, n = time.perf_counter(), 0
        for x in data.train.batches(batch_size, shuffle=True, generator=gen):
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        per.append((time.perf_counter() - t0) / n)
    return statistics.median(per)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="a config file (default: the reference MLP 784-400-20)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=40,
                    help="steps per round (of the config's batch size; the other variants "
                         "step over the same images)")
    ap.add_argument("--vary", action="append", default=[], metavar='"KEY=VALUE ..."',
                    help="also time the step with these training settings")
    ap.add_argument("--epochs", type=int, default=0,
                    help="also time this many whole epochs of each, alternating")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="with --epochs: also an eager run whose epochs keep denormal floats "
                         "(training flushes them to zero), alternating with the others")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.keep_denormals and not args.epochs:
        ap.error("--keep-denormals adds a run of whole epochs: give --epochs N as well")
    warnings.simplefilter("ignore", UserWarning)  # (Bernoulli on the reference's grey data)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        cfg = vaelab.Config.load(args.config) if args.config else vaelab.Config().override(
            **REFERENCE)
        cfg = cfg.override(device=device.type)
        data = load_data(cfg.data, device)
    except (vaelab.ConfigError, vaelab.DataError) as e:
        ap.error(str(e))
    cfg = resolve(cfg, data)
    b = cfg.train.batch_size
    kinds = list(KINDS) + args.vary
    try:
        sizes = {k: settings(cfg, k).train.batch_size for k in kinds}
    except (vaelab.ConfigError, ValueError) as e:
        ap.error(f"--vary: {e}")
    images = b * args.steps
    xs = {k: [data.train.batch(slice(i, min(i + n, images))) for i in range(0, images, n)]
          for k, n in sizes.items()}
    steps = {k: variant(cfg, data.image_shape, k, device) for k in kinds}
    warm = {}
    for kind, step in steps.items():
        t0 = time.perf_counter()
        for x in xs[kind][:3]:
            step(x)
        warm[kind] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind, step in steps.items():
            t0 = time.perf_counter()
            for x in xs[kind]:
                step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[kind].append(time.perf_counter() - t0)
    print(f"{args.config or 'the reference MLP 784-400-20 (ReLU)'}: {device.type}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, batch {b}, "
          f"{args.rounds} rounds of {images:,} images")
    print()
    print("| step | batch | first 3 steps (compilation), s | ms/step (median) | best round | "
          "s per 50,000 images | vs eager |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    eager = statistics.median(times["eager"])
    for kind in kinds:
        m = statistics.median(times[kind])
        print(f"| {kind} | {sizes[kind]} | {warm[kind]:.1f} | {1e3 * m / len(xs[kind]):.2f} | "
              f"{1e3 * min(times[kind]) / len(xs[kind]):.2f} | {50_000 * m / images:.2f} | "
              f"{eager / m:.2f}x |")
    per_batch = data_path(data, b, device)
    print()
    print(f"The data path alone (one epoch's batches of {b}, shuffled, "
          f"{'binarized as drawn' if data.train.dynamic else 'as stored'}): "
          f"{1e3 * per_batch:.2f} ms per batch, {per_batch / (eager / len(xs['eager'])):.0%} "
          f"of the eager step")
    if args.epochs:
        seconds = epochs(cfg, args.epochs, args.keep_denormals)
        print()
        print(f"Whole epochs of {len(data.train):,} images, epochs 2 to {args.epochs}:")
        print()
        print("| loop | s/epoch (median) | mean | vs eager | denormal values in Adam's state |")
        print("|---|---:|---:|---:|---:|")
        base = statistics.median(seconds["eager"][0][1:])
        for kind, (ts, tiny) in seconds.items():
            m = statistics.median(ts[1:])
            print(f"| {kind} | {m:.2f} | {statistics.mean(ts[1:]):.2f} | {base / m:.2f}x | "
                  f"{tiny:,} |")


if __name__ == "__main__":
    with flushing_denormals():  # as vaelab.train
        main()
