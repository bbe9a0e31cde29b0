"""Settings chosen on validation data: train one run per setting (real `vaelab train`
processes, several at once), and print each run's best validation ELBO, the epoch it came
at and the training minutes it took; with ``--rank nll`` also its importance-sampled
validation log-likelihood (``vaelab evaluate RUN --split val --k K``, seeded), which then
orders the table (the number a user reads, not the bound). The test set is not touched.

Each ``--axis KEY=V1,V2,...`` is varied on its own around the base settings (one factor
at a time); ``--cartesian`` crosses the axes instead. Every setting runs once per seed.
Runs already in OUT are read, not trained again, so a sweep that was stopped goes on.
Every setting is read by ``vaelab train``'s own parser before anything runs (a misspelt
key or value stops the sweep at once), and one that comes to the base's configuration
(``--axis weight_decay=0`` where the base has no decay) is the base: not trained twice.

    python benchmarks/sweep.py --out runs/sweep-digits --seeds 0,1,2 \\
        --axis activation=relu,elu,silu,gelu --axis lr_schedule=constant,cosine
    python benchmarks/sweep.py --out runs/sweep-digits-nll --seeds 0,1,2 --rank nll \\
        --axis lr_schedule=constant,cosine --axis select=elbo,nll
    python benchmarks/sweep.py --out runs/sweep-fm --jobs 2 --cartesian \\
        --base "--config configs/fashion-mnist-mlp-warmup.toml --epochs 30 --kl-warmup 3" \\
        --axis lr_schedule=cosine,constant --axis ema=0.999,0
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def settings(axes: list[tuple[str, list[str]]], cartesian: bool) -> list[dict[str, str]]:
    """The settings to run: {} (the base) and each axis value alone, or the axes crossed."""
    if cartesian:
        keys = [k for k, _ in axes]
        return [dict(zip(keys, vals)) for vals in itertools.product(*(v for _, v in axes))]
    out: list[dict[str, str]] = [{}]
    for key, values in axes:
        out += [{key: v} for v in values]
    return out


def name(setting: dict[str, str], seed: int) -> str:
    parts = [f"{k}={v}".replace("/", "_").replace(",", "-") for k, v in setting.items()]
    return "__".join(parts or ["base"]) + f"__seed={seed}"


def label(setting: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "base"


def flags(setting: dict[str, str]) -> list[str]:
    return [x for k, v in setting.items() for x in (f"--{k.replace('_', '-')}", v)]


def resolved(base: list[str], setting: dict[str, str]):
    """The configuration `vaelab train` would train with these flags (its parser's own
    errors, with exit status 2, for a misspelt key or a wrong value)."""
    from vaelab.app.cli import build_parser
    from vaelab.app.cli.common import config_from_args
    from vaelab.errors import USER_ERRORS
    argv = ["train", *base, *flags(setting)]
    try:
        return config_from_args(build_parser().parse_args(argv))
    except USER_ERRORS as e:
        print(f"sweep.py: error: vaelab {shlex.join(argv)}: {e}", file=sys.stderr)
        raise SystemExit(2)


def distinct(base: list[str], todo: list[dict[str, str]]) -> list[dict[str, str]]:
    """The settings less those whose configuration is one already listed (the base's, or
    an earlier setting's), each dropped one said so."""
    seen: dict = {}  # configuration -> the first setting that comes to it
    for setting in todo:
        same = seen.setdefault(resolved(base, setting), setting)
        if same is not setting:
            print(f"{label(setting)}: the same configuration as "
                  f"{'the base' if not same else label(same)}; not trained twice",
                  file=sys.stderr)
    return list(seen.values())


def run(out: Path, base: list[str], setting: dict[str, str], seed: int, threads: int,
        k: int = 0) -> Path:
    run_dir = out / name(setting, seed)
    if (run_dir / "done").is_file():
        return validated(run_dir, k, threads)
    cmd = [sys.executable, "-m", "vaelab", "-q", "train", *base, *flags(setting), "--seed",
           str(seed), "--out", str(run_dir), "--no-progress"]
    resume = (run_dir / "checkpoint.safetensors").is_file()
    if resume:  # stopped mid-way: go on from its checkpoint
        cmd = [sys.executable, "-m", "vaelab", "-q", "train", "--resume", str(run_dir),
               "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(shlex.quote, cmd))} failed:\n{r.stderr[-2000:]}")
    (run_dir / "done").write_text(" ".join(map(shlex.quote, cmd)) + "\n")
    return validated(run_dir, k, threads)


def validated(run_dir: Path, k: int, threads: int) -> Path:
    """With k: the validation log-likelihood of the run's kept weights, recorded in
    RUN/evaluate.json by `vaelab evaluate` (once)."""
    if not k or _val_nll(run_dir, k) is not None:
        return run_dir
    cmd = [sys.executable, "-m", "vaelab", "-q", "evaluate", str(run_dir), "--split", "val",
           "--k", str(k), "--json", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(shlex.quote, cmd))} failed:\n{r.stderr[-2000:]}")
    return run_dir


