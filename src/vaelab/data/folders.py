"""The ``folder`` data set: a directory of PNG/JPEG images, decoded once into a
memory-mapped ``.npy`` in the cache directory (see :func:`folder`). Registered in
``DATASETS`` when the package is imported (``vaelab.data.splits`` imports this module)."""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..files import atomic_path
from .datasets import DATASETS, LocalDataset, RawData, TEST_FRACTION, _holdout, cache_dir

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def folder(cfg: DataConfig) -> RawData:
    """A directory of PNG/JPEG images. Images in sub-directories get the sub-directory's
    name as class label (one level, sorted); a fixed 20% (seed 0) is the test set.

    Decoding is done once, one image in memory at a time, into a ``.npy`` file in the user
    cache directory, keyed by the files' paths, sizes and modification times and the
    ``image_size`` and ``channels`` settings (a changed, added or removed file decodes the
    folder anew). The file is memory-mapped, training part first, then the test part, so
    the images are read from disk as batches need them: a folder larger than the memory
    trains."""
    if not cfg.data_dir:
        raise DataError("the folder data set needs --data-dir DIR (a directory of PNG/JPEG images)")
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a directory")
    files = sorted(p for p in root.rglob("*")  # regular files only: a FIFO would hang
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no PNG or JPEG images found under {root}")
    train, test = _holdout(len(files), TEST_FRACTION, seed=0)
    order = np.concatenate([train, test])
    files = [files[i] for i in order]  # as decoded: the training part, then the test part
    cache = cache_dir() / "folders" / f"{_folder_key(root, files, cfg)}.npy"
    x = _read_decoded(cache, len(files))
    if x is None:
        _decode(root, files, cfg, cache)
        x = _read_decoded(cache, len(files))
        if x is None:
            raise DataError(f"the decoded images {cache} cannot be read back; check the disk "
                            "holding the cache directory")
    parents = [p.parent.relative_to(root) for p in files]
    labels, classes = None, None
    if all(str(q) != "." for q in parents):
        classes = tuple(sorted({q.parts[0] for q in parents}))
        labels = np.array([classes.index(q.parts[0]) for q in parents], np.int64)
    n = len(train)
    return RawData(f"folder:{root.name}", x[:n], None if labels is None else labels[:n],
                   x[n:], None if labels is None else labels[n:], 255, classes)


DECODE_THREADS = min(8, os.cpu_count() or 1)
SMALL_IMAGE_BYTES = 8192  # decoded images smaller than this are decoded in one thread
FOLDER_CACHE_FORMAT = 3  # 2: the training part first, memory-mapped; 3: 16-bit scaled


DATASETS.register("folder")(LocalDataset(
    folder, "your own images: --dataset folder --data-dir DIR [--image-size N]"))


def _folder_key(root: Path, files: list[Path], cfg: DataConfig) -> str:
    h = hashlib.sha256(f"{FOLDER_CACHE_FORMAT} {root.resolve()} {cfg.image_size} "
                       f"{cfg.channels}".encode())
    for p in files:
        st = p.stat()
        h.update(f"\0{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _read_decoded(cache: Path, n: int) -> np.ndarray | None:
    """The decoded images kept at ``cache``, memory-mapped, or None (absent, or damaged:
    then they are decoded again and rewritten)."""
    if not cache.is_file():
        return None
    try:  # copy-on-write: writable for torch, never written back
        x = np.load(cache, mmap_mode="c", allow_pickle=False)
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) != n:
            raise ValueError(f"unexpected array {x.dtype} {x.shape} for {n} images")
        return x
    except (OSError, ValueError, EOFError) as e:
        log.warning("the decoded copy %s is unreadable (%s); decoding the images again",
                    cache, e)
        return None


def _create(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A ``.npy`` file of uint8 ``shape`` at ``path``, memory-mapped for writing, its disk
    blocks allocated now: writing a mapped page that the disk has no room for would kill
    the process without a word."""
    size = int(np.prod(shape))
    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with open(path, "rb+") as f:
                os.posix_fallocate(f.fileno(), 0, path.stat().st_size)
    except OSError as e:
        raise DataError(f"no room for the decoded images ({size / 2**20:,.0f} MiB) in "
                        f"{path.parent} ({e.strerror}); free some space there, or point "
                        "XDG_CACHE_HOME at a disk that has it") from None
    return out


def eight_bit(im, path: Path):
    """An image with 8-bit channels: 16-bit grey (``I;16``) scaled by 255/65535 (Pillow's
    own conversion would clip it); 32-bit integer and float images, whose range is unknown,
    are refused."""
    from PIL import Image

    if im.mode.startswith("I;16"):
        a = np.asarray(im, np.uint16).astype(np.uint32)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    if im.mode in ("I", "F"):
        raise DataError(f"{path} holds {'32-bit integer' if im.mode == 'I' else 'floating-point'}"
                        " pixels, whose range is unknown; save it with 8 or 16 bits per channel")
    return im


def _decode(root: Path, files: list[Path], cfg: DataConfig, target: Path) -> None:
    """Every image, converted and resized as ``cfg`` says, into the ``.npy`` file ``target``
    (uint8 ``(N, C, H, W)``), written beside it and renamed when complete."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    mode = "L" if cfg.channels == 1 else "RGB"

    def decode(p: Path) -> np.ndarray:
        try:
            with Image.open(p) as im:
                im = eight_bit(im, p).convert(mode)
                if cfg.image_size:
                    im = im.resize((cfg.image_size, cfg.image_size), Image.Resampling.LANCZOS)
                a = np.asarray(im, np.uint8).reshape(im.height, im.width, cfg.channels)
        except Image.DecompressionBombError as e:
            raise DataError(f"{p} is too large to decode safely ({e}); remove it") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {p}: {e}; remove or repair it") from None
        return a.transpose(2, 0, 1)  # (C, H, W)

    first, n, block = decode(files[0]), len(files), 1024
    # threads pay from about 64x64 pixels on (measured 1.6-1.9x with 2 threads for 64x64 to
    # 256x256 RGB); for smaller images the per-image Python work under the GIL dominates and
    # a second thread made 32x32 RGB decoding 1.4x slower
    threads = DECODE_THREADS if first.nbytes >= SMALL_IMAGE_BYTES else 1
    with atomic_path(target) as tmp, ThreadPoolExecutor(threads) as pool, \
            tqdm(total=n, desc=f"decoding {root.name}", unit="img", leave=False,
                 disable=None if n > 1000 else True) as bar:
        out = _create(tmp, (n, *first.shape))

        def put(rows: range) -> None:  # in threads: Pillow decodes and resizes without the GIL
            for i in rows:
                a = first if i == 0 else decode(files[i])
                if a.shape != first.shape:
                    raise DataError(
                        f"images under {root} have different sizes: {files[0]} is "
                        f"{first.shape[2]}x{first.shape[1]}, {files[i]} is {a.shape[2]}x"
                        f"{a.shape[1]}; pass --image-size N to resize them all to N x N")
                out[i] = a

        for start in range(0, n, block):  # a block at a time, a share of it per thread
            stop = min(start + block, n)
            list(pool.map(put, (range(i, stop, threads) for i in range(start, start + threads))))
            bar.update(stop - start)
        out.flush()
