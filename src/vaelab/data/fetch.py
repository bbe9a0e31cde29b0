"""Verified downloads: mirrors tried in order, retries with back-off, checksums, atomic writes.

A file is accepted when the MD5 of the downloaded bytes matches the canonical archive, or
when the MD5 of its decompressed content matches (a re-compressed copy of the same data,
such as Debian's). It is streamed to a temporary file in the destination directory,
hashed as it arrives and cut off beyond a size limit, and renamed into place only after
verification: the cache never holds a partial file, and memory holds one chunk.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import atomic_path

log = logging.getLogger(__name__)

CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    name: str
    md5: str  # of the canonical (compressed) file
    md5_content: str | None = None  # of the decompressed content, where known
    max_bytes: int = 256 << 20  # a download larger than this is cut off

    def verify(self, data: bytes) -> bool:
        if hashlib.md5(data).hexdigest() == self.md5:
            return True
        if self.md5_content is None or data[:2] != b"\x1f\x8b":
            return False
        try:
            content = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return False
        return hashlib.md5(content).hexdigest() == self.md5_content

    def verify_file(self, path: Path) -> bool:
        """Whether the file at ``path`` is this file (its MD5, or its content's), read a
        chunk at a time."""
        raw, content = hashlib.md5(), hashlib.md5()
        unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        gz = None
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    raw.update(chunk)
                    if gz is None:
                        gz = chunk[:2] == b"\x1f\x8b"
                    if gz and self.md5_content:
                        content.update(unzip.decompress(chunk))
        except zlib.error:
            gz = False
        if raw.hexdigest() == self.md5:
            return True
        if self.md5_content is None:
            return False
        if not gz:  # an uncompressed copy: its bytes are the content
            return raw.hexdigest() == self.md5_content
        return content.hexdigest() == self.md5_content


def mirrors_from_env() -> tuple[str, ...]:
    """Extra base URLs from ``$VAELAB_MIRRORS`` (comma separated), tried first."""
    return tuple(m.strip() for m in os.environ.get("VAELAB_MIRRORS", "").split(",") if m.strip())


class _Retryable(Exception):
    pass


class _Mismatch(Exception):
    pass


class _TooLarge(Exception):
    pass


def _get(url: str, path: Path, timeout: float, desc: str, limit: int) -> None:
    """Stream ``url`` into ``path``; more than ``limit`` bytes (announced or sent) stop it."""
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(path, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0) or None
            if total is not None and total > limit:
                raise _TooLarge(f"it announces {total:,} bytes, more than the {limit:,} "
                                "this file can have")
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None,
                      leave=False) as bar:
                while chunk := r.read(CHUNK):
                    got += len(chunk)
                    if got > limit:
                        raise _TooLarge(f"it sent more than the {limit:,} bytes this file "
                                        "can have")
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and got != total:
                raise _Retryable(f"connection closed after {got} of {total} bytes")
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Retryable(f"HTTP {e.code}") from None
        raise  # 403/404: this mirror does not have it
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise _Retryable(str(getattr(e, "reason", e))) from None


def fetch_file(remote: RemoteFile, dest_dir: str | Path, mirrors: tuple[str, ...] | list[str],
               retries: int = 3, timeout: float = 30.0, backoff: float = 0.5) -> Path:
    """Download ``remote`` from the first mirror that serves a verified copy; return its path."""
    dest_dir = Path(dest_dir)
    target = dest_dir / remote.name
    failures: list[str] = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + remote.name
        for attempt in range(retries):
            try:
                with atomic_path(target) as tmp:
                    _get(url, tmp, timeout, remote.name, remote.max_bytes)
                    if not remote.verify_file(tmp):
                        raise _Mismatch(f"checksum mismatch (expected md5 {remote.md5})")
            except urllib.error.HTTPError as e:
                failures.append(f"{url}: HTTP {e.code}")
                break
            except (_Mismatch, _TooLarge) as e:
                failures.append(f"{url}: {e}")
                break
            except _Retryable as e:
                if attempt + 1 == retries:
                    failures.append(f"{url}: {e} (after {retries} tries)")
                else:
                    time.sleep(backoff * 2 ** attempt)
                continue
            log.info("downloaded %s -> %s", url, target)
            return target
    raise DataError(f"could not download {remote.name}:\n  "
                    + "\n  ".join(failures or ["no mirrors"]))
