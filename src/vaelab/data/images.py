"""Images as arrays, in and out: image files as they are on disk, read so that they can be
written back identically (an IDX file or a ``.npy`` of uint8 images: the same bytes back; a
folder of PNGs: the same pixels, names and modes back; for lossless compression,
:mod:`vaelab.coding`), and images tiled into one grid of pixels (for figures, TensorBoard
and pages; no drawing here).

The images travel as uint8 ``(N, C, H, W)`` levels 0..K-1 of the model they are coded
with; what it takes to restore the file (its header bytes, layout, PNG names and modes, a
scale such as 255 for binary images stored as 0/255) is :attr:`ImageFile.meta`, small and
JSON-able."""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..files import atomic_dir, atomic_write
from .idx import parse_idx, read_idx_bytes

PNG_MODES = {"L": 1, "1": 1, "RGB": 3}  # Pillow modes whose pixels are kept exactly


@dataclass
class ImageFile:
    """uint8 images ``(N, C, H, W)`` and how to write them back (``meta``)."""

    images: np.ndarray
    meta: dict = field(default_factory=dict)


def read_images(path: str | Path, image_shape: tuple[int, int, int], levels: int) -> ImageFile:
    """An IDX file (raw or ``.gz``), a ``.npy`` file or a folder of PNGs, whose images have
    the model's ``image_shape`` (C, H, W) and values in 0..levels-1 (or 0/255 for a binary
    model)."""
    path = Path(path)
    if path.is_dir():
        f = _read_pngs(path, image_shape)
    elif not path.is_file():
        raise DataError(f"{path} does not exist; give an IDX file, a .npy file of uint8 images "
                        "or a folder of PNGs")
    elif path.suffix == ".npy":
        f = _read_npy(path, image_shape)
    else:
        f = _read_idx(path, image_shape)
    if not len(f.images):
        raise DataError(f"{path} holds no images; nothing to compress")
    return _to_levels(f, levels, path)


def write_images(f: ImageFile, out: str | Path) -> Path:
    """Write ``f`` back as it was read: the same bytes (IDX, .npy), or the same pixels in a
    folder of PNGs of the same names. Written whole or not at all."""
    out = Path(out)
    check_meta(f.meta, f.images.shape, out)
    images = f.images * np.uint8(f.meta.get("scale", 1))
    kind = f.meta["kind"]
    if kind == "png":
        return _write_pngs(images, f.meta, out)
    if kind in ("split", "array"):  # a prepared split, or an array: a .npy of (N, C, H, W)
        buf = io.BytesIO()
        np.save(buf, images)
        body = buf.getvalue()
    else:
        order = "F" if f.meta.get("fortran") else "C"
        body = base64.b64decode(f.meta["header"]) + \
            _from_layout(images, f.meta["layout"]).tobytes(order=order)
    atomic_write(out, body)
    return out


def check_meta(meta: dict, shape: tuple[int, ...], out: Path | None = None) -> None:
    """That ``meta`` (from a compressed file, so from anywhere) restores images of ``shape``
    (N, C, H, W) to what was read, at ``out``; a DataError says what does not fit."""
    n, c, h, w = shape

    def bad(what: str):
        raise DataError(f"the file's restore information is damaged or not vaelab's ({what}); "
                        "nothing was written")

    if not isinstance(meta, dict):
        bad("not a table")
    if meta.get("scale", 1) not in (1, 255) or isinstance(meta.get("scale"), bool):
        bad(f"scale {meta.get('scale')!r}")
    kind = meta.get("kind")
    if kind == "png":
        names, modes = meta.get("names"), meta.get("modes")
        if not (isinstance(names, list) and isinstance(modes, list)) or \
                not len(names) == len(modes) == n:
            bad(f"{len(names) if isinstance(names, list) else 'no'} names for {n} images")
        for name, mode in zip(names, modes):
            if not isinstance(name, str) or not isinstance(mode, str) or \
                    PNG_MODES.get(mode) != c or not _safe_name(name):
                bad(f"image {name!r} ({mode!r})")
        if len(set(names)) != n:
            bad("a name given twice")
        return
    if kind not in ("idx", "npy", "split", "array"):
        bad(f"kind {kind!r}")
    if out is not None and out.suffix == ".gz":
        raise DataError(f"{out}: vaelab gives back the original's uncompressed bytes (a .gz "
                        "input was unpacked when it was compressed); name the output without "
                        ".gz, and gzip it if you like")
    if kind in ("split", "array"):
        return
    layout = meta.get("layout")
    image = {"chw": (c, h, w), "hwc": (h, w, c), "hw": (h, w) if c == 1 else None}.get(layout)
    try:
        head = base64.b64decode(meta["header"], validate=True)
        claimed = _idx_shape(head) if kind == "idx" else _npy_shape(head, meta)
    except (KeyError, TypeError, ValueError) as e:
        bad(f"{kind} header: {e}")
    if image is None or claimed != (n, *image):
        bad(f"a {kind} header for {claimed} with layout {layout!r}, for {n} images")


def _safe_name(name: str) -> bool:
    p = Path(name)
    return bool(name) and "\0" not in name and not p.is_absolute() and ".." not in p.parts \
        and p.suffix.lower() == ".png"


def _idx_shape(head: bytes) -> tuple[int, ...]:
    if len(head) < 4 or head[:3] != b"\0\0\x08" or len(head) != 4 + 4 * head[3]:
        raise ValueError("not the header of a uint8 IDX file")
    return tuple(int(d) for d in np.frombuffer(head, ">u4", offset=4))


