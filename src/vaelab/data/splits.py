"""Data on the device: splits, batches and binarization.

Every data set (:mod:`vaelab.data.datasets`) ends up as one ``uint8`` tensor of shape
``(N, C, H, W)`` per split, resident on the training device (or streamed to it from host
memory); batches are taken by index and converted to float on the device, so there is no
per-item Python work in the training loop.

Binarization (``DataConfig.binarize``):

* ``none``    grey values ``x / max_value`` in [0, 1];
* ``dynamic`` the training set is re-drawn ``x ~ Bernoulli(grey)`` for every batch
  (Salakhutdinov & Murray 2008; Burda et al. 2016; the probability to 2^-16, black and
  white exact), while validation and test images are drawn once with ``binarize_seed``,
  so numbers compare across runs;
* ``static``  every split is drawn once with ``binarize_seed``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import Config, DataConfig
from ..devices import SINGLE, World
from ..errors import ConfigError, DataError
from ..noise import batch_shard, seeded, uniform16
from . import folders  # noqa: F401 (registers the folder data set)
from .datasets import DATASETS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Splits on the device
# ---------------------------------------------------------------------------------------
@dataclass
class Split:
    """One split: ``images`` uint8 ``(N, C, H, W)`` in ``[0, max_value]``.

    If ``dynamic``, each batch is a fresh Bernoulli draw with probabilities
    ``images / max_value``; otherwise the batch is ``images / max_value`` itself (for a
    once-binarized split ``max_value`` is 1).

    Batches are made on ``device`` (default: where the images are). With ``stream``, the
    images stay in host memory and ``batches`` gathers ``chunk`` batches at a time there and
    moves them to the device in one copy (from pinned memory to a GPU).

    ``rows`` (if given) are the rows of ``images`` that make up the split: splits of
    memory-mapped images (a folder data set) share the mapping instead of copying it."""

    images: torch.Tensor
    labels: torch.Tensor | None
    max_value: int
    dynamic: bool = False
    device: torch.device | None = None
    stream: bool = False
    chunk: int = 64  # batches per host-to-device copy when streaming
    rows: torch.Tensor | None = None  # this split's rows of `images` (None: all of them)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device) if self.device is not None \
            else self.images.device

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if t.device == self.device:
            return t
        if self.device.type == "cuda" and t.device.type == "cpu":  # (a resident split's
            t = t.pin_memory()  # rows are on cuda:0 already while its device says "cuda")
        return t.to(self.device, non_blocking=True)

    def _floats(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if not self.dynamic:
            return images.float().div_(self.max_value)  # (B, C, H, W)
        # x ~ Bernoulli(grey / max_value) to 2^-16: 1 where u < t = ceil(65536 grey /
        # max_value), u uniform on {0..65535} (so t - u >= 1), in float ops that vectorize
        # (t is 0 for black and 65536 for white: those stay exact); the numbers sharded
        # like the batch
        u = uniform16(images.shape, 0, images.device, generator)
        t = images.float().mul_(65536 / self.max_value).ceil_().sub_(32768)
        return t.sub_(u).clamp_(0, 1)

    def _rows(self, idx: torch.Tensor | slice) -> torch.Tensor | slice:
        """``idx`` where the images are (an index tensor may come from the device)."""
        return idx.to(self.images.device) if isinstance(idx, torch.Tensor) else idx

    def _take(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """The uint8 images at ``idx`` (positions in this split), where they are kept."""
        rows = idx if self.rows is None else self.rows[idx]
        if isinstance(rows, torch.Tensor):  # (index_select: 5x faster than [rows] on a CPU)
            return self.images.index_select(0, rows)
        return self.images[rows]

    def stored(self) -> torch.Tensor:
        """All of this split's uint8 images, where they are kept (a copy if the split is
        rows of shared images)."""
        return self._take(slice(None))

    def subset(self, idx: torch.Tensor | slice) -> "Split":
        """The images (and labels) at ``idx``, as a split of the same kind."""
        idx = self._rows(idx)
        labels = None if self.labels is None else self.labels[idx]
        if self.rows is not None:
            return dataclasses.replace(self, rows=self.rows[idx], labels=labels)
        return dataclasses.replace(self, images=self.images[idx], labels=labels)

    def batch(self, idx: torch.Tensor | slice, generator: torch.Generator | None = None
              ) -> torch.Tensor:
        """The images at ``idx`` as floats on the device (binarized if ``dynamic``)."""
        return self._floats(self._to_device(self._take(self._rows(idx))), generator)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, labels: bool = False,
                world: World = SINGLE
                ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """Images (B, C, H, W), or ``(images, labels)`` with ``labels=True``. Shuffled by
        ``generator`` (on the device of the images), or in order.

        Over several processes (``world``), every rank walks the same global batches and
        gets its contiguous shard of each; while a shard is in use (until the next is
        asked for), random draws are those of the global batch
        (:func:`vaelab.noise.batch_shard`)."""
        if labels and self.labels is None:
            raise DataError("these data have no labels")
        n, dev = len(self), self.images.device
        if shuffle:  # drawn where the generator lives (the training device)
            order = torch.randperm(n, device=generator.device if generator else dev,
                                   generator=generator).to(dev)
        else:
            order = torch.arange(n, device=dev)
        step = batch_size * (self.chunk if self.stream else 1)
        for first in range(0, n, step):  # `step` images: one copy when streamed
            cuts = []  # (this rank's rows of `order`, its shard (a, b), global batch size)
            for i in range(first, min(first + step, n), batch_size):
                size = min(batch_size, n - i)
                a, b = world.part(size)
                cuts.append((order[i + a:i + b], a, b, size))
            if self.stream:  # gather this rank's rows on the host, move them at once
                rows = torch.cat([c[0] for c in cuts])
                take = self._to_device(self._take(rows)).__getitem__
                labs = self._to_device(self.labels[rows]) if labels else None
                ends = torch.tensor([0] + [b - a for _, a, b, _ in cuts]).cumsum(0).tolist()
                cuts = [(slice(e0, e1), a, b, size)
                        for (_, a, b, size), e0, e1 in zip(cuts, ends, ends[1:])]
            else:
                take, labs = self._take, self.labels
            for mine, a, b, size in cuts:
                with batch_shard(a, b, size) if world.distributed else nullcontext():
                    x = self._floats(take(mine), generator)
                    yield (x, labs[mine]) if labels else x


@dataclass
class Data:
    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...] | None
    binarize: str  # the mode in force ("none", "dynamic" or "static"; never "auto")

    @property
    def binary(self) -> bool:
        """Whether the model sees {0, 1} data."""
        return self.binarize != "none"

    @property
    def levels(self) -> int:
        """The number of values a pixel takes as the model sees it: 2 for binarized data,
        else the data set's grey levels (17 for digits, 256 for 8-bit images)."""
        return 2 if self.binary else self.train.max_value + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def require_labels(self, purpose: str) -> None:
        """Raise a ConfigError naming ``purpose`` unless every split has class labels."""
        if self.classes is None or any(s.labels is None for s in (self.train, self.test)):
            raise ConfigError(f"{purpose} needs labels; the {self.name} data have none (for "
                              "a folder data set: one sub-directory per class)")

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose one of: train, val, test")
        return getattr(self, name)


