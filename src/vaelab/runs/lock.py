"""May this process train in this run directory? One trainer at a time (:class:`RunLock`),
and a directory is started afresh or resumed only when its files say so
(:func:`check_run_dir`)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import RunError
from .checkpoint import read_trained_epochs

log = logging.getLogger(__name__)


# what a run that stopped before its first checkpoint can have left (the best weights are
# written before the checkpoint: a disk that fills between the two leaves them alone)
OWN_FILES = {"config.toml", "metrics.jsonl", ".lock", "figures", "tensorboard",
             "model.safetensors"}


def check_run_dir(run_dir: Path, resume: bool, epochs: int) -> None:
    """A new run starts in an empty directory, or in one that holds only what a run that
    died before its first epoch left; a resumed run has its checkpoint and best weights and
    fewer epochs than asked for."""
    done = run_dir / "checkpoint.safetensors"
    if resume:
        if not done.is_file():
            raise RunError(f"cannot resume: {run_dir} has no checkpoint.safetensors (no epoch "
                           f"was finished); start it anew with `vaelab train --out {run_dir}`"
                           " and the same settings")
        if not (run_dir / "model.safetensors").is_file():
            raise RunError(f"cannot resume: {run_dir / 'model.safetensors'} (the best weights "
                           "so far) is missing; restore it, or start a new run")
        trained = read_trained_epochs(run_dir)
        if trained >= epochs:
            raise RunError(f"{run_dir} has trained {trained} epochs already; give --epochs "
                           f"greater than {trained} to train on")
        return
    if not run_dir.exists():
        return
    contents = {p.name for p in run_dir.iterdir()
                if not (p.name.startswith(".") and p.name.endswith(".part"))} - {".lock"}
    if contents and (done.is_file() or not contents <= OWN_FILES):
        raise RunError(f"{run_dir} already exists and is not empty; pass --resume to continue "
                       "that run, or choose another --out")
    if contents:
        log.info("%s holds no finished epoch (a run that stopped before its first): "
                 "starting it anew", run_dir)


class RunLock:
    """An exclusive lock on a run directory while a process trains in it (``RUN/.lock``,
    an advisory ``flock``: the system releases it when the holder dies, however it dies).
    A second trainer is refused with the holder's process id."""

    def __init__(self, run_dir: Path):
        self.path, self.fd = run_dir / ".lock", None

    def __enter__(self) -> "RunLock":
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunError(f"{self.path.parent} is in use: process {holder} is training in it "
                           "(wait for it to finish, or stop it; then --resume)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
