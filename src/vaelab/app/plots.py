"""Figures (the only module that draws). Uses matplotlib's object API, no pyplot state."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data.images import image_grid
from ..data.splits import Data, class_examples, data_examples
from ..files import atomic_path
from ..models.vae import VAE
from ..studies.sample import imagine, reconstruct

Tensor = torch.Tensor


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, suptitle: str | None = None, bottom: float = 0.0) -> Path:
    """Write ``fig`` as a PNG; ``bottom``: the share of its height kept for a figure legend."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # replaces a link at ``path``, never writes through it
        fig.savefig(tmp, format="png")
    return path


def _panels(grids: list[tuple[str, np.ndarray]], path: str | Path, suptitle: str | None = None,
            panel_inches: float = 4.0, row_labels: list[str] | None = None,
            rows: int | None = None) -> Path:
    """Image grids side by side; ``row_labels`` name the ``rows`` rows of the first panel."""
    aspect = grids[0][1].shape[0] / grids[0][1].shape[1]
    height = min(panel_inches * max(aspect, 0.25), 16.0)  # a tall grid gets narrower
    width = height / max(aspect, 0.25)
    fig = _figure(width * len(grids) + (1.2 if row_labels else 0), height + 0.7)
    for i, (title, g) in enumerate(grids):
        ax = fig.add_subplot(1, len(grids), i + 1)
        ax.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=14)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if row_labels and i == 0:
            step = g.shape[0] / (rows or len(row_labels))
            ax.set_yticks([step * (r + 0.5) for r in range(len(row_labels))], row_labels,
                          fontsize=7)
            ax.tick_params(length=0)
    return _save(fig, path, suptitle)


def _rows(images: Tensor) -> np.ndarray:
    """(R, S, C, H, W) -> one grid, a row of S images per r."""
    return image_grid(images.flatten(0, 1), images.shape[1])


def imagination_figure(data: Tensor, mean: Tensor, sample: Tensor, path: str | Path,
                       nrow: int = 10, suptitle: str | None = None) -> Path:
    """The lecture's figure: Data | Mean samples E[x|z] | Samples x ~ p(x|z)."""
    return _panels([("Data", image_grid(data, nrow)), ("Mean samples", image_grid(mean, nrow)),
                    ("Samples", image_grid(sample, nrow))], path, suptitle)


def reconstruction_figure(data: Tensor, recon: Tensor, path: str | Path, nrow: int = 10,
                          suptitle: str | None = None) -> Path:
    """Test images beside E[x | z = E_q[z|x]]."""
    return _panels([("Data", image_grid(data, nrow)),
                    ("Reconstruction means", image_grid(recon, nrow))], path, suptitle)


def sample_figures(model: VAE, data: Data, out_dir: str | Path, n: int = 100,
                   temperature: float = 1.0, seed: int = 0, samples_path: str | Path | None = None
                   ) -> dict[str, Path]:
    """Write ``samples.png`` (the lecture's three grids) and ``reconstructions.png``. For a
    conditional model each row is one class y: test images of y, and E[x|y,z], x ~ p(x|y,z)
    for z ~ p(z)."""
    out_dir = Path(out_dir)
    nrow = max(1, int(round(math.sqrt(n))))
    y = None
    if model.classes:
        x, y = class_examples(data, nrow, seed=seed)
        n = len(x)
    else:
        x = data_examples(data, n, seed=seed)
    x = x.to(model.device)
    g = imagine(model, n, temperature, seed, y)
    title = f"{data.name}, z ~ N(0, {temperature:g}² I)" if temperature != 1 else data.name
    if model.classes:
        title += ": one row per class"
    return {
        "samples": imagination_figure(x, g["mean"], g["sample"],
                                      samples_path or out_dir / "samples.png", nrow, title),
        "reconstructions": reconstruction_figure(x, reconstruct(model, x, y),
                                                 out_dir / "reconstructions.png", nrow, data.name),
    }


def posterior_figure(images: Tensor, grids: list[dict], path: str | Path,
                     elbos: list[float] | None = None) -> Path:
    """Per image: the image, and the true posterior p(z|x) (filled) with the encoder's
    q(z|x) (red contours at 1, 2, 3 standard deviations) on the same axes."""
    n = len(grids)
    fig = _figure(2.4 * n, 5.2)
    for i, g in enumerate(grids):
        ax = fig.add_subplot(2, n, i + 1)
        ax.imshow(image_grid(images[i:i + 1], 1, pad=0), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"log p(x) = {g['log_px']:.2f}" +
                     (f"\nELBO = {elbos[i]:.2f}" if elbos else ""), fontsize=8)
        ax = fig.add_subplot(2, n, n + i + 1)
        a, b = (t.numpy() for t in g["zs"])
        post = g["log_post"].exp().numpy().T  # rows: z2, columns: z1
        ax.contourf(a, b, post, levels=12, cmap="Blues")
        lq = g["log_q"].numpy().T
        peak = lq.max()
        ax.contour(a, b, lq, levels=sorted(peak - 0.5 * np.array([9.0, 4.0, 1.0])),
                   colors="red", linewidths=0.8, linestyles="solid")
        ax.set_xlabel("z1", fontsize=8)
        ax.set_ylabel("z2", fontsize=8) if i == 0 else None
        ax.tick_params(labelsize=6)
    return _save(fig, path, "true posterior p(z|x) (blue) and encoder q(z|x) (red: 1, 2, 3 sd)")


