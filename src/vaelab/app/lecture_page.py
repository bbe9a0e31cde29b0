"""The lecture's page: one HTML file, its pictures inline (PNG data URLs, SVG), its script
inline, nothing from the network. One function per section, in the lecture's order; every
number is a ``<span class="num" data-key=... data-value=...>`` of a computed value."""
from __future__ import annotations

import html
import math

from .. import training
from .pictures import heatmap, png, svg_chart

LN2 = math.log(2)

CSS = """
body{font:16px/1.5 system-ui,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;
color:#1a1a1a}
h1{font-size:1.9em;margin-bottom:.2em} h2{border-top:1px solid #ccc;padding-top:1em}
nav ol{columns:3;font-size:.95em} .grid{display:flex;flex-wrap:wrap;gap:1.2em;
align-items:flex-start} figure{margin:0} figcaption{font-size:.85em;color:#555;max-width:34em}
img.px{image-rendering:pixelated} img.map{width:210px;height:210px;border:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}
td,th{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left} td.r{text-align:right}
.num{font-variant-numeric:tabular-nums;font-weight:600} pre{background:#f6f6f6;padding:.8em;
overflow-x:auto;font-size:.85em} .live{background:#eef5ff;padding:.5em .8em;border-radius:4px}
.note{color:#555;font-size:.9em}
@media print{nav,.live{display:none} h2{break-before:auto} section{break-inside:avoid-page}}
"""


def num(key: str, value: float, fmt: str = ".2f") -> str:
    return (f'<span class="num" data-key="{key}" data-value="{value!r}">'
            f'{format(value, fmt)}</span>')


def img(src: str, alt: str, cls: str = "px", id_: str = "") -> str:
    ident = f' id="{id_}"' if id_ else ""
    return f'<img{ident} class="{cls}" src="{src}" alt="{html.escape(alt)}">'


def fig(body: str, caption: str) -> str:
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


def section(id_: str, title: str, body: str) -> str:
    return f'<section id="{id_}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def render(lec, s: dict, k: int, live: bool, script: str) -> str:
    sections = [mle(s["mle"]), bayes(s["bayes"], s["test_images"]), gen_disc(s["gen_disc"]),
                autoencoder(s.get("autoencoder"), s["gen_disc"]), compress(s["compress"], k),
                vae(lec), learning(s["history"]), imagination(s["imagination"], lec),
                results(s["imagination"])]
    toc = "".join(f'<li><a href="#{i}">{t}</a></li>' for i, t in TITLES)
    runs = ", ".join(f"{r}: <code>{html.escape(str(p))}</code>" for r, p in lec.runs.items())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
            f'Variational autoencoders, computed on your models</title><style>{CSS}</style>'
            f'</head><body data-live="{int(live)}"><h1>Variational autoencoders</h1>'
            f'<p class="note">From maximum likelihood to imagination, each idea computed on '
            f'models trained on <b>{html.escape(lec.data.name)}</b> ({runs}). Every number '
            f'below was computed for this page or read from the runs\' own files.</p>'
            f'<nav><ol>{toc}</ol></nav>' + "\n".join(sections) +
            f"<script>{script}</script></body></html>")


TITLES = [("mle", "Maximum likelihood"), ("bayes", "Bayes rule"),
          ("gen-disc", "Generative vs discriminative"), ("autoencoder", "Autoencoders"),
          ("compress", "Maximally compress the data"), ("vae", "The VAE"),
          ("learning", "Learning"), ("imagination", "Imagination"),
          ("results", "VAE generation results")]
T = dict(TITLES)


