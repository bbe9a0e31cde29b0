"""Files and folders written whole or not at all, with the user's umask, and the user's own
vaelab folder. A temporary is always vaelab's own (a random name beside its target, a
folder with a marker file): nothing that vaelab did not create is ever removed."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)
MARKER = ".vaelab-partial"  # in a folder vaelab is writing, until it is renamed into place


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write; on success it is synced and renamed to
    ``target``, on any error (or an interruption) it is removed, so ``target`` is never
    half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; a file of the user's is 0666 - umask
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A new private folder beside ``target`` to fill (a random name, and a marker file);
    on success it takes ``target``'s place (which must not exist, or be an empty folder),
    on any error it is removed. An existing ``target`` is never touched otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
    os.chmod(tmp, 0o777 & ~UMASK)
    (tmp / MARKER).touch()
    try:
        yield tmp
        (tmp / MARKER).unlink()
        if target.is_dir() and not target.is_symlink():
            target.rmdir()  # empty, as checked by the caller; fails (safely) if not
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made above, not yet renamed
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
