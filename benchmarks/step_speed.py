"""One training step, eager against compiled: vaelab's own step (forward, backward, fused
Adam, the weights' moving average) on a config's model, timed in one process in rounds
that alternate, so that the machine's drifts hit every variant alike; with ``--epochs N``
also whole training epochs of `vaelab.train`'s loop (data, binarization, warm-up,
schedule, checks), eager and compiled, alternating epoch by epoch.

Variants: vaelab's step eager (`--compile no`), compiled (`--compile yes`: the loss, its
backward and the reparameterized noise in one graph), and the compiled step with Adam
compiled as well (foreach Adam, capturable, under torch.compile: the whole step in
graphs, against fused Adam's one kernel). Printed: the compilation's seconds (its first
steps), the median and the best round's milliseconds per step, and each variant's speed
against the eager step.

    python benchmarks/step_speed.py                                   # the reference MLP
    python benchmarks/step_speed.py --config configs/fashion-mnist-mlp-ema.toml --epochs 30
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import vaelab
from vaelab.data.splits import load_data, resolve
from vaelab.devices import SINGLE
from vaelab.models.vae import VAE
from vaelab.training.schedule import WeightAverage
from vaelab.training.loop import start, train_epoch
from vaelab.training.step import Stepper, make_optimizer

REFERENCE = dict(dataset="fashion-mnist", binarize="none", likelihood="bernoulli",
                 hidden="400", latent_dim=20, activation="relu", batch_size=128, ema=0.999)


def variant(cfg: vaelab.Config, shape, kind: str, device: torch.device):
    """A step function ``x -> None`` of one of the variants, from the same initial weights."""
    torch.manual_seed(0)
    model = VAE.from_config(cfg.model, shape).to(device)
    tc = cfg.override(compile="no" if kind == "eager" else "yes").train
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


def epochs(cfg: vaelab.Config, n: int) -> dict[str, list[float]]:
    """Seconds of ``n`` training epochs of two fresh runs, eager and compiled, alternating
    (the compilation left out: its seconds are in the epoch's ``compile_seconds``)."""
    class NoBar:
        disable = True

        def update(self):
            pass

    runs, data = {}, None
    with tempfile.TemporaryDirectory() as d:
        for kind in ("eager", "compiled"):
            run = cfg.override(compile="no" if kind == "eager" else "yes")
            s = start(run, Path(d) / kind, False, data)
            data = s.data
            runs[kind] = (s, Stepper(s.model, s.opt, s.cfg.train, s.device, s.world), [])
        for epoch in range(1, n + 1):
            for s, stepper, seconds in runs.values():
                m = train_epoch(s, stepper, epoch, NoBar())
                seconds.append(m["seconds"] - m.get("compile_seconds", 0.0))
    return {kind: seconds for kind, (_, _, seconds) in runs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="a config file (default: the reference MLP 784-400-20)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=40, help="steps per round")
    ap.add_argument("--epochs", type=int, default=0,
                    help="also time this many whole epochs of each, alternating")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
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
    xs = [data.train.batch(slice(i * b, (i + 1) * b)) for i in range(args.steps)]
    kinds = ["eager", "compiled", "compiled, Adam compiled too"]
    steps = {k: variant(cfg, data.image_shape, k, device) for k in kinds}
    warm = {}
    for kind, step in steps.items():
        t0 = time.perf_counter()
        for x in xs[:3]:
            step(x)
        warm[kind] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind, step in steps.items():
            t0 = time.perf_counter()
            for x in xs:
                step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[kind].append(1e3 * (time.perf_counter() - t0) / len(xs))
    print(f"{args.config or 'the reference MLP 784-400-20 (ReLU)'}: {device.type}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, batch {b}, "
          f"{args.rounds} rounds of {args.steps} steps")
    print()
    print("| step | first 3 steps (compilation), s | ms/step (median) | best round | "
          "vs eager |")
    print("|---|---:|---:|---:|---:|")
    eager = statistics.median(times["eager"])
    for kind in kinds:
        m = statistics.median(times[kind])
        print(f"| {kind} | {warm[kind]:.1f} | {m:.2f} | {min(times[kind]):.2f} | "
              f"{eager / m:.2f}x |")
    if args.epochs:
        seconds = epochs(cfg, args.epochs)
        print()
        print(f"Whole epochs of {len(data.train):,} images, epochs 2 to {args.epochs}:")
        print()
        print("| loop | s/epoch (median) | mean | vs eager |")
        print("|---|---:|---:|---:|")
        base = statistics.median(seconds["eager"][1:])
        for kind, ts in seconds.items():
            m = statistics.median(ts[1:])
            print(f"| {kind} | {m:.2f} | {statistics.mean(ts[1:]):.2f} | {base / m:.2f}x |")


if __name__ == "__main__":
    main()
