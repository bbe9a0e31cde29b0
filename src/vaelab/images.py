"""Arrays of images, without drawing: grids of pixels (for figures, TensorBoard and pages)."""
from __future__ import annotations

import math

import numpy as np
import torch

Tensor = torch.Tensor


def image_grid(images: Tensor, nrow: int = 10, pad: int = 1, pad_value: float = 1.0
               ) -> np.ndarray:
    """(N, C, H, W) values in [0, 1] -> one image (rows*(H+pad)+pad, nrow*(W+pad)+pad[, 3])."""
    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = np.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)