def mle(m: dict) -> str:
    r, c = m["pixel"]
    mus, ll = m["mus"].tolist(), m["ll"].tolist()
    chart = svg_chart({"log-likelihood  sum_i log N(x_i; mu, sigma^2)": (mus, ll)}, "mu",
                      "nats", marks={"sample mean": m["mean"]})
    f = m["factorized"]
    shape = m["image_mean"].shape
    return section("mle", T["mle"], f"""
<p>Maximum likelihood picks the parameters under which the data are most probable:
Θ<sub>MLE</sub> = argmax<sub>Θ</sub> Π<sub>i</sub> f(x<sub>i</sub>; Θ). For a Gaussian the
answer is known in closed form: μ<sub>MLE</sub> is the sample mean. Here x<sub>i</sub> are
the {m['n']} training values of pixel (row {r}, column {c}), the one that varies most.</p>
<div class="grid">{fig(chart, "The log-likelihood of μ with σ² fixed at its MLE; the "
                           "dashed line is the sample mean.")}
<div><table>
<tr><td>sample mean</td><td class="r">{num("mle-mean", m["mean"], ".4f")}</td></tr>
<tr><td>argmax of the curve (grid step {m['grid_step']:.4f})</td>
<td class="r">{num("mle-argmax", m["grid_argmax"], ".4f")}</td></tr>
<tr><td>slope dℓ/dμ at the mean</td><td class="r">{num("mle-slope", m["slope_at_mean"],
                                                            ".1e")}</td></tr>
<tr><td>σ² (MLE: the mean squared deviation)</td>
<td class="r">{num("mle-var", m["var"], ".4f")}</td></tr></table>
<p class="live" hidden>μ = <input id="mu" type="range" min="0" max="1" step="0.005"
value="{m['mean']:.3f}"> <span id="mu-value">{m['mean']:.3f}</span>:
log-likelihood <span id="mu-ll" class="num">{max(ll):.2f}</span> nats</p></div></div>
<p>The same idea for whole images: give every pixel its own (discretized) Gaussian and fit
each by maximum likelihood. That model knows each pixel's mean and spread, and nothing of how
pixels go together, so its samples are noise around the mean image. Its test negative
log-likelihood is {num("factorized-nll", f["nll"])} nats per image
({num("factorized-bpd", f["bits_per_dim"], ".4f")} bits/dim), the number
<code>vaelab baselines</code> reports.</p>
<div class="grid">{fig(img(png(m["image_mean"][None], scale=6), "mean image"),
                       "the mean image (μ<sub>MLE</sub> per pixel)")}
{fig(img(png(m["samples"][:36], 6, scale=3), "samples"), "36 samples of the factorized model")}
</div><p class="note">Images of {shape[1]}×{shape[2]} pixels.</p>""")


def bayes(b: dict, n_test: int) -> str:
    g = b["grid"]
    panels = [("lik", g["log_lik"], "likelihood p(x|z)"), ("prior", g["log_prior"],
              "prior p(z)"), ("post", g["log_post"], "posterior p(z|x)"),
              ("q", g["log_q"], "encoder q(z|x)")]
    a, c = g["zs"]
    box = f"z₁ ∈ [{a[0]:.2f}, {a[-1]:.2f}], z₂ ∈ [{c[0]:.2f}, {c[-1]:.2f}]"
    figures = "".join(fig(img(heatmap(v), t, "map", f"bayes-{k}"), t) for k, v, t in panels)
    return section("bayes", T["bayes"], f"""
<p>Bayes rule: posterior = likelihood × prior / evidence,
p(z|x) = p(x|z) p(z) / p(x). For a VAE the evidence p(x) = ∫ p(x|z) p(z) dz is an integral
over every code, which is why the posterior is intractable and the encoder q(z|x)
approximates it. With a 2-D latent the integral can be done on a grid, so here all four are
exact, for one test image, on {box}.</p>
<div class="grid">{fig(img(png(b["image"], scale=8), "the test image", "px", "bayes-image"),
                       "the test image x")}{figures}</div>
<table><tr><td>evidence log p(x) (the grid's integral)</td>
<td class="r" id="bayes-log-px-cell">{num("bayes-log-px", b["log_px"])} nats</td></tr>
<tr><td>ELBO (1000 samples of q)</td><td class="r">{num("bayes-elbo", b["elbo"])} nats</td></tr>
<tr><td>gap log p(x) − ELBO = KL(q(z|x) ‖ p(z|x))</td>
<td class="r" id="bayes-gap-cell">{num("bayes-gap", b["gap"])} nats</td></tr></table>
<p class="live" hidden>test image <input id="bayes-index" type="number" min="0"
max="{n_test - 1}" value="{b['index']}"> (0–{n_test - 1}): the panels and numbers follow.</p>
""")


