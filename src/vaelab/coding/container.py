"""The compressed file, its batch schedule, and every check it gets before anything is
decoded.

Format 3, a compact binary header (35 bytes and an 8-byte checksum for a file of one image):

    magic and version   4 bytes   89 56 4C 03 ("\\x89VL", 3)
    flags               1 byte    1 CUDA, 2 meta, 4 versions, 8 latent range, 16 uniform
                                  code, 32 coupled samples, 64 bfloat16 weights, 128 PNG code
    model               8 bytes   the model's fingerprint (SHA-256 of its weights), cut
    images              8 bytes   SHA-256 of the images' bytes, cut
    varints             count, channels, height, width, levels, latent bits, samples K,
                        direct-code grid bits, then the batch schedule: the images coded
                        directly first, the rate and the cap of the batches' growth,
                        the number of batches coded directly after those and their
                        places (each after the last), then the CPU threads the
                        probabilities were computed on (0: on CUDA)
    [latent range]      8 bytes   float64, when not 16
    [meta]              varint length + zlib JSON: what restores the original file (the
                        names of PNGs, an IDX header), when not a plain array
    [versions]          varint length + zlib JSON (``--verbose-header``)
    body                the coder's 32-bit words, little-endian (the PNG code: the image
                        data of the images' optimized PNG, stacked)
    checksum            8 bytes   SHA-256 of everything before, cut

Format 2 (format 3 without the thread count, which a decoder then takes from its own
setting) and format 1 (``MAGIC``, a 4-byte length, a zlib JSON header, the words, a
SHA-256) are still read. Either way the magic, the checksum, every field's presence,
type and range, and every count against the others and the file's size are checked
before anything is inflated past a hard limit or allocated: a file from anywhere
allocates nothing it does not account for.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
import zlib

import torch

from ..errors import CodingError

MAGIC = b"\x89VAELAB\n"  # format 1
MAGIC2 = b"\x89VL"  # format 2 and later: then one byte of version
FORMAT_VERSION = 3
READS = (1, 2, 3)
MAX_THREADS = 1024  # CPU threads a file may ask its decoder to compute on
DIGEST = 8  # bytes of each SHA-256 kept in format 2
MAX_HEADER = 1 << 20  # bytes of an inflated header or meta (a real one is a few hundred)
MAX_DECODED = 1 << 32  # bytes of images one file decodes to
MAX_SIDE = 16384  # pixels of an image side
MAX_SAMPLES = 4096
PNG_IMAGES = 64  # a file of at most this many images may hold the PNG code
IMAGES_PER_BYTE = 512  # at most, on average: no image codes in under 1/64 bit
DEFAULT_RANGE = 16.0
ARRAY = {"kind": "array"}  # the meta of images given as an array
FLAG_CUDA, FLAG_META, FLAG_VERSIONS, FLAG_RANGE, FLAG_UNIFORM, FLAG_COUPLED, FLAG_BF16, \
    FLAG_PNG = 1, 2, 4, 8, 16, 32, 64, 128


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    import platform

    return {"vaelab": v("vaelab"), "torch": torch.__version__, "constriction": v("constriction"),
            "python": sys.version.split()[0],
            "machine": f"{platform.system()} {platform.machine()}"}


# ---- writing -----------------------------------------------------------------------------
def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _blob(obj: dict) -> bytes:
    raw = zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 9)
    return _varint(len(raw)) + raw


def pack(header: dict, body: bytes) -> bytes:
    """The file of a format-2 ``header`` (as :func:`read_container` gives it) and body."""
    s, meta = header["settings"], header.get("meta", ARRAY)
    flags = (FLAG_CUDA * (header["device"] == "cuda") | FLAG_META * (meta != ARRAY)
             | FLAG_VERSIONS * ("made_with" in header)
             | FLAG_RANGE * (s["latent_range"] != DEFAULT_RANGE)
             | FLAG_UNIFORM * (header["code"] == "uniform") | FLAG_COUPLED * s["coupled"]
             | FLAG_PNG * (header["code"] == "png")
             | FLAG_BF16 * s["bf16"])
    out = bytearray(MAGIC2 + bytes([header["format"], flags]))
    out += bytes.fromhex(header["model"]) + bytes.fromhex(header["sha256"])
    plan = header["schedule"]
    gaps = [b - a - 1 for a, b in zip([-1] + plan["exceptions"], plan["exceptions"])]
    for v in (header["count"], *header["image_shape"], header["levels"], s["latent_bits"],
              s["samples"], s["direct_bits"], plan["direct"], plan["rate"], plan["cap"],
              len(gaps), *gaps, *([s["threads"]] if header["format"] >= 3 else [])):
        out += _varint(v)
    if flags & FLAG_RANGE:
        out += struct.pack("<d", s["latent_range"])
    if flags & FLAG_META:
        out += _blob(meta)
    if flags & FLAG_VERSIONS:
        out += _blob(header["made_with"])
    out += body
    return bytes(out + hashlib.sha256(out).digest()[:DIGEST])


def pack_v1(header: dict, body: bytes) -> bytes:
    """A format-1 file (what vaelab wrote before format 2: a JSON header)."""
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    out = MAGIC + struct.pack("<I", len(head)) + head + body
    return out + hashlib.sha256(out).digest()


# ---- the batches ------------------------------------------------------------------------
def schedule(count: int, direct: int, rate: int, cap: int) -> list[int]:
    """The batches of a file: after ``direct`` images coded one by one, batches of
    max(1, floor(n 2^(-rate/4))) images, n the images coded so far, at most ``cap``: the
    stack's bits grow with n, and so can the batches that pop them. A function of the
    header's four numbers, so that the file need not list its batches."""
    sizes, n = [1] * min(direct, count), min(direct, count)
    while n < count:
        sizes.append(min(cap, count - n, grown(n, rate)))
        n += sizes[-1]
    return sizes


