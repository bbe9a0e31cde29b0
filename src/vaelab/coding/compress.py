"""Lossless compression with a trained VAE: "maximally compress the data" as real files.

With bits-back coding and K importance samples (:mod:`vaelab.coding.bitsback`), storing an
image costs about -log (1/K) sum_k w_k bits, the K-sample bound on -log p(x) (K = 1: the
-ELBO), after the first few images, which get a direct code while the stack fills.

    >>> data = vaelab.compress(model, images)        # uint8 (N, C, H, W) levels -> bytes
    >>> images = vaelab.decompress(model, data)     # the same array

The file (:mod:`vaelab.coding.container`): a header of ~36 bytes (the model's and the
images' fingerprints, the counts and the coding settings), the ANS words, a checksum. A
damaged or truncated file, another model, or a decoder that computes other probabilities
(another machine or build of torch can) each end in a :class:`CodingError` that says
which; no images come out unless their checksum matches. A product's sums are split by
the number of CPU threads, so the file records the count it was made on and the decoder
computes on that count too, whatever its own setting. Where the model codes the images
worse than a plain log2(levels) bits per pixel would (images it was not made for), the
file holds that uniform code instead: never larger than the pixels themselves.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..devices import computing_threads, fast_bf16
from ..errors import CodingError, ConfigError
from ..models.vae import VAE
from .bitsback import Tally, decode_batch, decode_direct, encode_batch, encode_direct
from .container import (DEFAULT_RANGE, DIGEST, MAX_SAMPLES, PNG_IMAGES, batch_sizes,
                        check_header, grown, pack, pack_v1, read_container, schedule,
                        unrecorded_threads, versions)
from .latents import Grid, entropy_coder
from .particles import kind
from .pixels import (decode_uniform, encode_uniform, from_png_stream, pixel_code,
                     png_stream)

SAMPLES = 32
PARTICLE_FLOATS = 1 << 24  # samples x batch x latent size of one batch, at most


@dataclass(frozen=True)
class CodingSettings:
    """``samples``: importance samples K per image (the rate tends to -log p(x) as K
    grows, the time grows with K); ``latent_bits``: the latent grid's bins are
    2^-latent_bits wide; ``latent_range``: it spans [-range, range] in every dimension;
    ``batch_size``: images coded at once, at most."""

    samples: int = SAMPLES
    coupled: bool = True
    weights: str = "auto"
    latent_bits: int = 8
    latent_range: float = DEFAULT_RANGE
    batch_size: int = 500

    def __post_init__(self):
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise ConfigError(f"samples must be in 1..{MAX_SAMPLES}, got {self.samples}")
        if self.weights not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"weights must be auto, fp32 or bf16, got {self.weights!r}")
        if not 2 <= self.latent_bits <= 16:
            raise ConfigError(f"latent_bits must be in 2..16, got {self.latent_bits}")
        if not (self.latent_range > 0 and math.isfinite(self.latent_range)) or \
                self.latent_range * 2 ** self.latent_bits > 2 ** 20:
            raise ConfigError(f"latent_range must be > 0 with range * 2^latent_bits <= 2^20, "
                              f"got {self.latent_range}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def bf16(self, device: str) -> bool:
        """Whether the particles' weights are computed in bfloat16 on ``device``."""
        return self.samples > 1 and (self.weights == "bf16" or
                                     (self.weights == "auto" and fast_bf16(device)))

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


def _weigher(model: VAE, device: str, samples: int, bf16: bool) -> dict:
    """What weighs the particles (``encode_batch``'s and ``decode_batch``'s ``weigh`` and
    ``bf16``): with ``samples`` > 1 a float32 copy of the model, its decoder in bfloat16
    if ``bf16`` (the weights choose j; they set no code length)."""
    weigh = copy.deepcopy(model).to(device, torch.float32).eval() if samples > 1 else None
    return {"weigh": weigh, "bf16": bf16}


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


