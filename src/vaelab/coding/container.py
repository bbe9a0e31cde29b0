"""The compressed file: ``MAGIC``, a 4-byte length and a zlib-compressed JSON header, the
coder's 32-bit words, and a SHA-256 of everything before it. Read back checked (magic,
version, checksum, length) before anything is decoded."""
from __future__ import annotations

import hashlib
import json
import struct
import sys
import zlib

import torch

from ..errors import CodingError

MAGIC = b"\x89VAELAB\n"
FORMAT_VERSION = 1


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
    try:
        header = json.loads(zlib.decompress(data[start:start + n]))
    except (zlib.error, ValueError) as e:
        raise CodingError(f"damaged header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        got = header.get("format") if isinstance(header, dict) else None
        raise CodingError(f"file format version {got}; this vaelab reads version "
                          f"{FORMAT_VERSION} (use the vaelab that wrote it)")
    body = data[start + n:-32]
    if len(body) != 4 * header.get("words", -1):
        raise CodingError(f"truncated file: the header announces {header.get('words')} words, "
                          f"the file holds {len(body) / 4:g}")
    return header, body