def grown(n: int, rate: int) -> int:
    """A batch after n images at this rate, before the cap: max(1, floor(n 2^(-rate/4)))."""
    return max(1, int(n * 2.0 ** (-rate / 4)))


def batch_sizes(plan: dict, count: int) -> list[tuple[int, bool]]:
    """(size, direct) of every batch of a format-2 file."""
    sizes = schedule(count, plan["direct"], plan["rate"], plan["cap"])
    direct = set(plan["exceptions"])
    return [(size, b < plan["direct"] or b - plan["direct"] in direct)
            for b, size in enumerate(sizes)]


# ---- reading -----------------------------------------------------------------------------
def read_header(data: bytes) -> dict:
    """The header of a compressed file (checked: magic, version, checksum, fields)."""
    return read_container(data)[0]


def read_container(data: bytes) -> tuple[dict, bytes]:
    """The header (checked by :func:`check_header`) and the body of a compressed file;
    nothing is inflated or allocated past the limits before the checks."""
    if data[:len(MAGIC)] == MAGIC:
        return _read_v1(data)
    if len(data) < len(MAGIC2) + 1 or data[:len(MAGIC2)] != MAGIC2:
        raise CodingError("not a vaelab compressed file (wrong magic bytes)")
    if data[3] not in READS:
        raise CodingError(f"file format version {data[3]}; this vaelab reads versions "
                          f"{', '.join(map(str, READS))} (use the vaelab that wrote it)")
    if len(data) < 5 + 2 * DIGEST + DIGEST or \
            hashlib.sha256(data[:-DIGEST]).digest()[:DIGEST] != data[-DIGEST:]:
        raise CodingError(f"the file is damaged or truncated ({len(data)} bytes; its "
                          "checksum does not match); nothing was decoded")
    header, at = _fields(memoryview(data)[:-DIGEST], data[3])
    body = data[at:-DIGEST]
    check_header(header, len(body))
    return header, body


class _Reader:
    def __init__(self, data: memoryview, at: int):
        self.data, self.at = data, at

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            _damaged("it ends inside the header")
        out = bytes(self.data[self.at:self.at + n])
        self.at += n
        return out

    def varint(self) -> int:
        v = 0
        for shift in range(0, 64, 7):
            (b,) = self.take(1)
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
        _damaged("a number runs past 64 bits")

    def blob(self) -> dict:
        try:
            obj = json.loads(_inflate(self.take(self.varint())))
        except (zlib.error, ValueError) as e:
            _damaged(f"{e}")
        if not isinstance(obj, dict):
            _damaged("meta is not a table")
        return obj