def data_examples(data: Data, n: int = 100, split: str = "test", seed: int = 0) -> torch.Tensor:
    """``n`` seeded random images of a split, as the model sees them (for figures and
    studies)."""
    s = data.split(split)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(s), generator=g)[:n].to(s.images.device)
    with seeded(seed, s.images.device):
        return s.batch(idx)


def class_examples(data: Data, per_class: int, split: str = "test", seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` seeded random images of each class, class by class: (images, labels)."""
    s = data.split(split)
    g = torch.Generator().manual_seed(seed)
    labels, idx = s.labels.cpu(), []
    for c in range(len(data.classes)):
        members = torch.nonzero(labels == c)[:, 0]
        pick = members[torch.randperm(len(members), generator=g)][:per_class]
        idx.append(pick.repeat(math.ceil(per_class / max(1, len(pick))))[:per_class])
    idx = torch.cat(idx).to(s.images.device)
    with seeded(seed, s.images.device):
        return s.batch(idx), s.labels[idx]


def binarize_once(images: np.ndarray, max_value: int, seed: int) -> np.ndarray:
    """One seeded Bernoulli draw, on the CPU so it is the same on every device."""
    g = torch.Generator().manual_seed(seed)
    p = torch.from_numpy(images).float() / max_value
    return torch.bernoulli(p, generator=g).to(torch.uint8).numpy()


def should_stream(mode: str, device: torch.device, nbytes: int) -> bool:
    """Whether data of ``nbytes`` stay in host memory (see ``DataConfig.stream``)."""
    if mode != "auto":
        return mode == "yes"
    return device.type == "cuda" and nbytes > torch.cuda.mem_get_info(device)[0] // 4


def load_data(cfg: DataConfig, device: str | torch.device = "cpu") -> Data:
    """Load, split (seeded) and binarize a data set, and move it to ``device``."""
    raw = DATASETS.get(cfg.dataset)(cfg)
    n = len(raw.train_images)
    val_size = cfg.val_size if cfg.val_size is not None else (
        raw.default_val_size if raw.default_val_size is not None else n // 10)
    if not 0 <= val_size < n:
        raise DataError(f"val_size={val_size} must be smaller than the {n} training images")
    mode = raw.default_binarize if cfg.binarize == "auto" else cfg.binarize
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    parts = {"train": perm[val_size:], "val": perm[:val_size]}

    device = torch.device(device)
    stream = should_stream(cfg.stream, device, raw.train_images.nbytes + raw.test_images.nbytes)
    home = torch.device("cpu") if stream else device
    # memory-mapped images (a folder) kept in host memory are shared by the splits, not copied
    shared = isinstance(raw.train_images, np.memmap) and home.type == "cpu"

    def make(images: np.ndarray, labels: np.ndarray | None, seed_offset: int, train: bool,
             rows: np.ndarray | None = None) -> Split:
        mv, once = raw.max_value, mode == "static" or (mode == "dynamic" and not train)
        if rows is not None and (once or not shared):
            images, rows = images[rows], None
        if once:
            images, mv = binarize_once(images, mv, cfg.binarize_seed + seed_offset), 1
        lab = None if labels is None else torch.from_numpy(labels).to(home)
        return Split(torch.from_numpy(np.ascontiguousarray(images)).to(home), lab, mv,
                     dynamic=train and mode == "dynamic", device=device, stream=stream,
                     rows=None if rows is None else torch.from_numpy(rows).to(home))

    y = raw.train_labels
    splits = {k: make(raw.train_images, None if y is None else y[i], off, k == "train", i)
              for off, (k, i) in enumerate(parts.items())}
    splits["test"] = make(raw.test_images, raw.test_labels, 2, False)
    log.info("%s: %d train / %d val / %d test images of shape %s, binarize=%s%s", raw.name,
             len(splits["train"]), len(splits["val"]), len(splits["test"]),
             splits["train"].image_shape, mode, ", streamed from host memory" if stream else "")
    return Data(raw.name, splits["train"], splits["val"], splits["test"], raw.classes, mode)


def resolve(cfg: Config, data: Data) -> Config:
    """Replace the "auto" settings by what they mean for this data set, so the saved
    config.toml says exactly what was run."""
    likelihood = cfg.model.likelihood
    if likelihood == "auto":
        likelihood = "bernoulli" if data.binary else "dgaussian"
    classes = None
    if cfg.train.kl_balance and cfg.model.layers < 2:
        raise ConfigError("kl_balance weighs the layers of a hierarchical model: it needs "
                          "--layers 2 or more")
    if cfg.train.iwae_gradient == "dreg" and cfg.model.layers > 1:
        raise ConfigError("iwae_gradient = dreg needs one stochastic layer (a hierarchy's q "
                          "has no parameters to hold fixed); use --iwae-gradient reparam")
    if cfg.model.conditional:
        data.require_labels("a conditional model")
        classes = len(data.classes)
    extra = {"data_dir": str(Path(cfg.data.data_dir).resolve())} if cfg.data.data_dir else {}
    return cfg.override(binarize=data.binarize, likelihood=likelihood, levels=data.levels,
                        classes=classes, kl_warmup=cfg.train.warmup,  # its default resolved
                        **extra)  # a relative data_dir: stored resolved
