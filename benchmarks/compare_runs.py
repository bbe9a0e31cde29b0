"""Runs side by side at equal epochs, from their `metrics.jsonl`: the validation ELBO and
the in-training log-likelihood estimate (`select = "nll"`) of each run on the epochs where
every run has an estimate, and each run's training minutes and median seconds per epoch
(ELBO and IWAE epochs apart). The tables of docs/quality.md's later rounds are made so.

    python benchmarks/compare_runs.py runs/a runs/b [--every 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from vaelab.errors import RunError
from vaelab.runs.records import read_metrics


def speed(ms: dict[int, dict]) -> str:
    """Training minutes, and the median seconds of an ELBO and of an IWAE epoch (less any
    compiling)."""
    total = sum(m["seconds"] for m in ms.values()) / 60
    kinds: dict[str, list[float]] = {"ELBO": [], "IWAE": []}
    for m in ms.values():  # an IWAE epoch validates its bound too (val_iwae<k>)
        kind = "IWAE" if any(k.startswith("val_iwae") for k in m) else "ELBO"
        kinds[kind].append(m["seconds"] - m.get("compile_seconds", 0.0))
    per = ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in kinds.items() if v)
    return f"{len(ms)} epochs in {total:.1f} training minutes ({per} per epoch)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--every", type=int, default=1, help="every Nth shared estimate")
    args = ap.parse_args()
    if args.every < 1:
        ap.error(f"--every {args.every}: give 1 or more")
    try:
        runs = {str(r): {m["epoch"]: m for m in read_metrics(r)} for r in args.runs}
    except RunError as e:
        sys.exit(f"error: {e}")
    runs = {r: ms for r, ms in runs.items() if ms}
    for r in args.runs:
        print(f"{r}: " + (speed(runs[str(r)]) if str(r) in runs else "no metrics.jsonl"))
    if not runs:
        return
    shared = sorted(set.intersection(*(
        {e for e, m in ms.items() if "val_log_px" in m} for ms in runs.values())))
    print("\n| epoch | " + " | ".join(f"{r}: val ELBO / estimate" for r in runs) + " |")
    print("|---:|" + "---|" * len(runs))
    rows = shared[::args.every]
    if rows and rows[-1] != shared[-1]:  # the last shared estimate is always shown
        rows.append(shared[-1])
    for e in rows:
        cells = [f"{ms[e]['val_elbo']:.2f} / {-ms[e]['val_log_px']:.2f}" for ms in runs.values()]
        print(f"| {e} | " + " | ".join(cells) + " |")
    for r, ms in runs.items():
        best = max((m for m in ms.values() if "val_log_px" in m), key=lambda m: m["val_log_px"],
                   default=None)
        if best:
            print(f"{r}: best estimate {-best['val_log_px']:.2f} at epoch {best['epoch']}")


if __name__ == "__main__":
    main()
