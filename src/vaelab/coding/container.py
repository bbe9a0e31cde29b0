"""The compressed file: ``MAGIC``, a 4-byte length and a zlib-compressed JSON header, the
coder's 32-bit words, and a SHA-256 of everything before it. Read back checked before
anything is decoded: the magic, the checksum, the header inflated under a hard limit, and
every field of it present, typed and in range, its counts against each other and against
the file's size (a file from anywhere allocates nothing it does not account for)."""
from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
import zlib

import torch

from ..errors import CodingError

MAGIC = b"\x89VAELAB\n"
FORMAT_VERSION = 1
MAX_HEADER = 1 << 20  # bytes of an inflated header (a real one is a few hundred)
MAX_DECODED = 1 << 32  # bytes of images one file decodes to
MAX_SIDE = 16384  # pixels of an image side
IMAGES_PER_BYTE = 512  # at most, on average: no image codes in under 1/64 bit


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    return {"vaelab": v("vaelab"), "torch": torch.__version__, "constriction": v("constriction"),
            "python": sys.version.split()[0], "machine": _machine()}


def _machine() -> str:
    import platform

    return f"{platform.system()} {platform.machine()}"


def pack(header: dict, body: bytes) -> bytes:
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    out = MAGIC + struct.pack("<I", len(head)) + head + body
    return out + hashlib.sha256(out).digest()


def read_header(data: bytes) -> dict:
    """The header of a compressed file (checked: magic, version, checksum, length)."""
    return read_container(data)[0]


def read_container(data: bytes) -> tuple[dict, bytes]:
    """The header (checked by :func:`check_header`) and the body of a compressed file;
    nothing is inflated or allocated past the limits before the checks."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise CodingError("not a vaelab compressed file (wrong magic bytes)")
    if len(data) < len(MAGIC) + 4 + 32:
        raise CodingError(f"the file is damaged or truncated ({len(data)} bytes); nothing was "
                          "decoded")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise CodingError("the file is damaged or truncated (its SHA-256 does not match); "
                          "nothing was decoded")
    (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if start + n > len(data) - 32:
        raise CodingError(f"damaged header: it claims {n} bytes, the file holds fewer")
    try:
        header = json.loads(_inflate(data[start:start + n]))
    except (zlib.error, ValueError) as e:
        raise CodingError(f"damaged header ({e})") from None
    body = data[start + n:-32]
    check_header(header, len(body))
    return header, body


def _inflate(raw: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(raw, MAX_HEADER)
    if d.unconsumed_tail or not d.eof:
        raise ValueError(f"it inflates past {MAX_HEADER} bytes or is cut short")
    return out


WORDS = {int: "an integer", str: "a string", list: "a list", dict: "a table"}
FIELDS = {"format": int, "model": str, "image_shape": list, "count": int, "levels": int,
          "settings": dict, "device": str, "batches": list, "sha256": str, "words": int,
          "made_with": dict, "meta": dict}


def check_header(header, body_bytes: int) -> None:
    """Every field present, of its type and in its range, and every count consistent with
    the others and with the file's size, before anything is allocated for it."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        got = header.get("format") if isinstance(header, dict) else None
        raise CodingError(f"file format version {got!r}; this vaelab reads version "
                          f"{FORMAT_VERSION} (use the vaelab that wrote it)")
    for name, kind in FIELDS.items():
        if not isinstance(header.get(name), kind) or isinstance(header.get(name), bool):
            _damaged(f"{name!r} is " + ("missing" if name not in header else
                                        f"not {WORDS[kind]}"))
    if set(header) - set(FIELDS):
        _damaged(f"unknown fields {sorted(set(header) - set(FIELDS))}")
    if not all(_hex64(header[k]) for k in ("model", "sha256")):
        _damaged("a checksum is not 64 hex digits")
    shape = header["image_shape"]
    if not (len(shape) == 3 and all(_count(v) for v in shape) and shape[0] in (1, 3)
            and max(shape[1:]) <= MAX_SIDE):
        _damaged(f"image shape {shape}")
    if not 2 <= header["levels"] <= 65536 or header["device"] not in ("cpu", "cuda"):
        _damaged(f"levels {header['levels']}, device {header['device']!r}")
    if 4 * header["words"] != body_bytes:
        raise CodingError(f"truncated file: the header announces {header['words']} words, "
                          f"the file holds {body_bytes / 4:g}")
    count, batches = header["count"], header["batches"]
    if count < 0 or count * math.prod(shape) > MAX_DECODED or \
            count > IMAGES_PER_BYTE * body_bytes + 1024:
        _damaged(f"{count} images of shape {shape} from {body_bytes} bytes")
    if len(batches) > max(count, 1) or not all(
            isinstance(b, list) and len(b) == 2 and _count(b[0]) and _count(b[1])
            for b in batches) or sum(size * repeat for size, repeat in batches) != count:
        _damaged("the batch sizes do not add up to the image count")
    if not all(isinstance(v, str) for v in header["made_with"].values()):
        _damaged("made_with")


def _damaged(what: str):
    raise CodingError(f"damaged header: {what}; nothing was decoded")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _hex64(v: str) -> bool:
    return len(v) == 64 and all(c in "0123456789abcdef" for c in v)
