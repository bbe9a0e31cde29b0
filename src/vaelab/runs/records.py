"""What a run records beside its weights: the epochs' metrics (``metrics.jsonl``), the
results of the commands that study it (``evaluate.json``, ``baselines.json``,
``classify.json``), and which epoch its best weights come from."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..errors import RunError
from ..files import atomic_write
from .rundir import place, workdir

log = logging.getLogger(__name__)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The epochs' metrics. A last line torn by a crash during its append is left out,
    with a warning (resuming rewrites the log from the checkpoint's epochs)."""
    p = place(run_dir).source / "metrics.jsonl"
    if not p.is_file():
        return []
    lines = [line for line in p.read_text(errors="replace").splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not an epoch's metrics")
            out.append(row)
        except ValueError:
            if i < len(lines) - 1:
                raise RunError(f"{p}, line {i + 1}, is damaged; delete the damaged lines (the "
                               "checkpoint holds the training state)") from None
            log.warning("%s: the last line is incomplete (a crash while it was written); "
                        "left out", p)
    return out


RESULTS = ("evaluate", "baselines", "classify")  # RUN/<name>.json, written by those commands


def write_result(run_dir: str | Path, name: str, key: str, value) -> Path:
    """Record a command's result in ``RUN/<name>.json`` under ``key`` (e.g. the split and k
    of an evaluation); other keys are kept. Atomic: an interrupted write loses nothing."""
    if name not in RESULTS:
        raise ValueError(f"unknown result {name!r}; one of {RESULTS}")
    path = workdir(run_dir) / f"{name}.json"
    entries = _read_result(path) if path.is_file() else {}
    entries[key] = value
    atomic_write(path, (json.dumps(entries, indent=1) + "\n").encode())
    return path


def read_results(run_dir: str | Path) -> dict[str, dict]:
    """The results recorded for a run: ``{name: {key: value}}`` for each file that exists
    (for a downloaded model, those it came with and those the user's commands added). A
    file that is not valid JSON raises a RunError naming it."""
    where = place(run_dir)
    out: dict[str, dict] = {}
    for d in dict.fromkeys([where.source, where.workdir]):
        for name in RESULTS:
            if (d / f"{name}.json").is_file():
                out.setdefault(name, {}).update(_read_result(d / f"{name}.json"))
    return out


def _read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}); delete it and run "
                       f"`vaelab {path.stem}` again") from e


def selection(tc, select: str | None = None) -> tuple[str, str]:
    """(metrics key, words) of the validation number the best checkpoint is chosen on
    (``select``, or the run's): the objective the run trains, with beta = 1, or the
    importance-sampled log-likelihood."""
    if (select or tc.select) == "nll" and not tc.autoencoder:
        return "val_log_px", (f"validation log-likelihood (importance-sampled, k = "
                              f"{tc.select_k}, the first {tc.select_images} images)")
    if tc.autoencoder:
        return "val_recon", "validation reconstruction log p(x|z=E_q[z|x])"
    if tc.objective == "iwae":
        return f"val_iwae{tc.samples}", f"validation IWAE bound (k = {tc.samples})"
    return "val_elbo", "validation ELBO"


def tail_words(tc) -> str:
    """The IWAE tail of a run's settings, as its report and model card say it ("" if none)."""
    return f", the last {tc.tail} epochs on the IWAE bound (k = {tc.iwae_k})" if tc.tail else ""


def estimate_words(ev: dict) -> str:
    """How a recorded importance-sampled log-likelihood was computed, as the report and
    the model card say it: "k = 5000", with ", bf16 products" where the decoder's matrix
    products ran in bfloat16."""
    return f"k = {ev['k']}" + (", bf16 products" if ev.get("precision") == "bf16" else "")


def best_epoch(history: list[dict], tc) -> dict | None:
    """The metrics of the epoch whose weights are model.safetensors."""
    key = selection(tc)[0]
    rows = [m for m in history if m.get(key) is not None and not math.isnan(m[key])]
    return max(rows, key=lambda m: m[key]) if rows else None