def training_curves(history: list[dict], path: str | Path, title: str | None = None) -> Path:
    """ELBO, reconstruction term and KL per epoch, training and validation (nats); the
    trained weights' validation ELBO beside their moving average's when the run keeps one,
    the validation log-likelihood estimates of a run that selects on them, and the learning
    rate when it changes over the run."""
    epochs = [m["epoch"] for m in history]
    iwae = next((k for m in history for k in m if k.startswith("val_iwae")
                 and not k.endswith("_online")), None)  # the IWAE bound trained, if any
    bound = [m for m in history if iwae in m]
    lrs = [m.get("lr") for m in history]
    scheduled = None not in lrs and len(set(lrs)) > 1
    fig = _figure(16 if scheduled else 12, 4.6)
    panels = 4 if scheduled else 3
    for i, (key, label) in enumerate([("elbo", "ELBO"), ("recon", "E_q log p(x|z)"),
                                      ("kl", "KL(q(z|x) || p(z))")]):
        ax = fig.add_subplot(1, panels, i + 1)
        ax.plot(epochs, [m[f"train_{key}"] for m in history], label="train")
        online = [m for m in history if "val_elbo_online" in m] if key == "elbo" else []
        ax.plot(epochs, [m[f"val_{key}"] for m in history],
                label="validation, moving average" if online else "validation")
        if online:  # (validated on the log-likelihood estimates' epochs)
            ax.plot([m["epoch"] for m in online], [m["val_elbo_online"] for m in online],
                    "--", lw=1, label="validation, trained weights")
        estimated = [m for m in history if "val_log_px" in m] if key == "elbo" else []
        if estimated:  # select = nll: the estimates that chose the best weights
            ax.plot([m["epoch"] for m in estimated], [m["val_log_px"] for m in estimated],
                    "o-", ms=3, lw=1, label="validation log p(x), importance-sampled")
        shown = bound if key == "elbo" else []
        if shown:
            ax.plot([m["epoch"] for m in shown], [m[iwae] for m in shown], lw=1.2,
                    label=f"validation IWAE bound, k = {iwae.removeprefix('val_iwae')}")
        if 0 < len(bound) < len(history):  # an IWAE tail: the epochs trained on that bound
            ax.axvspan(bound[0]["epoch"] - 0.5, bound[-1]["epoch"] + 0.5, color="0.9",
                       zorder=0, label="trained on the IWAE bound" if i == 0 else None)
        start = history[len(history) // 10]["epoch"]  # the tail: epochs from here on
        tail = [m[f"val_{key}"] for m in history if m["epoch"] >= start] + \
            [m["val_log_px"] for m in estimated if m["epoch"] >= start] + \
            [m[iwae] for m in shown if m["epoch"] >= start]
        lo, hi = min(tail), max(tail)
        pad = 0.5 * (hi - lo) + 1e-3
        ax.set_ylim(lo - pad, hi + pad)  # the tail of the curve, not epoch 1
        ax.set_title(f"{label} (nats)", fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if i == 0:  # one legend below the panels, not over the curves it names
            handles, names = ax.get_legend_handles_labels()
            fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if scheduled:
        ax = fig.add_subplot(1, panels, 4)
        ax.plot(epochs, lrs, color="C3")
        ax.set_yscale("log")
        ax.set_title("learning rate (last step of each epoch)", fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _save(fig, path, title, bottom=0.14)


def time_to_quality(runs: dict[str, list[dict]], path: str | Path,
                    title: str | None = None) -> Path:
    """The validation ELBO of several runs against their cumulative training minutes, on
    one axis: which settings reach a bound first."""
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    tails = []
    for label, history in runs.items():
        rows = [m for m in history if m.get("val_elbo") is not None]
        if not rows:
            continue
        minutes = np.cumsum([m.get("seconds", 0.0) for m in history]) / 60
        at = {m["epoch"]: t for m, t in zip(history, minutes)}
        ax.plot([at[m["epoch"]] for m in rows], [m["val_elbo"] for m in rows], label=label)
        tails += [m["val_elbo"] for m in rows[len(rows) // 10:]]
    if tails:
        lo, hi = min(tails), max(tails)
        ax.set_ylim(lo - 0.1 * (hi - lo) - 0.5, hi + 0.1 * (hi - lo) + 0.5)
    ax.set_xlabel("training minutes (the epochs' own seconds)")
    ax.set_ylabel("validation ELBO (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def interpolation_figure(posterior: Tensor, prior: Tensor, path: str | Path,
                         suptitle: str | None = None) -> Path:
    """Rows of images (P, S, C, H, W): between two test images through their posterior means
    (codes, not samples), and along great circles between two prior samples."""
    return _panels([("Posterior means, linear", _rows(posterior)),
                    ("Prior samples, spherical", _rows(prior))], path, suptitle, 5.0)


def traversal_figure(images: Tensor, row_labels: list[str], path: str | Path,
                     title: str = "Latent traversals") -> Path:
    """One row per latent dimension (R, S, C, H, W): that coordinate swept over the prior's
    5%..95% quantiles, the others held at a test image's posterior mean."""
    return _panels([(title, _rows(images))], path, None, 5.0, row_labels, len(row_labels))


def manifold_figure(images: Tensor, path: str | Path, suptitle: str | None = None) -> Path:
    """The decoded 2-D manifold (n, n, C, H, W) over the prior's quantiles."""
    return _panels([("E[x|z] over the prior's quantiles", _rows(images))], path, suptitle, 6.0)


def _project(z: np.ndarray, how: str, seed: int = 0) -> tuple[np.ndarray, tuple[str, str]]:
    """Codes (N, L) -> 2-D points and axis names: the latent itself, PCA or t-SNE."""
    if how == "latent":
        return z, ("z1", "z2")
    if how == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(2).fit(z)
        r = pca.explained_variance_ratio_
        return pca.transform(z), (f"PC 1 ({r[0]:.0%} of variance)", f"PC 2 ({r[1]:.0%})")
    from sklearn.manifold import TSNE

    return TSNE(2, init="pca", random_state=seed).fit_transform(z), ("t-SNE 1", "t-SNE 2")


def _scatter(ax, xy: np.ndarray, labels: np.ndarray | None, classes, axes: tuple[str, str],
             title: str, legend: bool = True) -> None:
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
    else:
        cmap = _colormap(int(labels.max()) + 1)
        for c in np.unique(labels):
            name = classes[c] if classes and c < len(classes) else str(c)
            ax.scatter(xy[labels == c, 0], xy[labels == c, 1], s=2, alpha=0.6,
                       color=cmap(int(c) % cmap.N), label=name)
        if legend:
            ax.legend(markerscale=5, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5),
                      frameon=False)
    ax.set_xlabel(axes[0], fontsize=9)
    ax.set_ylabel(axes[1], fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def latent_figure(mu: Tensor, labels: Tensor | None, classes: tuple[str, ...] | None,
                  path: str | Path, suptitle: str | None = None) -> Path:
    """Posterior means of a split, coloured by label: the 2-D latent itself, or its first
    two principal components."""
    z = mu.detach().double().cpu().numpy()
    xy, axes = _project(z, "latent" if z.shape[1] == 2 else "pca")
    fig = _figure(6.4, 5.4)
    _scatter(fig.add_subplot(1, 1, 1), xy, None if labels is None else labels.cpu().numpy(),
             classes, axes, "E_q[z|x] of the test set" + ("" if z.shape[1] == 2 else " (PCA)"))
    return _save(fig, path, suptitle)


def features_figure(reps: dict[str, tuple[Tensor, Tensor | None]], labels: Tensor,
                    classes: tuple[str, ...] | None, path: str | Path, seed: int = 0,
                    tsne_points: int = 2000) -> Path:
    """What the codes encode: per representation (name -> (test codes (N, L), first-layer
    filters as images or None)) a row with the codes coloured by label (2-D directly,
    otherwise PCA and t-SNE on a seeded subset) and the encoder's first-layer weights."""
    g = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    views = ["latent"] if next(iter(reps.values()))[0].shape[1] == 2 else ["pca", "tsne"]
    cols = len(views) + 1
    fig = _figure(4.6 * cols, 4.2 * len(reps))
    for r, (name, (z, filters)) in enumerate(reps.items()):
        z = z.double().cpu().numpy()
        for c, how in enumerate(views):
            pick = g.permutation(len(z))[:tsne_points] if how == "tsne" else np.arange(len(z))
            xy, axes = _project(z[pick], how, seed)
            _scatter(fig.add_subplot(len(reps), cols, r * cols + c + 1), xy, y[pick], classes,
                     axes, f"{name}: E_q[z|x]" + {"pca": " (PCA)", "tsne": " (t-SNE)",
                                                   "latent": ""}[how], legend=c == cols - 2)
        ax = fig.add_subplot(len(reps), cols, r * cols + cols)
        ax.set_axis_off()
        if filters is not None:
            n = filters.shape[0]
            ax.imshow(image_grid(filters, max(1, round(math.sqrt(n)))), cmap="gray",
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{name}: first-layer weights", fontsize=11)
    return _save(fig, path, "what the codes encode (test set)")


def efficiency_figure(rows: list[dict], path: str | Path, title: str | None = None) -> Path:
    """Test accuracy against the number of labelled training examples, one line per
    classifier; generative models dashed, probes dotted."""
    fig = _figure(8.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    style = {"generative": "--", "discriminative": "-", "probe": ":"}
    names = list(dict.fromkeys(r["model"] for r in rows))
    cmap = _colormap(len(names))
    for i, name in enumerate(names):
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["n"])
        ax.plot([r["n"] for r in rs], [r["accuracy"] for r in rs], style[rs[0]["kind"]],
                marker="o", ms=3, color=cmap(i % cmap.N),
                label=f"{name} ({rs[0]['kind']})")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return _save(fig, path, title)


def _colormap(n: int):
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"]