def compress(model: VAE, images, *, settings: CodingSettings = CodingSettings(),
             meta: dict | None = None, progress: bool = False, stats: dict | None = None,
             device: str = "cpu", verbose_header: bool = False, version: int = 3) -> bytes:
    """Code uint8 images (N, C, H, W) of levels 0..K-1 (K: 2 for a Bernoulli model, the
    data's levels otherwise) losslessly with ``model``; returns the file's bytes. ``meta``
    (JSON-able) travels in the header (:func:`read_header`); ``verbose_header`` adds the
    versions of what made the file. ``stats``, if given, receives the ideal code length
    (the sum over images of -log2 (1/K) sum_k w_k of the coded particles, the bits pushed
    for a direct code) and the sizes. ``device``: where the nets run ("cuda" is faster;
    the file then decodes on a CUDA device only). ``version=2`` writes the format before
    the thread count was recorded, ``version=1`` the first (a JSON header; one sample,
    starting words), for vaelabs that read only those."""
    from tqdm.auto import tqdm

    constriction = entropy_coder()
    levels = levels_of(model)
    x = _checked_images(images, model.image_shape, levels)
    if version not in (1, 2, 3) or (version == 1 and settings.samples != 1):
        raise ConfigError(f"file format {version} with {settings.samples} samples: format 1 "
                          "codes one sample per image, formats 2 and 3 any number")
    m = _coding_copy(model, device)
    weights = _weigher(model, device, settings.samples, settings.bf16(device))
    coder = constriction.stream.stack.AnsCoder(initial_words(m, settings)) if version == 1 \
        else constriction.stream.stack.AnsCoder()
    tally = Tally(ideal=stats is not None)
    with tqdm(total=len(x), desc="compress", unit="img", disable=None if progress else True,
              leave=False) as bar:
        coder, plan = _code(coder, m, weights, x, levels, settings, tally, bar.update,
                            version)
    body, code, sizes = coder.get_compressed().astype("<u4").tobytes(), "bits-back", \
        batch_sizes(plan, len(x))
    if version >= 2 and len(x):  # where the model loses to plain pixels or to PNG
        body, code = min([(body, code)] + _fallbacks(x, levels, 8 * len(body)),
                         key=lambda b: len(b[0]))
        if code != "bits-back":
            sizes, plan = [], {"direct": 0, "rate": 0, "cap": 1, "exceptions": [],
                               "direct_bits": 0}
    header = _header(model, x, levels, settings, device, plan, meta, len(body) // 4, version,
                     code, verbose_header)
    try:  # every file vaelab writes, vaelab reads: the reader's limits hold here too
        check_header(header, len(body))
    except CodingError as e:
        raise CodingError(f"{e} (as written here); compress fewer images per file") from None
    data = (pack if version >= 2 else pack_v1)(header, body)
    if stats is not None:
        stats.update(ideal_bits=float(sum(tally.net_bits)), bits=8 * len(data),
                     body_bits=8 * len(body), header_bytes=len(data) - len(body),
                     count=int(len(x)), batches=len(sizes), code=code,
                     direct=sum(size for size, direct in sizes if direct))
    return data


def _fallbacks(x: np.ndarray, levels: int, bits: int) -> list[tuple[bytes, str]]:
    """The codes a file falls back to, beside the model's of ``bits``: each pixel uniformly
    (log2(levels) bits; coded only where that could be smaller), and, for a few images,
    the image data of their optimized PNG (without its chunks)."""
    out = []
    if x.size * math.log2(levels) < bits:
        coder = entropy_coder().stream.stack.AnsCoder()
        encode_uniform(coder, x, levels)
        out.append((coder.get_compressed().astype("<u4").tobytes(), "uniform"))
    if len(x) <= PNG_IMAGES:
        stream = png_stream(x, levels)
        if np.array_equal(from_png_stream(stream, x.shape, levels), x):  # (as read back)
            out.append((stream, "png"))
    return out