def _fields(data: memoryview, version: int) -> tuple[dict, int]:
    r = _Reader(data, 4)
    (flags,) = r.take(1)
    if flags & FLAG_UNIFORM and flags & FLAG_PNG:
        _damaged(f"flags {flags:#x} name two codes")
    model, digest = r.take(DIGEST).hex(), r.take(DIGEST).hex()
    count, c, h, w, levels, bits, samples, direct_bits, direct, rate, cap, n = \
        (r.varint() for _ in range(12))
    if n > max(count, 1):
        _damaged("more batches coded directly than images")
    exceptions = []
    for _ in range(n):
        exceptions.append((exceptions[-1] if exceptions else -1) + 1 + r.varint())
    threads = {"threads": r.varint()} if version >= 3 else {}
    latent_range = struct.unpack("<d", r.take(8))[0] if flags & FLAG_RANGE else DEFAULT_RANGE
    header = {"format": version, "model": model, "sha256": digest, "image_shape": [c, h, w],
              "count": count, "levels": levels, "device": "cuda" if flags & FLAG_CUDA else "cpu",
              "code": "uniform" if flags & FLAG_UNIFORM else "png" if flags & FLAG_PNG
              else "bits-back",
              "settings": {"latent_bits": bits, "latent_range": latent_range,
                           "samples": samples, "direct_bits": direct_bits,
                           "coupled": int(bool(flags & FLAG_COUPLED)),
                           "bf16": int(bool(flags & FLAG_BF16)), **threads},
              "schedule": {"direct": direct, "rate": rate, "cap": cap, "exceptions": exceptions},
              "meta": r.blob() if flags & FLAG_META else dict(ARRAY)}
    if flags & FLAG_VERSIONS:
        header["made_with"] = r.blob()
    header["words"] = (len(data) - r.at) // 4
    return header, r.at


def _read_v1(data: bytes) -> tuple[dict, bytes]:
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
    if not isinstance(header, dict) or header.get("format") != 1:
        got = header.get("format") if isinstance(header, dict) else None
        raise CodingError(f"file format version {got!r}; this vaelab reads versions "
                          f"{', '.join(map(str, READS))} (use the vaelab that wrote it)")
    check_header(header, len(body))
    return header, body


