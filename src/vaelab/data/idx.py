"""The IDX format (LeCun et al.): 2 zero bytes, a type code, the number of dimensions, then
one big-endian uint32 per dimension, then the data in C order; raw or gzipped."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx_bytes(path: str | Path) -> bytes:
    """The decompressed bytes of an IDX file (``.gz`` or raw)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({e}); "
                            "delete it and download it again") from None
    return raw


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes, checking the magic number, the dimensions and the length."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(f"{source} is not an IDX file (bad magic number {data[:4].hex()}); "
                        "expected 0x0000 followed by a type code and the number of dimensions")
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        what = "shorter" if len(data) < expected else "longer"
        raise DataError(f"{source}: its header says {dims} values of type {dtype.name} (type "
                        f"code 0x{data[2]:02X}), {expected} bytes, but the file is {what} "
                        f"({len(data)} bytes): it is truncated or damaged, or its header (type "
                        "code, dimensions) is wrong. A downloaded file: delete it and download "
                        "it again; your own: write it with the right header")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    return parse_idx(read_idx_bytes(path), str(path))


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, H, W)`` uint8 and labels ``(N,)`` int64, checked against each other."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"{images}: expected a 3-d uint8 image array, got {x.dtype} {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{labels}: expected a 1-d label array, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; "
                        "the two files do not belong together")
    return x[:, None], y.astype(np.int64)
