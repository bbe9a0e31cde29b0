"""Runs side by side at equal epochs, from their `metrics.jsonl`: the validation ELBO and
the in-training log-likelihood estimate (`select = "nll"`) of each run on the epochs where
every run has an estimate, and each run's training minutes and median seconds per epoch
(ELBO and IWAE epochs apart). The tables of docs/quality.md's later rounds are made so.

    python benchmarks/compare_runs.py runs/a runs/b [--every 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def metrics(run: Path) -> dict[int, dict]:
    """Epoch -> its metrics line (a resumed run's later line for an epoch wins)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {m["epoch"]: m for m in map(json.loads, filter(None, lines))}


def speed(ms: dict[int, dict]) -> str:
    """Training minutes, and the median seconds of an ELBO and of an IWAE epoch."""
    secs = {e: m["seconds"] - m.get("compile_seconds", 0.0) for e, m in ms.items()}
    total = sum(m["seconds"] for m in ms.values()) / 60
    kinds = {"ELBO": [secs[e] for e, m in ms.items() if "val_iwae" not in " ".join(m)],
             "IWAE": [secs[e] for e, m in ms.items() if "val_iwae" in " ".join(m)]}
    per = ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in kinds.items() if v)
    return f"{len(ms)} epochs in {total:.1f} training minutes ({per} per epoch)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--every", type=int, default=1, help="every Nth shared estimate")
    args = ap.parse_args()
    runs = {str(r): metrics(r) for r in args.runs if (r / "metrics.jsonl").exists()}
    for r in args.runs:
        print(f"{r}: " + (speed(runs[str(r)]) if str(r) in runs else "no metrics.jsonl"))
    if not runs:
        return
    shared = sorted(set.intersection(*(
        {e for e, m in ms.items() if "val_log_px" in m} for ms in runs.values())))
    print("\n| epoch | " + " | ".join(f"{r}: val ELBO / estimate" for r in runs) + " |")
    print("|---:|" + "---|" * len(runs))
    for e in shared[::args.every] + ([shared[-1]] if shared[::args.every][-1:] != shared[-1:]
                                      else []):
        cells = [f"{ms[e]['val_elbo']:.2f} / {-ms[e]['val_log_px']:.2f}" for ms in runs.values()]
        print(f"| {e} | " + " | ".join(cells) + " |")
    for r, ms in runs.items():
        best = max((m for m in ms.values() if "val_log_px" in m), key=lambda m: m["val_log_px"],
                   default=None)
        if best:
            print(f"{r}: best estimate {-best['val_log_px']:.2f} at epoch {best['epoch']}")


if __name__ == "__main__":
    main()