def _inflate(raw: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(raw, MAX_HEADER)
    if d.unconsumed_tail or not d.eof:
        raise ValueError(f"it inflates past {MAX_HEADER} bytes or is cut short")
    return out


def unrecorded_threads(header: dict) -> str:
    """What to try with a CPU file that does not record its thread count (format 1, 2)."""
    if header["device"] != "cpu" or "threads" in header["settings"]:
        return ""
    return (f" at {torch.get_num_threads()} thread(s); this file (format {header['format']}) "
            "does not record the thread count it was made on: decompress with that count "
            "(OMP_NUM_THREADS=N)")


# ---- checking ----------------------------------------------------------------------------
WORDS = {int: "an integer", str: "a string", list: "a list", dict: "a table",
         float: "a number"}
FIELDS = {1: {"format": int, "model": str, "image_shape": list, "count": int, "levels": int,
              "settings": dict, "device": str, "batches": list, "sha256": str, "words": int,
              "made_with": dict, "meta": dict},
          2: {"format": int, "model": str, "image_shape": list, "count": int, "levels": int,
              "settings": dict, "device": str, "schedule": dict, "sha256": str,
              "words": int, "meta": dict, "code": str}}
FIELDS[3] = FIELDS[2]
OPTIONAL = {"made_with"}
SETTINGS = {1: {"latent_bits": int, "latent_range": (int, float), "batch_size": int},
            2: {"latent_bits": int, "latent_range": (int, float), "samples": int,
                "direct_bits": int, "coupled": int, "bf16": int}}
SETTINGS[3] = {**SETTINGS[2], "threads": int}


def check_header(header, body_bytes: int) -> None:
    """Every field present, of its type and in its range, and every count consistent with
    the others and with the file's size, before anything is allocated for it."""
    fmt = header.get("format") if isinstance(header, dict) else None
    if fmt not in READS or isinstance(fmt, bool):
        raise CodingError(f"file format version {fmt!r}; this vaelab reads versions "
                          f"{', '.join(map(str, READS))} (use the vaelab that wrote it)")
    _check_types(header, FIELDS[fmt], OPTIONAL if fmt >= 2 else set())
    _check_types(header["settings"], SETTINGS[fmt], set(), "settings: ")
    digest = 64 if fmt == 1 else 2 * DIGEST
    if not all(_hex(header[k], digest) for k in ("model", "sha256")):
        _damaged("a checksum is not of its length in hex digits")
    shape = header["image_shape"]
    if not (len(shape) == 3 and all(_count(v) for v in shape) and shape[0] in (1, 3)
            and max(shape[1:]) <= MAX_SIDE):
        _damaged(f"image shape {shape}")
    if not 2 <= header["levels"] <= 65536 or header["device"] not in ("cpu", "cuda"):
        _damaged(f"levels {header['levels']}, device {header['device']!r}")
    if header.get("code") != "png" and 4 * header["words"] != body_bytes:
        raise CodingError(f"truncated file: the header announces {header['words']} words, "
                          f"the file holds {body_bytes / 4:g}")
    count = header["count"]
    if count < 0 or count * math.prod(shape) > MAX_DECODED or \
            count > IMAGES_PER_BYTE * body_bytes + 1024:
        _damaged(f"{count} images of shape {shape} from {body_bytes} bytes")
    if fmt == 1:
        _check_batches(header, count)
    else:
        _check_schedule(header["schedule"], count)
    _check_settings(header["settings"], fmt)
    if fmt >= 2 and header["code"] not in ("bits-back", "uniform", "png") or \
            header.get("code") == "png" and count > PNG_IMAGES:
        _damaged(f"code {header['code']!r} for {count} images")
    if not all(isinstance(v, str) for v in header.get("made_with", {}).values()):
        _damaged("made_with")


def _check_types(d: dict, fields: dict, optional: set, where: str = "") -> None:
    for name, kind in fields.items():
        if name not in d and name in optional:
            continue
        if not isinstance(d.get(name), kind) or isinstance(d.get(name), bool):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            _damaged(f"{where}{name!r} is " + ("missing" if name not in d else
                                                 f"not {WORDS[kinds[-1]]}"))
    if set(d) - set(fields) - optional:
        _damaged(f"{where}unknown fields {sorted(set(d) - set(fields) - optional)}")


def _check_batches(header: dict, count: int) -> None:
    batches = header["batches"]
    if len(batches) > max(count, 1) or not all(
            isinstance(b, list) and len(b) == 2 and _count(b[0]) and _count(b[1])
            for b in batches) or sum(b[0] * b[1] for b in batches) != count:
        _damaged("the batch sizes do not add up to the image count")


SCHEDULE = {"direct": int, "rate": int, "cap": int, "exceptions": list}


def _check_schedule(plan: dict, count: int) -> None:
    _check_types(plan, SCHEDULE, set(), "schedule: ")
    e = plan["exceptions"]
    if not (0 <= plan["direct"] <= count and 0 <= plan["rate"] <= 255 and _count(plan["cap"])
            and len(e) <= count and all(_count(v + 1) for v in e)
            and all(a < b for a, b in zip(e, e[1:]))):
        _damaged(f"batch schedule {plan}"[:200])


def _check_settings(s: dict, fmt: int) -> None:
    r = s["latent_range"]
    if not 2 <= s["latent_bits"] <= 16 or not (0 < r < math.inf) or \
            r * 2 ** s["latent_bits"] > 2 ** 20:
        _damaged(f"latent grid of {s['latent_bits']} bits over +-{r}")
    if fmt >= 2 and not (1 <= s["samples"] <= MAX_SAMPLES and s["coupled"] in (0, 1) and
                         s["bf16"] in (0, 1) and
                         0 <= s["direct_bits"] <= s["latent_bits"]):
        _damaged(f"samples {s['samples']}, direct grid bits {s['direct_bits']}")
    if fmt >= 3 and not 0 <= s["threads"] <= MAX_THREADS:
        _damaged(f"{s['threads']} threads (at most {MAX_THREADS})")


def _damaged(what: str):
    raise CodingError(f"damaged header: {what}; nothing was decoded")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _hex(v: str, n: int) -> bool:
    return len(v) == n and all(c in "0123456789abcdef" for c in v)
