"""Lossless compression with a trained VAE: "maximally compress the data" as real files.

A VAE's negative ELBO is a code length: with bits-back coding (:mod:`vaelab.coding.bitsback`),
storing an image costs about -ELBO(x) bits, not counting a few hundred bits once per file
(the first images have no bits on the stack to give back).

    >>> data = vaelab.compress(model, images)        # uint8 (N, C, H, W) levels -> bytes
    >>> images = vaelab.decompress(model, data)     # the same array

The file: ``MAGIC``, a 4-byte length and a zlib-compressed JSON header (format version,
the model's fingerprint, image shape, count and levels, the coding settings, the batch
sizes, the SHA-256 of the images, and what it takes to restore the original file), then
the ANS words (uint32, little-endian), then the SHA-256 of everything before it. A damaged
or truncated file, another model, or a decoder that computes other probabilities (another
machine or build of torch can) each end in a :class:`CodingError` that says which; no
images come out unless their checksum matches.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import CodingError, ConfigError
from ..models.vae import VAE
from .bitsback import Grid, Tally, decode_batch, encode_batch, entropy_coder, pixel_code
from .container import FORMAT_VERSION, check_header, pack, read_container, versions



@dataclass(frozen=True)
class CodingSettings:
    """``latent_bits``: the latent grid's bins are 2^-latent_bits wide; ``latent_range``:
    it spans [-range, range] in every dimension; ``batch_size``: images coded at once."""

    latent_bits: int = 8
    latent_range: float = 16.0
    batch_size: int = 500

    def __post_init__(self):
        if not 2 <= self.latent_bits <= 16:
            raise ConfigError(f"latent_bits must be in 2..16, got {self.latent_bits}")
        if not (self.latent_range > 0 and math.isfinite(self.latent_range)) or \
                self.latent_range * 2 ** self.latent_bits > 2 ** 20:
            raise ConfigError(f"latent_range must be > 0 with range * 2^latent_bits <= 2^20, "
                              f"got {self.latent_range}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def grid(self) -> Grid:
        return Grid(2.0 ** -self.latent_bits, self.latent_range)


def fingerprint(model: VAE) -> str:
    """SHA-256 of what sets the model's probabilities: its weights (names, dtypes, shapes,
    bytes) and its structure (the modules, the likelihood, levels, latent size)."""
    h = hashlib.sha256()
    like = model.likelihood
    h.update(repr((type(model).__name__, model.kind, model.layers, model.latent_dim,
                   model.image_shape, model.min_scale, model.classes, like.name,
                   like.levels, getattr(like, "mixtures", 0),
                   str(model))).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def levels_of(model: VAE) -> int:
    """The number of pixel levels the model's likelihood is a probability over (a density's
    run is refused, with the reason)."""
    pixel_code(model.likelihood.name)
    return model.likelihood.levels


def _coding_copy(model: VAE, device: str) -> VAE:
    """A float64 copy of the model on ``device`` ("cpu" or "cuda"), for the probabilities
    both sides compute."""
    if model.classes:
        raise ConfigError("a conditional model needs each image's label to code it; compress "
                          "with an unconditional run")
    pixel_code(model.likelihood.name)  # refuses a density before any work
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"coding runs on 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CodingError("this needs a CUDA device (a file compressed on one decodes only on "
                          "one: the probabilities must be computed the same way)")
    return copy.deepcopy(model).to(device, torch.float64).eval()


def _checked_images(images, shape: tuple[int, ...], levels: int) -> np.ndarray:
    x = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise ConfigError(f"images of shape {tuple(x.shape)}; this model codes (N, *{shape})")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer):
            raise ConfigError(f"images must be integer levels (uint8), got {x.dtype}")
        x = x.astype(np.int64)
    if x.size and (x.min() < 0 or x.max() >= levels):
        raise ConfigError(f"pixel values must be in 0..{levels - 1} for this model, got "
                          f"{x.min()}..{x.max()}")
    return np.array(x, dtype=np.uint8, order="C")  # a copy of our own, writable


def _run_length(sizes: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sizes:
        if out and out[-1][0] == s:
            out[-1][1] += 1
        else:
            out.append([s, 1])
    return out


def compress(model: VAE, images, *, settings: CodingSettings = CodingSettings(),
             meta: dict | None = None, progress: bool = False, stats: dict | None = None,
             device: str = "cpu") -> bytes:
    """Code uint8 images (N, C, H, W) of levels 0..K-1 (K: 2 for a Bernoulli model, the
    data's levels otherwise) losslessly with ``model``; returns the file's bytes. ``meta``
    (JSON-able) travels in the header (:func:`read_header`). ``stats``, if given, receives
    the ideal code length (the sum of -log2 p(x|z)p(z)/q(z|x) over the coded z, the
    discretized -ELBO) and the sizes. ``device``: where the nets run ("cuda" is faster;
    the file then decodes on a CUDA device only)."""
    from tqdm.auto import tqdm

    constriction = entropy_coder()
    levels = levels_of(model)
    x = _checked_images(images, model.image_shape, levels)
    m = _coding_copy(model, device)
    grid = settings.grid
    first = initial_words(m, settings)
    coder = constriction.stream.stack.AnsCoder(first)
    tally, sizes, start = Tally(ideal=stats is not None), [], 0
    with tqdm(total=len(x), desc="compress", unit="img", disable=None if progress else True,
              leave=False) as bar:
        while start < len(x):
            size = _next_batch(coder, tally, settings.batch_size, len(x) - start)
            while True:  # the bits on the stack must pay for the batch's draws from Q
                saved = coder.clone() if coder.num_bits() < 4 * _need(tally) * size else None
                encode_batch(coder, m, x[start:start + size], levels, grid, tally)
                if saved is None or not tally.exhausted:
                    break
                coder, size = saved, max(1, size // 2)  # (only while the stack is short)
                tally.drop_last()
            sizes.append(size)
            start += size
            bar.update(size)
    words = coder.get_compressed().astype("<u4")
    header = {"format": FORMAT_VERSION, "model": fingerprint(model),
              "image_shape": list(model.image_shape), "count": int(len(x)), "levels": levels,
              "settings": asdict(settings), "device": device, "batches": _run_length(sizes),
              "sha256": hashlib.sha256(x.tobytes()).hexdigest(), "words": int(len(words)),
              "made_with": versions(), "meta": meta or {"kind": "array"}}
    try:  # every file vaelab writes, vaelab reads: the reader's limits hold here too
        check_header(header, 4 * len(words))
    except CodingError as e:
        raise CodingError(f"{e} (as written here); compress fewer images per file") from None
    data = pack(header, words.tobytes())
    if stats is not None:
        stats.update(ideal_bits=float(sum(tally.net_bits)), bits=8 * len(data),
                     body_bits=32 * len(words), header_bytes=len(data) - 4 * len(words),
                     count=int(len(x)), batches=len(sizes))
    return data


def initial_words(model: VAE, settings: CodingSettings) -> np.ndarray:
    """The words the stack starts with, for the first image's draws from Q: enough for
    every latent dimension's bin (at most latent_bits + 4 bits for a posterior no wider
    than the prior) and a mixture's component; seeded, so that decompression checks that
    it ends with exactly these words."""
    bits = model.latent_dim * (settings.latent_bits + 4) + 16 * model.layers + 64
    words = np.random.default_rng(FORMAT_VERSION).integers(0, 2 ** 32, math.ceil(bits / 32),
                                                           dtype=np.uint32)
    words[-1] |= np.uint32(1 << 31)  # the top word of an ANS stack is not zero
    return words


def _need(tally: Tally) -> float:
    """Bits one image takes from the stack (its draws from Q), with a margin."""
    return 1.25 * max(tally.posterior_bits, default=0.0) + 64


def _next_batch(coder, tally: Tally, batch_size: int, left: int) -> int:
    """The next batch's size: one image first; then as many as the bits on the stack can
    give back (their draws from Q, as measured so far, with a margin), up to
    ``batch_size``, so that no draw finds the stack empty."""
    if not tally.posterior_bits:
        return 1
    return max(1, min(batch_size, left, int(coder.num_bits() // _need(tally))))


def check_model(model: VAE, header: dict) -> None:
    """That ``model`` is the one that compressed the file of ``header``."""
    if header["model"] != fingerprint(model):
        raise CodingError("the file was compressed with another model (its fingerprint "
                          f"{header['model'][:16]}... is not this run's "
                          f"{fingerprint(model)[:16]}...); decompress with the run that made it")
    shape, levels = tuple(header["image_shape"]), header["levels"]
    if shape != tuple(model.image_shape) or levels != levels_of(model):
        raise CodingError(f"the file holds {levels}-level images of shape {shape}, which this "
                          "model does not code")


def decompress(model: VAE, data: bytes, *, progress: bool = False) -> np.ndarray:
    """The images (N, C, H, W) uint8 that :func:`compress` coded into ``data``."""
    return unpack(model, data, progress=progress)[0]


def unpack(model: VAE, data: bytes, *, progress: bool = False) -> tuple[np.ndarray, dict]:
    """The images and the header of a compressed file; every check passes or a
    CodingError says which failed."""
    from tqdm.auto import tqdm

    constriction = entropy_coder()
    header, body = read_container(data)
    check_model(model, header)
    shape, levels = tuple(header["image_shape"]), header["levels"]
    settings = CodingSettings(**header["settings"])
    m = _coding_copy(model, header.get("device", "cpu"))
    words = np.frombuffer(body, "<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    sizes = [size for size, repeat in header["batches"] for _ in range(repeat)]  # checked
    out = np.empty((header["count"], *shape), np.uint8)
    end = header["count"]
    try:
        with tqdm(total=end, desc="decompress", unit="img", leave=False,
                  disable=None if progress else True) as bar:
            for size in reversed(sizes):  # a stack: the last batch coded comes out first
                out[end - size:end] = decode_batch(coder, m, size, shape, levels, settings.grid)
                end -= size
                bar.update(size)
    except (ValueError, RuntimeError, OverflowError, KeyError, IndexError) as e:
        raise CodingError(f"decoding failed ({e}); the file does not decode with this model on "
                          "this machine") from None
    rest = coder.get_compressed()
    first = initial_words(m, settings)
    if len(rest) != len(first) or (rest != first).any() or \
            hashlib.sha256(out.tobytes()).hexdigest() != header["sha256"]:
        raise CodingError("the decoded images do not match the checksum of the originals: "
                          "this machine computes other probabilities than the one that "
                          f"compressed the file (it was made with {header['made_with']}); "
                          "decompress it where it was made, or with the same builds")
    return out, header
