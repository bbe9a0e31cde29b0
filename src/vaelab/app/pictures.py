"""Pictures for pages, without matplotlib: image grids and log-densities as PNG data URLs,
and line charts as inline SVG (crisp, printable, no files)."""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import torch

from ..data.images import image_grid


def png(images: torch.Tensor, nrow: int | None = None, scale: int = 1
        ) -> str:
    """(N, C, H, W) in [0, 1] -> a PNG data URL of their grid."""
    from PIL import Image as Picture

    grid = image_grid(images, nrow or len(images), pad=1 if len(images) > 1 else 0)
    pic = Picture.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8))
    if scale > 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Picture.Resampling.NEAREST)
    buf = io.BytesIO()
    pic.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def heatmap(log_density: torch.Tensor) -> str:
    """A log-density on a grid (n, n), rows along z1 and columns along z2 -> a PNG data URL
    (z2 upwards), brighter where more probable."""
    from PIL import Image as Picture

    d = log_density.double()
    d = (d - d.max()).exp().T.flip(0)  # (z2 rows, top = high), density / its peak
    a = (d.clamp(0, 1) ** 0.5 * 255).round().to(torch.uint8).numpy()
    rgb = np.stack([a, (a * 0.6).astype(np.uint8), 255 - a], -1)
    buf = io.BytesIO()
    Picture.fromarray(rgb).resize((4 * a.shape[1], 4 * a.shape[0]),
                                  Picture.Resampling.BILINEAR).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def svg_chart(series: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str,
              marks: dict[str, float] | None = None, width: int = 520, height: int = 260,
              log_x: bool = False) -> str:
    """Lines (name -> (x, y)) on shared axes as an inline SVG; ``marks``: vertical lines at
    x (label -> x)."""
    colours = ["#1f5fa8", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490"]
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xs = [fx(x) for xv, _ in series.values() for x in xv] + \
        [fx(v) for v in (marks or {}).values()]
    ys = [y for _, yv in series.values() for y in yv if math.isfinite(y)]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 64, 12, 12, 40
    w, h = width - left - right, height - top - bottom
    height += 16 * len(series) + 8  # the legend, under the axes
    xticks = sorted({x for xv, _ in series.values() for x in xv}) if log_x else \
        [x0 + (x1 - x0) * i / 4 for i in range(5)]

    def px(x: float) -> float:
        return left + (fx(x) - x0) / ((x1 - x0) or 1) * w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / ((y1 - y0) or 1)) * h

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for i in range(5):  # ticks
        yv = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" text-anchor="end" '
                   f'font-size="11">{yv:.4g}</text>')
    for xv in xticks:
        out.append(f'<text x="{px(xv):.1f}" y="{top + h + 16}" text-anchor="middle" '
                   f'font-size="11">{xv:.4g}</text>')
    out.append(f'<text x="{left + w / 2}" y="{top + h + 34}" text-anchor="middle" '
               f'font-size="12">{html.escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{top + h / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 12 {top + h / 2})">{html.escape(ylabel)}</text>')
    for i, (name, (xv, yv)) in enumerate(series.items()):
        c = colours[i % len(colours)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xv, yv) if math.isfinite(y))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{left}" y="{top + h + 52 + 16 * i}" font-size="12" '
                   f'fill="{c}">&#9644; {html.escape(name)}</text>')
    for label, xv in (marks or {}).items():
        out.append(f'<line x1="{px(xv):.1f}" x2="{px(xv):.1f}" y1="{top}" y2="{top + h}" '
                   'stroke="#444" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{px(xv) + 4:.1f}" y="{top + h - 6}" font-size="11">'
                   f'{html.escape(label)}</text>')
    return "\n".join(out + ["</svg>"])
