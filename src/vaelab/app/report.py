"""A run directory -> one self-contained HTML page (every image embedded as a data URI, no
network needed to view it) with its PNGs beside it; several runs -> one comparison page.

The page holds the lecture's figure (Data / Mean samples / Samples), reconstructions,
interpolations, latent traversals, the latent space, the training curves and every result
recorded in the run (``evaluate``, ``baselines``, ``classify``); a missing result is named
with the command that makes it."""
from __future__ import annotations

import base64
import html
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..data.splits import data_examples, load_data
from ..devices import resolve_device
from ..files import atomic_write
from ..runs.records import best_epoch, estimate_words, read_metrics, read_results, tail_words
from ..runs.rundir import load_run, place, workdir
from ..studies.evaluate import ACTIVE_THRESHOLD, latent_diagnostics, ranked_dimensions
from ..studies.sample import interpolate, latent_means, manifold, prior_interpolate, traverse
from .plots import (interpolation_figure, latent_figure, manifold_figure, sample_figures,
                    time_to_quality, training_curves, traversal_figure)

log = logging.getLogger(__name__)

# key: (heading, caption); the order of the page
FIGURES = {
    "samples": ("Imagination: z ~ p(z), E[x|z] and x ~ p(x|z)",
                "Left: test images. Middle: the decoder's mean E[x|z] for z drawn from the prior. "
                "Right: one sample x ~ p(x|z) for the same z."),
    "reconstructions": ("Reconstructions", "Test images beside E[x | z = E_q[z|x]]."),
    "interpolations": ("Interpolations",
                       "Left: two test images (first and last columns) and the decoder's means "
                       "along the straight line between their posterior means (codes, not "
                       "samples). Right: great circles between two prior samples."),
    "traversals": ("Latent traversals",
                   "One row per active latent dimension, largest KL(q||p) first (a "
                   "VampPrior's: largest variance of the posterior means), then "
                   "inactive ones: that coordinate swept over the prior's 5%..95% quantiles, "
                   "the others held at a test image's posterior mean."),
    "manifold": ("The learned manifold", "E[x|z] over a grid of the prior's quantiles "
                 "(Kingma & Welling 2014, fig. 4)."),
    "latent": ("The latent space", "Posterior means E_q[z|x] of the test set, coloured by label."),
    "curves": ("Training curves", "ELBO, reconstruction term and KL per epoch (nats per "
               "example), training and validation."),
}


@dataclass
class RunSummary:
    """What a page shows of one run: its settings, training history, results, figures."""

    run_dir: Path  # where the run's results and figures are (a downloaded model: the user's)
    cfg: Config
    history: list[dict]
    results: dict[str, dict]
    figures: dict[str, Path] = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    params: int = 0
    spec: str = ""  # how the user names the run (a path or hf://...)

    @property
    def best(self) -> dict | None:
        """The epoch of the weights shown (chosen on the run's own objective)."""
        return best_epoch(self.history, self.cfg.train)

    def best_nll(self) -> dict | None:
        """The test evaluation with the most importance samples, if any."""
        ev = [r for r in self.results.get("evaluate", {}).values()
              if isinstance(r, dict) and r.get("split") == "test"
              and isinstance(r.get("k"), int) and r["k"] > 0]
        return max(ev, key=lambda r: r["k"]) if ev else None