def _npy_shape(head: bytes, meta: dict) -> tuple[int, ...]:
    fh = io.BytesIO(head)
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
        np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if dtype != np.uint8 or fortran != meta.get("fortran") or fh.tell() != len(head):
        raise ValueError(f"{dtype}, fortran {fortran}")
    return tuple(shape)


# ---------------------------------------------------------------------------------------
def _layout(shape: tuple[int, ...], image_shape: tuple[int, int, int], source: Path) -> str:
    """How one image is laid out: (H, W), (H, W, C) or (C, H, W)."""
    c, h, w = image_shape
    if shape == (c, h, w):
        return "chw"
    if shape == (h, w, c):
        return "hwc"
    if c == 1 and shape == (h, w):
        return "hw"
    raise DataError(f"{source}: images of shape {shape} do not fit this model, which codes "
                    f"images of {c} channel(s) of {h}x{w} pixels ((H, W), (H, W, C) or (C, H, W))")


def _to_chw(values: np.ndarray, layout: str) -> np.ndarray:
    if layout == "hw":
        return values[:, None]
    if layout == "hwc":
        return values.transpose(0, 3, 1, 2)
    return values


def _from_layout(images: np.ndarray, layout: str) -> np.ndarray:
    if layout == "hw":
        return images[:, 0]
    if layout == "hwc":
        return images.transpose(0, 2, 3, 1)
    return images


def _read_idx(path: Path, image_shape) -> ImageFile:
    data = read_idx_bytes(path)
    values = parse_idx(data, str(path))  # checks the magic, the dimensions, the length
    if values.dtype != np.uint8:
        raise DataError(f"{path} holds IDX values of type {values.dtype}; only uint8 images "
                        "can be coded")
    head = 4 + 4 * values.ndim
    layout = _layout(values.shape[1:], image_shape, path)
    return ImageFile(_to_chw(values, layout),
                     {"kind": "idx", "layout": layout,
                      "header": base64.b64encode(data[:head]).decode()})


def _read_npy(path: Path, image_shape) -> ImageFile:
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
        except (ValueError, SyntaxError, EOFError) as e:
            raise DataError(f"{path} is not a readable .npy file ({e})") from None
        head = fh.tell()
    if dtype != np.uint8 or len(shape) < 3:
        raise DataError(f"{path} holds {dtype} of shape {shape}; give uint8 images "
                        "(N, H, W), (N, H, W, C) or (N, C, H, W)")
    raw = path.read_bytes()
    if len(raw) != head + int(np.prod(shape)):
        raise DataError(f"{path} is truncated or has trailing bytes ({len(raw)} bytes for "
                        f"shape {shape})")
    layout = _layout(tuple(shape[1:]), image_shape, path)
    values = np.frombuffer(raw, np.uint8, offset=head).reshape(shape, order="F" if fortran
                                                                else "C")
    return ImageFile(np.ascontiguousarray(_to_chw(values, layout)),
                     {"kind": "npy", "layout": layout, "fortran": bool(fortran),
                      "header": base64.b64encode(raw[:head]).decode()})


def _read_pngs(root: Path, image_shape) -> ImageFile:
    from PIL import Image

    c, h, w = image_shape
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise DataError(f"no PNG files under {root}")
    images = np.empty((len(files), c, h, w), np.uint8)
    modes = []
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                if PNG_MODES.get(im.mode) != c or im.size != (w, h):
                    raise DataError(
                        f"{p}: a {im.mode} image of {im.size[0]}x{im.size[1]} pixels; this "
                        f"model codes {'grey (L)' if c == 1 else 'RGB'} images of {w}x{h} "
                        "pixels exactly as they are (nothing is converted or resized)")
                modes.append(im.mode)
                a = np.asarray(im.convert("L") if im.mode == "1" else im, np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{p} is not a readable PNG ({e})") from None
        images[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    names = [str(p.relative_to(root)) for p in files]
    return ImageFile(images, {"kind": "png", "names": names, "modes": modes})


def _write_pngs(images: np.ndarray, meta: dict, out: Path) -> Path:
    from PIL import Image

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; choose another --out")
    with atomic_dir(out) as part:
        for img, name, mode in zip(images, meta["names"], meta["modes"]):
            target = part / name
            target.parent.mkdir(parents=True, exist_ok=True)
            pic = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
            (pic.convert("1") if mode == "1" else pic).save(target, optimize=False)
    return out


def _to_levels(f: ImageFile, levels: int, source: Path) -> ImageFile:
    """Check the values against the model's levels; binary images stored as 0/255 are
    coded as 0/1 (``scale`` 255)."""
    top = int(f.images.max()) if f.images.size else 0
    if top < levels:
        return f
    if levels == 2 and np.isin(f.images, (0, 255)).all():
        f.meta["scale"] = 255
        f.images = (f.images // 255).astype(np.uint8)
        return f
    kind = "binary (0/1 or 0/255)" if levels == 2 else f"{levels} grey levels (0..{levels - 1})"
    raise DataError(f"{source} holds values up to {top}, but this model codes {kind} images; "
                    "use a run trained on such data (a Bernoulli run codes binarized images: "
                    "`--dataset NAME --split test` gives the run's own binarized test set)")


def image_grid(images: torch.Tensor, nrow: int = 10, pad: int = 1, pad_value: float = 1.0
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
