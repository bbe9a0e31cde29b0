"""The optional TensorBoard log of a training run (``vaelab train --tensorboard``)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.images import image_grid
from ..errors import RunError
from ..models.vae import VAE
from ..noise import seeded


class TensorBoard:
    """Optional TensorBoard log in RUN/tensorboard: per-epoch scalars and a grid of mean
    samples from fixed prior draws."""

    def __init__(self, run_dir: Path, model: VAE):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RunError("--tensorboard needs the tensorboard package: "
                           "pip install 'vaelab[tensorboard]'") from e
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        with seeded(0, model.device):
            self.z = model.prior().sample((64,)).to(model.device)  # the same codes every epoch

    @torch.no_grad()
    def log(self, m: dict, model: VAE) -> None:
        for key, value in m.items():
            group, _, name = key.partition("_")
            if key != "epoch" and value is not None:  # train_elbo -> elbo/train
                tag = f"{name}/{group}" if group in ("train", "val") else key
                self.writer.add_scalar(tag, value, m["epoch"])
        g = image_grid(model.decode(self.z).mean, 8)
        self.writer.add_image("mean samples", g, m["epoch"],
                              dataformats="HW" if g.ndim == 2 else "HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