def make_figures(run_dir: str | Path, out_dir: str | Path, device: str = "auto",
                 which: str = "best", seed: int = 0, pairs: int = 8, steps: int = 10,
                 max_rows: int = 64, data_dir: str | None = None) -> RunSummary:
    """Write every figure of a run into ``out_dir`` and return its summary (``data_dir``:
    where its data set is, as :func:`~vaelab.runs.rundir.load_run` takes it)."""
    out_dir = Path(out_dir)
    dev = resolve_device(device)
    model, cfg = load_run(run_dir, which, dev, data_dir)
    data = load_data(cfg.data, dev)
    history = read_metrics(run_dir)
    s = RunSummary(place(run_dir).workdir, cfg, history, read_results(run_dir),
                   params=sum(p.numel() for p in model.parameters()), spec=str(run_dir))
    split = data.test if len(data.test) else data.val
    s.figures.update(sample_figures(model, data, out_dir, seed=seed))
    x = data_examples(data, 2 * pairs, seed=seed).to(dev)
    pairs = min(pairs, len(x) // 2)  # a small test set has fewer
    x = x[:2 * pairs] if pairs else x
    y = split.labels[:1] if model.classes else None  # a conditional model's base label
    if model.classes:
        x = split.batch(slice(0, 1))
    elif pairs:  # (between images of two classes a conditional model has no single path)
        ends = x[:pairs, None], x[pairs:, None]  # the images themselves at both row ends
        s.figures["interpolations"] = interpolation_figure(
            torch.cat([ends[0], interpolate(model, x[:pairs], x[pairs:], steps), ends[1]], 1),
            prior_interpolate(model, pairs, steps, seed), out_dir / "interpolations.png",
            data.name)
    s.diagnostics = latent_diagnostics(model, split)
    s.figures["traversals"] = _traversals(model, x[:1], y, s.diagnostics, out_dir, max_rows)
    if model.planar:
        s.figures["manifold"] = manifold_figure(manifold(model, 20), out_dir / "manifold.png",
                                                data.name)
    s.figures["latent"] = latent_figure(latent_means(model, split), split.labels, data.classes,
                                        out_dir / "latent.png", data.name)
    if history:
        s.figures["curves"] = training_curves(history, out_dir / "curves.png", data.name)
    return s


def _traversals(model, x, y, diagnostics: dict, out_dir: Path, max_rows: int,
                inactive_rows: int = 2) -> Path:
    """Rows for the active dimensions, most informative first (:func:`ranked_dimensions`),
    then a few inactive ones (they all decode to the same image, so the rest are counted,
    not drawn)."""
    order, labels = ranked_dimensions(diagnostics)
    active = torch.tensor(diagnostics["posterior_mean_var"]) > ACTIVE_THRESHOLD
    on = [d for d in order if active[d]][:max_rows]
    off = [d for d in order if not active[d]]
    dims = on + off[:inactive_rows]
    title = f"{len(on)} active dimension{'s' * (len(on) != 1)}"
    if off:
        title += (f", then {len(dims) - len(on)} of the {len(off)} inactive ones"
                  if len(off) > inactive_rows else ", then the inactive ones")
    return traversal_figure(traverse(model, x, dims, 11, y),
                            [f"z{d + 1}  {labels[d]}" for d in dims],
                            out_dir / "traversals.png", title)


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:12px 16px;line-height:1.45;color:#1d1d1f;background:#fff;overflow-wrap:anywhere}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid
#ddd;padding-bottom:.2em}img{max-width:100%;height:auto;display:block}
.wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{padding:4px 10px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;font-size:.92em;word-break:break-all}
.note{color:#555;font-size:.9em}.missing{color:#8a5a00}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:14px}
figure{margin:0 0 1em}figcaption{color:#555;font-size:.88em;margin:.3em 0}
"""


def _esc(v) -> str:
    return html.escape(str(v))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _num(v, fmt: str = ".2f") -> str:
    """A number as ``fmt`` says; anything else (a recorded file may hold anything) escaped."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    try:
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) \
            else _esc(v)
    except (ValueError, TypeError):
        return _esc(v)


def _section(render, s: "RunSummary", name: str) -> str:
    """A results section; a recorded file of the wrong shape is named, not a traceback."""
    try:
        return render(s)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return (f'<p class="missing">{_esc(name)}.json is malformed ({_esc(type(e).__name__)}: '
                f"{_esc(e)}); run <code>vaelab {_esc(name)}</code> again</p>")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="wrap"><table><tr>{head}</tr>{body}</table></div>'


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
            f"<p class=\"note\">Written by vaelab on {time.strftime('%Y-%m-%d %H:%M')}. "
            "Log-likelihoods in nats per example; bits/dim = nats / (D ln 2).</p>"
            "</body></html>\n")


def _missing(command: str) -> str:
    return f'<p class="missing">Not measured yet: <code>{_esc(command)}</code></p>'


def run_rows(s: RunSummary) -> list[tuple[str, str]]:
    """(label, value) rows describing a run: the same rows in a report and in a comparison."""
    d, m, t = s.cfg.data, s.cfg.model, s.cfg.train
    best, ev = s.best, s.best_nll()
    secs = sum(h.get("seconds", 0.0) for h in s.history)
    bpd = best and best.get("val_bits_per_dim")
    rows = [("data set", f"{d.dataset} (binarize: {d.binarize})"),
            ("model", ("conditional " if m.conditional else "")
             + f"{m.net} {','.join(map(str, m.conv_widths if m.net == 'conv' else m.hidden))}, "
               f"latent {m.latent_dim}, {m.likelihood} likelihood, {m.prior} prior"
             + (" (autoencoder)" if t.autoencoder else "")),
            ("parameters", f"{s.params:,}"),
            ("epochs", f"{len(s.history)} of {t.epochs}" +
             (f", KL warm-up {t.warmup}" if t.warmup else "") +
             (f", beta {t.beta:g}" if t.beta != 1 else "") +
             (f", IWAE k = {t.samples}" if t.objective == "iwae" else "") +
             tail_words(t) +
             (f", free bits {t.free_bits:g}" if t.free_bits else "")),
            ("training time", f"{secs / 60:.1f} min" if secs else "–"),
            ("validation ELBO", f"{best['val_elbo']:.2f} nats" +
             (f" ({bpd:.4f} bits/dim)" if bpd else "") + f" at epoch {best['epoch']}, the "
             f"weights shown" if best else "–"),
            *([("validation −log p(x)", f"{-best['val_log_px']:.2f} nats (importance-sampled, "
                f"k = {t.select_k}, {t.select_images} images): what chose the weights")]
              if best and "val_log_px" in best else []),
            ("test −log p(x)", f"{ev['nll']:.2f} ± {ev['nll_stderr']:.2f} nats "
                               f"({estimate_words(ev)})"
             if ev else "–"),
            ("active units", f"{s.diagnostics['active_units']} of "
                             f"{s.diagnostics['latent_dim']}" if s.diagnostics else "–")]
    return [(label, _esc(value)) for label, value in rows]


def _evaluate_section(s: RunSummary) -> str:
    ev = s.results.get("evaluate")
    if not ev:
        return _missing(f"vaelab evaluate {s.spec} --k 5000")
    rows = [[_esc(f"{r['split']}, {r.get('which', 'best')}"), _num(r.get("k") or None, "d"),
             _num(r["elbo"]), _num(r.get("nll")), _num(r.get("nll_stderr")),
             _num(r.get("nll_bits_per_dim") or r.get("bits_per_dim"), ".4f"),
             _num(r.get("gap")), f"{_num(r['active_units'], 'd')} of {_num(r['latent_dim'], 'd')}"]
            for r in ev.values()]
    html_ = _table(["split, weights", "k", "ELBO", "−log p(x)", "± s.e.", "bits/dim",
                    "log p(x) − ELBO", "active units"], rows)
    warns = {w for r in ev.values() for w in r.get("warnings", [])}
    return html_ + "".join(f'<p class="note">warning: {_esc(w)}</p>' for w in sorted(warns))


def _baselines_section(s: RunSummary) -> str:
    bl = s.results.get("baselines")
    if not bl:
        return _missing(f"vaelab baselines --run {s.spec}")
    out, ev = "", s.best_nll()
    for split, rows in bl.items():
        table = [[_esc(r["model"]), _num(r["nll"]), _num(r["nll_stderr"]),
                  _num(r["bits_per_dim"], ".4f"), _num(r["params"], ","), _esc(r["note"])]
                 for r in rows]
        if ev and split == "test":
            table.append(["<b>this VAE</b>", f"<b>{_num(ev['nll'])}</b>",
                          _num(ev["nll_stderr"]), _num(ev.get("nll_bits_per_dim"), ".4f"),
                          f"{s.params:,}", _esc(f"importance-sampled, k = {ev['k']}")])
        out += (f"<p>{_esc(split)} set, n = {_num(rows[0]['n'] if rows else 0, 'd')}</p>" +
                _table(["model", "−log p(x)", "± s.e.", "bits/dim", "parameters", "note"],
                       table))
    return out


def _classify_section(s: RunSummary) -> str:
    cl = s.results.get("classify")
    if not cl:
        return _missing(f"vaelab classify --run {s.spec}")
    out = ""
    for split, res in cl.items():
        n = res["n_train"]
        rows = [[_esc(r["model"]), _esc(r["kind"]), _num(r["accuracy"], ".4f"),
                 _num(r["log_loss"], ".4f"), _num(r["ece"], ".4f"), _num(r["seconds"], ".1f")]
                for r in res["rows"] if r["n"] == n]
        out += (f"<p>{_esc(split)} set, n = {_num(res['n_test'], 'd')}; trained on all "
                f"{_num(n, 'd')} labelled "
                "images (log-loss in nats; ECE: expected calibration error)</p>" +
                _table(["classifier", "kind", "accuracy", "log-loss", "ECE", "train s"], rows))
        sizes = sorted({r["n"] for r in res["rows"]})
        acc = {(r["model"], r["n"]): r["accuracy"] for r in res["rows"]}
        out += "<p>Test accuracy against the number of labelled training images:</p>" + _table(
            ["classifier", *map(str, sizes)],
            [[_esc(m), *(_num(acc.get((m, s)), ".4f") for s in sizes)]
             for m in dict.fromkeys(r["model"] for r in res["rows"])])
        for key, path in res.get("figures", {}).items():
            path = s.run_dir / "classify" / Path(path).name  # wherever the run now lies
            if path.is_file():
                out += f"<figure>{_img(path, key)}</figure>"
    return out


def _figure_html(s: RunSummary, key: str) -> str:
    title, caption = FIGURES[key]
    return (f"<figure>{_img(s.figures[key], title)}<figcaption>{_esc(caption)}"
            "</figcaption></figure>")


def report_html(s: RunSummary) -> str:
    body = [f"<h1>{_esc(s.cfg.data.dataset)} VAE: {_esc(s.run_dir.name)}</h1>",
            _table(["run", _esc(s.run_dir)], [[a, b] for a, b in run_rows(s)])]
    for key in FIGURES:
        if key in s.figures:
            body.append(f"<h2>{_esc(FIGURES[key][0])}</h2>" + _figure_html(s, key))
    body += ["<h2>Log-likelihood (vaelab evaluate)</h2>",
             _section(_evaluate_section, s, "evaluate"),
             "<h2>Maximum-likelihood baselines (vaelab baselines)</h2>",
             _section(_baselines_section, s, "baselines"),
             "<h2>Classifiers (vaelab classify)</h2>", _section(_classify_section, s, "classify")]
    return _page(f"vaelab report: {s.run_dir.name}", "\n".join(body))


def compare_html(runs: list[RunSummary], time_figure: Path | None = None) -> str:
    labels = [_esc(r.run_dir.name) for r in runs]
    rows = [[label] + [dict(run_rows(r))[label] for r in runs] for label, _ in run_rows(runs[0])]
    body = ["<h1>vaelab: runs compared</h1>", _table(["", *labels], rows)]
    if time_figure is not None:
        body.append("<h2>Time to quality</h2><figure>" + _img(time_figure, "time to quality")
                    + "<figcaption>Validation ELBO against cumulative training minutes (each "
                    "epoch's own seconds, validation excluded): which settings reach a bound "
                    "first.</figcaption></figure>")
    for key in FIGURES:
        if any(key in r.figures for r in runs):
            cols = "".join(f"<div><p><b>{lab}</b></p>" +
                           (_figure_html(r, key) if key in r.figures else "<p>–</p>") + "</div>"
                           for lab, r in zip(labels, runs))
            body.append(f"<h2>{_esc(FIGURES[key][0])}</h2><div class=\"cols\">{cols}</div>")
    return _page("vaelab: runs compared", "\n".join(body))


def write_report(run_dir: str | Path, out: str | Path | None = None, **kw) -> Path:
    """``RUN/report/index.html`` (or ``out``) with the PNGs beside it."""
    out = Path(out) if out else workdir(run_dir) / "report" / "index.html"
    s = make_figures(run_dir, out.parent, **kw)
    atomic_write(out, report_html(s).encode())
    return out


def write_comparison(run_dirs: list[str | Path], out: str | Path, **kw) -> Path:
    """One page, the runs side by side; each run's PNGs go to RUN/report/."""
    runs = [make_figures(r, workdir(r) / "report", **kw) for r in run_dirs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    timed = {str(r.spec or r.run_dir): r.history for r in runs if r.history}
    figure = time_to_quality(timed, out.parent / f"{out.stem}-time-to-quality.png") \
        if timed else None
    atomic_write(out, compare_html(runs, figure).encode())
    return out