NO_LABELS = ("<p class='note'>This data set has no labels, which {what} needs (a folder "
             "data set gets them from one sub-folder per class).</p>")


def gen_disc(gd: dict | None) -> str:
    if gd is None:
        return section("gen-disc", T["gen-disc"], NO_LABELS.format(
            what="comparing classifiers"))
    rows = gd["curves"]
    series_acc, series_loss = {}, {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        label = f"{name} ({mine[0]['kind']})"
        series_acc[label] = ([r["n"] for r in mine], [r["accuracy"] for r in mine])
        series_loss[label] = ([r["n"] for r in mine], [r["log_loss"] for r in mine])
    table = "".join(f"<tr><td>{html.escape(r['model'])}</td><td class='r'>{r['n']}</td>"
                    f"<td class='r'>{num(f'acc-{i}', r['accuracy'], '.3f')}</td>"
                    f"<td class='r'>{num(f'loss-{i}', r['log_loss'], '.3f')}</td></tr>"
                    for i, r in enumerate(rows))
    return section("gen-disc", T["gen-disc"], f"""
<p>A generative model learns p(x, y) = p(x|y) p(y); a classifier follows from Bayes rule,
p(y|x) ∝ p(x|y) p(y) ("estimate the model, then define the classifier"). A discriminative
model learns p(y|x) directly. On the same {gd['n_train']} labelled training digits (nested
subsets) and {gd['n_test']} test digits: Gaussian naive Bayes, a generative model whose
p(x|y) is a factorized Gaussian, against logistic regression. The generative model has to
describe the images, which takes few parameters when its assumptions are simple; the
discriminative one spends everything on the boundary between the classes. {_verdict(rows)}
</p>
<div class="grid">{fig(svg_chart(series_acc, "labelled examples", "test accuracy",
                                 log_x=True), "accuracy")}
{fig(svg_chart(series_loss, "labelled examples", "test log-loss (nats)", log_x=True),
     "log-loss, −mean log p(y|x)")}</div>
<table><tr><th>classifier</th><th>labels</th><th>accuracy</th><th>log-loss</th></tr>{table}
</table>""")


def _verdict(rows: list[dict]) -> str:
    """What the curves show, read off them (not assumed)."""
    sizes = sorted({r["n"] for r in rows})
    parts = []
    for n in (sizes[0], sizes[-1]):
        at = {r["kind"]: r for r in rows if r["n"] == n}
        g, d = at["generative"], at["discriminative"]
        ahead = "the generative" if g["accuracy"] > d["accuracy"] else "the discriminative"
        parts.append(f"with {n} labels {ahead} one is ahead in accuracy "
                     f"({g['accuracy']:.3f} against {d['accuracy']:.3f})")
    worse = "naive Bayes" if g["log_loss"] > d["log_loss"] else "logistic regression"
    return (f"Here, {parts[0]}; {parts[1]}. The log-loss tells more than accuracy: {worse} "
            "is the more overconfident when it is wrong (naive Bayes multiplies the "
            "evidence of pixels that are not independent).")


def autoencoder(a: dict | None, gd: dict | None) -> str:
    if a is None or gd is None:
        return section("autoencoder", T["autoencoder"], NO_LABELS.format(
            what="probing what the codes learned"))
    probes = "".join(f"<tr><td>{html.escape(r['model'])}</td>"
                     f"<td class='r'>{num(f'probe-{i}', r['accuracy'], '.3f')}</td></tr>"
                     for i, r in enumerate(gd["probes"]))
    return section("autoencoder", T["autoencoder"], f"""
<p>An autoencoder learns a code z = f(x) and a decoder back to x, "to maximally compress
the data". Features learned? A linear probe and 10 nearest neighbours on the codes, trained
with all labels, say how much of the class the codes hold (the VAE's posterior means and an
autoencoder of the same nets, trained on the same images without labels):</p>
<table><tr><th>probe</th><th>test accuracy</th></tr>{probes}</table>
<div class="grid">{fig(img(png(a["neighbours"], 6, scale=4), "nearest neighbours"),
                       "each row: a test image, then the five training images whose "
                       "autoencoder codes are nearest")}
{fig(img(png(a["ae_prior"], 6, scale=4), "autoencoder decoding N(0, I)"),
     "the autoencoder's decoder at z ~ N(0, I)")}
{fig(img(png(a["vae_prior"], 6, scale=4), "VAE decoding N(0, I)"),
     "the VAE's decoder at z ~ p(z) = N(0, I): E[x|z]")}</div>
<p>Why an autoencoder cannot imagine: nothing in its training says where its codes lie, so a
z drawn from any distribution chosen afterwards lands where no image was encoded, and the
decoder's answer there is not an image (the middle panel). The VAE's KL term pulls every
q(z|x) towards the prior p(z), so z ~ p(z) is where the decoder was trained: it decodes to
digits (the last panel).</p>""")


def compress(c: dict, k: int) -> str:
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td class='r'>"
                   f"{num(f'bits-{i}', bits, '.1f')}</td><td class='r'>"
                   f"{bits / c['pixels']:.4f}</td></tr>"
                   for i, (name, bits) in enumerate(c["rows"].items()))
    ev = c["evaluation"]
    note = "" if c["file"] else f"<p class='note'>{html.escape(c.get('file_note', ''))}</p>"
    return section("compress", T["compress"], f"""
<p>"Maximally compress the data": a probability model is a code. An image of probability
p(x) can be stored in −log₂ p(x) bits (entropy coding), so the better the model, the
shorter the file. The VAE's −log p(x) is estimated by importance sampling with
{num("k", k, "d")} samples ({num("vae-nll", ev["nll"])} nats; its −ELBO
{num("vae-elbo", -ev["elbo"])}), on the {c['n']} test images; bits-back coding turns the
−ELBO into a real file.</p>
<table><tr><th>code</th><th>bits per image</th><th>bits/dim</th></tr>{rows}</table>{note}""")