def _val_nll(run_dir: Path, k: int) -> float | None:
    path = run_dir / "evaluate.json"
    entry = json.loads(path.read_text()).get(f"val, k={k}, best") if path.is_file() else None
    return entry["nll"] if entry else None


def summary(run_dir: Path, k: int = 0) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda m: m["val_elbo"])
    return {"val_elbo": best["val_elbo"], "epoch": best["epoch"],
            "val_nll": _val_nll(run_dir, k) if k else None,
            "minutes": sum(m["seconds"] for m in rows) / 60,
            "s_per_epoch": statistics.median(m["seconds"] for m in rows)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder of the sweep's runs")
    p.add_argument("--base", default="", help="vaelab train flags every run shares")
    p.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2",
                   help="a setting and its values (repeatable; a value holding commas, such "
                   "as hidden widths, is written with '-': hidden=512-512)")
    p.add_argument("--cartesian", action="store_true", help="cross the axes")
    p.add_argument("--seeds", default="0", help="comma separated")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per run (default: the cores shared among the jobs)")
    p.add_argument("--rank", choices=["elbo", "nll"], default="elbo",
                   help="order the table by the best validation ELBO, or by the "
                   "importance-sampled validation NLL of the kept weights")
    p.add_argument("--k", type=int, default=1000, help="importance samples of --rank nll")
    args = p.parse_args(argv)
    axes = []
    for a in args.axis:
        key, _, values = a.partition("=")
        if not values:
            p.error(f"--axis {a!r}: give KEY=V1,V2,...")
        axes.append((key, [v.replace("-", ",") if key in ("hidden", "conv_widths") else v
                           for v in values.split(",")]))
    seeds = [int(s) for s in args.seeds.split(",")]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    base = shlex.split(args.base)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [(s, seed) for s in distinct(base, settings(axes, args.cartesian)) for seed in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        k = args.k if args.rank == "nll" else 0
        dirs = list(pool.map(lambda t: run(args.out, base, t[0], t[1], threads, k), todo))
    results: dict[str, list[dict]] = {}
    for (setting, _), d in zip(todo, dirs):
        results.setdefault(label(setting), []).append(summary(d, k))
    print(f"base: vaelab train {args.base}; seeds {args.seeds}; {threads} thread(s) per run, "
          f"{args.jobs} at once\n")
    nll = f"validation NLL, k = {k} (mean) | ± (sd) | " if k else ""
    print(f"| setting | {nll}best validation ELBO (mean over seeds) | ± (sd) | best epoch | "
          "training minutes | s/epoch |")
    print("|---|" + "---:|" * (7 if k else 5))

    def order(kv):
        return statistics.mean(r["val_nll"] for r in kv[1]) if k else \
            -statistics.mean(r["val_elbo"] for r in kv[1])

    for row, rs in sorted(results.items(), key=order):
        v = [r["val_elbo"] for r in rs]
        sd = statistics.stdev(v) if len(v) > 1 else float("nan")
        if k:
            n = [r["val_nll"] for r in rs]
            row += f" | {statistics.mean(n):.2f} | " + \
                (f"{statistics.stdev(n):.2f}" if len(n) > 1 else "nan")
        print(f"| {row} | {statistics.mean(v):.2f} | {sd:.2f} | "
              f"{statistics.mean(r['epoch'] for r in rs):.0f} | "
              f"{statistics.mean(r['minutes'] for r in rs):.2f} | "
              f"{statistics.mean(r['s_per_epoch'] for r in rs):.2f} |")
    (args.out / "sweep.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