def _header(model, x, levels, settings, device, plan, meta, words, version, code,
            verbose) -> dict:
    s = {"latent_bits": settings.latent_bits, "latent_range": settings.latent_range}
    header = {"format": version, "model": fingerprint(model), "image_shape":
              list(model.image_shape), "count": int(len(x)), "levels": levels,
              "device": device, "sha256": hashlib.sha256(x.tobytes()).hexdigest(),
              "words": int(words), "meta": meta or {"kind": "array"}}
    if version == 1:
        return {**header, "settings": {**s, "batch_size": settings.batch_size},
                "batches": [[1, len(x)]] if len(x) else [], "made_with": versions()}
    header.update(model=header["model"][:2 * DIGEST], sha256=header["sha256"][:2 * DIGEST],
                  code=code, schedule={k: plan[k] for k in ("direct", "rate", "cap",
                                                            "exceptions")},
                  settings={**s, "samples": settings.samples,
                            "direct_bits": plan["direct_bits"],
                            "coupled": int(settings.coupled and settings.samples > 1),
                            "bf16": int(settings.bf16(device)),
                            **({"threads": torch.get_num_threads() * (device == "cpu")}
                               if version >= 3 else {})})  # (0: on CUDA)
    return {**header, "made_with": versions()} if verbose else header