def vae(lec) -> str:
    m = lec.cfg.model
    svg = ('<svg viewBox="0 0 260 170" width="260" height="170" role="img" '
           'xmlns="http://www.w3.org/2000/svg"><defs><marker id="arr" viewBox="0 0 10 10" '
           'refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path '
           'd="M0,0L10,5L0,10z"/></marker></defs>'
           '<rect x="20" y="10" width="220" height="150" rx="8" fill="none" stroke="#888"/>'
           '<text x="228" y="152" text-anchor="end" font-size="12">N</text>'
           '<circle cx="130" cy="45" r="22" fill="#fff" stroke="#111"/>'
           '<text x="130" y="51" text-anchor="middle" font-size="18">z</text>'
           '<circle cx="130" cy="125" r="22" fill="#ccc" stroke="#111"/>'
           '<text x="130" y="131" text-anchor="middle" font-size="18">x</text>'
           '<line x1="130" y1="67" x2="130" y2="101" stroke="#111" marker-end="url(#arr)"/>'
           '<path d="M108,118 C70,100 70,70 108,52" fill="none" stroke="#1f5fa8" '
           'stroke-dasharray="5 4" marker-end="url(#arr)"/>'
           '<text x="62" y="88" font-size="12" fill="#1f5fa8">q(z|x)</text>'
           '<text x="140" y="88" font-size="12">p(x|z)</text>'
           '<text x="160" y="40" font-size="12">p(z)</text></svg>')
    return section("vae", T["vae"], f"""
<div class="grid">{fig(svg, "The graphical model: z → x for each of N images (x observed, "
                            "shaded); the dashed arrow is the encoder's approximation.")}
<div><p>Three distributions, each a <code>torch.distributions</code> object in vaelab:</p>
<ul><li>prior p(z) = {html.escape(_prior(m))}, z of {m.latent_dim} dimensions;</li>
<li>decoder p(x|z): the {html.escape(m.likelihood)} likelihood, its parameters from a
{html.escape(m.net)} net ({html.escape(', '.join(map(str, m.hidden)))} hidden units);</li>
<li>encoder q(z|x) = N(μ(x), diag σ²(x)), from a net of the same shape: a Gaussian that
approximates the intractable posterior p(z|x).</li></ul>
<p>The reparameterization: z = μ(x) + σ(x) ⊙ ε with ε ~ N(0, I), so a sample of q is a
differentiable function of the encoder's outputs and gradients flow through it.</p></div>
</div>""")


