"""Files written whole or not at all, and the user's own vaelab folder."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write; on success it is synced and renamed to
    ``target``, on any error (or an interruption) it is removed, so ``target`` is never
    half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def user_dir() -> Path:
    """The user's own vaelab folder: ``$VAELAB_HOME``, else the platform's user data folder
    (``~/.local/share/vaelab`` on Linux)."""
    if os.environ.get("VAELAB_HOME"):
        return Path(os.environ["VAELAB_HOME"])
    import platformdirs

    return Path(platformdirs.user_data_dir("vaelab"))