def _code(coder, m, weights: dict, x, levels, settings, tally, update, version: int):
    """Code every image onto ``coder``: (format 2) the first ones by a direct code, until
    the stack holds the draws of a batch, then the batches of :func:`container.schedule` by bits
    back (directly where a batch's draws would still run the stack short: an exception);
    (format 1) one image per batch by bits back from :func:`initial_words`. Returns the
    coder and the schedule's numbers."""
    cap = max(1, min(settings.batch_size,
                     PARTICLE_FLOATS // (settings.samples * m.latent_dim)))
    direct = Grid(2.0 ** -_direct_bits(coder, m, x[:16], levels, settings),
                  settings.latent_range) if version >= 2 and len(x) else None
    n, rate, pushed = 0, 255, 0.0  # (rate 255: batches of one image)
    while direct is not None and n < len(x):  # the direct prefix
        need = _need(tally, m, settings)
        if n and coder.num_bits() >= need * grown(n, rate):
            break
        before = coder.num_bits()
        encode_direct(coder, m, x[n:n + 1], levels, direct, tally)
        pushed, n = pushed + coder.num_bits() - before, n + 1
        rate = min(63, max(0, math.ceil(-4 * math.log2(max(1e-9, 0.75 * pushed / n / need)))))
        update(1)
    prefix, exceptions = n, []
    for b, size in enumerate(schedule(len(x), prefix, rate, cap)[prefix:]):
        coder, ok = _bits_back(coder, m, weights, x[n:n + size], levels, settings, tally)
        if not ok and direct is None:
            raise CodingError("the stack ran short of bits to give back; write format 2")
        if not ok:
            encode_direct(coder, m, x[n:n + size], levels, direct, tally)
            exceptions.append(b)
        n += size
        update(size)
    return coder, {"direct": prefix, "rate": rate, "cap": cap, "exceptions": exceptions,
                   "direct_bits": round(-math.log2(direct.delta)) if direct else 0}


def _bits_back(coder, m, weights: dict, x, levels, settings, tally):
    """Code a batch by bits back; returns the coder and whether it could (whether its
    draws left the stack enough bits; if not, the coder as it was before)."""
    saved = coder.clone() if coder.num_bits() < 4 * _need(tally, m, settings) * len(x) \
        else None
    encode_batch(coder, m, x, levels, settings.grid, tally, settings.samples,
                 settings.coupled, **weights)
    if saved is None or not tally.exhausted:
        return coder, True
    tally.drop_last()
    return saved, False


def _direct_bits(coder, m, x, levels, settings) -> int:
    """The grid (bits) on which the direct code costs these images least."""
    costs = []
    for bits in range(settings.latent_bits + 1):
        trial = coder.clone()
        encode_direct(trial, m, x, levels, Grid(2.0 ** -bits, settings.latent_range), Tally())
        costs.append(trial.num_valid_bits())
    return int(np.argmin(costs))


def initial_words(model: VAE, settings: CodingSettings) -> np.ndarray:
    """The words a format-1 stack starts with, for the first image's draws from Q: enough
    for every latent dimension's bin (at most latent_bits + 4 bits for a posterior no
    wider than the prior) and a mixture's component; seeded, so that decompression checks
    that it ends with exactly these words."""
    bits = model.latent_dim * (settings.latent_bits + 4) + 16 * model.layers + 64
    words = np.random.default_rng(1).integers(0, 2 ** 32, math.ceil(bits / 32),
                                              dtype=np.uint32)
    words[-1] |= np.uint32(1 << 31)  # the top word of an ANS stack is not zero
    return words


def _need(tally: Tally, model: VAE, settings: CodingSettings) -> float:
    """Bits one image takes from the stack (its draws), with a margin: as measured so far,
    or at most latent_bits + 4 bits a dimension and sample (a posterior no wider than
    the prior) before any was."""
    if tally.posterior_bits:
        return 1.25 * max(tally.posterior_bits) + 64
    K = settings.samples
    per = kind(K, settings.coupled).bits(K, model.latent_dim, settings.latent_bits)
    return per + 16 * model.layers + math.log2(K) + 64


def check_model(model: VAE, header: dict) -> None:
    """That ``model`` is the one that compressed the file of ``header``."""
    if header["model"] != fingerprint(model)[:len(header["model"])]:
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
    shape, levels, s = tuple(header["image_shape"]), header["levels"], header["settings"]
    samples, grid = s.get("samples", 1), Grid(2.0 ** -s["latent_bits"], s["latent_range"])
    batches = [] if header.get("code") in ("uniform", "png") else \
        batch_sizes(header["schedule"], header["count"]) if header["format"] >= 2 else \
        [(b[0], False) for b in header["batches"] for _ in range(b[1])]  # (checked)
    if header["format"] >= 2 and header["schedule"]["exceptions"] and \
            header["schedule"]["exceptions"][-1] >= len(batches) - header["schedule"]["direct"]:
        raise CodingError("damaged header: an exception past the last batch; nothing was "
                          "decoded")
    if any(size * samples * model.latent_dim > PARTICLE_FLOATS for size, _ in batches):
        raise CodingError("damaged header: a batch larger than any writer makes; nothing "
                          "was decoded")
    m = _coding_copy(model, header["device"])
    weights = _weigher(model, header["device"], samples, bool(s.get("bf16", 0)))
    png = header.get("code") == "png"
    coder = constriction.stream.stack.AnsCoder(
        np.frombuffer(b"" if png else body, "<u4").astype(np.uint32))
    out = np.empty((header["count"], *shape), np.uint8)
    end = header["count"]
    try:
        if header.get("code") == "uniform":
            out[:] = decode_uniform(coder, out.shape, levels)
        if png:
            out[:] = from_png_stream(body, out.shape, levels)
        direct = Grid(2.0 ** -s.get("direct_bits", 0), s["latent_range"])
        with tqdm(total=end, desc="decompress", unit="img", leave=False,
                  disable=None if progress else True) as bar, \
                computing_threads(s.get("threads")):
            for size, is_direct in reversed(batches):  # a stack: the last batch comes first
                out[end - size:end] = decode_direct(coder, m, size, shape, levels, direct) \
                    if is_direct else decode_batch(coder, m, size, shape, levels, grid, samples,
                                                   bool(s.get("coupled", 0)), **weights)
                end -= size
                bar.update(size)
    except (ValueError, RuntimeError, OverflowError, KeyError, IndexError) as e:
        raise CodingError(f"decoding failed ({e}); the file does not decode with this model on "
                          f"this machine{unrecorded_threads(header)}") from None
    _check_decoded(out, coder, header, m)
    return out, header


def _check_decoded(out: np.ndarray, coder, header: dict, model: VAE) -> None:
    rest = coder.get_compressed()
    if header["format"] == 1:
        first = initial_words(model, CodingSettings(**header["settings"]))
        ends = len(rest) == len(first) and not (rest != first).any()
    else:
        ends = len(rest) == 0
    digest = hashlib.sha256(out.tobytes()).hexdigest()[:len(header["sha256"])]
    if not ends or digest != header["sha256"]:
        made = header.get("made_with")
        raise CodingError("the decoded images do not match the checksum of the originals: "
                          "this machine computes other probabilities than the one that "
                          "compressed the file" + (f" (it was made with {made})" if made else "")
                          + f"{unrecorded_threads(header)}; decompress it where it was made, or "
                          "with the same builds")