def _prior(m) -> str:
    return {"normal": "N(0, I)", "mog": f"a mixture of {m.prior_components} Gaussians",
            "vamp": f"the VampPrior ({m.prior_components} pseudo-inputs)"}.get(m.prior, m.prior)


def learning(history: list[dict]) -> str:
    ep = [h["epoch"] for h in history]
    series = {"−E_q log p(x|z) (reconstruction)": (ep, [-h["train_recon"] for h in history]),
              "KL(q(z|x) ‖ p(z))": (ep, [h["train_kl"] for h in history])}
    if all("val_elbo" in h for h in history):
        series["−ELBO, validation"] = (ep, [-h["val_elbo"] for h in history])
    chain = training.__doc__.split("One step,", 1)[1].replace("::", ":")
    last = history[-1]
    return section("learning", T["learning"], f"""
<p>The loss is built from log p and log q: the negative ELBO,
−ELBO = −E<sub>q(z|x)</sub>[log p(x|z)] + KL(q(z|x) ‖ p(z)) ≥ −log p(x), a reconstruction
term plus a KL term, minimised by stochastic gradient descent (Adam) on mini-batches, with
gradients from backpropagation. Over the run's {len(history)} epochs (training set, nats per
image; the last: reconstruction {num("last-recon", -last["train_recon"])},
KL {num("last-kl", last["train_kl"])}):</p>
{fig(svg_chart(series, "epoch", "nats per image", width=700), "the run's metrics.jsonl")}
<p>One step, as the code does it:</p><pre>One step,{html.escape(chain)}</pre>""")


def imagination(im: dict, lec) -> str:
    return section("imagination", T["imagination"], f"""
<p>Generation is "imagination": draw z ~ p(z), compute p(x|z), choose x ~ p(x|z). One pass
through the decoder, no iteration: on this machine ({html.escape(im['device'])}) the VAE
imagines {num("images-per-second", im["images_per_second"], ",.0f")} images per second
(batches of {im['batch']}, timed here).</p>
<div class="grid">{fig(img(png(im["mean"][:36], 6, scale=4), "E[x|z]", "px", "imagine-mean"),
                       "E[x|z] for 36 codes z ~ p(z)")}
{fig(img(png(im["sample"][:36], 6, scale=4), "x ~ p(x|z)", "px", "imagine-sample"),
     "x ~ p(x|z) for the same z")}</div>
<p class="live" hidden>temperature <input id="temperature" type="range" min="0.1" max="1.5"
step="0.05" value="1"> <span id="temperature-value">1.00</span>
(z ~ N(0, T² I))</p>""")


def results(im: dict) -> str:
    grids = [("Data", im["data"]), ("Mean samples", im["mean"]), ("Samples", im["sample"])]
    return section("results", T["results"], '<div class="grid">' + "".join(
        fig(img(png(x, 10, scale=3), name), name) for name, x in grids) + """</div>
<p>The lecture's figure: test images; E[x|z] and x ~ p(x|z) for the same 100 codes
z ~ p(z). The means are smooth; the samples carry the decoder's own noise.</p>""")
