"""The data sets as they are on disk: IDX files, MNIST and Fashion-MNIST (found or
downloaded and verified), scikit-learn's digits, and folders of images (decoded once and
kept). Each is a registered factory ``DataConfig -> RawData``: uint8 images
``(N, C, H, W)`` and labels, a training and a test part; :mod:`vaelab.data.splits` splits,
binarizes and places them."""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..files import atomic_write
from ..registry import Registry
from .fetch import RemoteFile, fetch_file, mirrors_from_env
from .idx import read_idx_pair

log = logging.getLogger(__name__)

@dataclass
class RawData:
    """A data set as loaded from disk: uint8 images ``(N, C, H, W)`` with values in
    ``[0, max_value]``, integer labels (or None), before splitting and binarization."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None
    max_value: int = 255
    classes: tuple[str, ...] | None = None
    default_val_size: int | None = None
    default_binarize: str = "none"


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-like data set distributed as four IDX files."""

    name: str
    files: dict[str, RemoteFile]  # train_images, train_labels, test_images, test_labels
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()

    def search_dirs(self, data_dir: str | None) -> list[Path]:
        """Where the files are looked for, in order."""
        roots = [Path(data_dir)] if data_dir else []
        if os.environ.get("VAELAB_DATA"):
            roots.append(Path(os.environ["VAELAB_DATA"]))
        roots.append(cache_dir())
        dirs = [d for r in roots for d in (r / self.name, r)]
        return dirs + [Path(d) for d in self.system_dirs]

    def download_dir(self, data_dir: str | None) -> Path:
        root = data_dir or os.environ.get("VAELAB_DATA") or cache_dir()
        return Path(root) / self.name

    def locate(self, data_dir: str | None) -> dict[str, Path] | None:
        """The first directory that holds the four files, which must verify (MD5, checked
        once and remembered by size and modification time). Files of these names that are
        not this data set's are a DataError, even if a later directory has the real ones:
        they are never trained on, never passed over in silence, and never replaced."""
        for d in self.search_dirs(data_dir):
            found = {k: _find(d, f.name) for k, f in self.files.items()}
            if all(found.values()):
                wrong = [p for k, p in found.items() if not _verified(self.files[k], p)]
                if wrong:
                    raise DataError(
                        f"{', '.join(map(str, wrong))}: not the {self.name} files (their MD5 "
                        "differs from the published one). If they are your own data in the "
                        f"MNIST format, train on them with --dataset idx --data-dir {d}; "
                        "otherwise remove them and vaelab finds or downloads the real ones")
                return found  # type: ignore[return-value]
        return None

    def where(self, data_dir: str | None = None) -> str:
        """Where the files are, or where they will be downloaded to."""
        found = self.locate(data_dir)
        if found:
            return f"found in {next(iter(found.values())).parent}"
        return (f"not found; `vaelab train --dataset {self.name}` downloads it to "
                f"{self.download_dir(data_dir)}")

    def fetch(self, data_dir: str | None, download: bool = True,
              mirrors: tuple[str, ...] | None = None) -> dict[str, Path]:
        found = self.locate(data_dir)
        if found:
            return found
        names = ", ".join(f.name for f in self.files.values())
        where = "\n  ".join(str(d) for d in self.search_dirs(data_dir))
        if not download:
            raise DataError(f"{self.name} not found. Put the files {names} in one of:\n  {where}")
        dest = self.download_dir(data_dir)
        mirrors = mirrors if mirrors is not None else mirrors_from_env() + self.mirrors
        try:
            return {k: fetch_file(f, dest, mirrors) for k, f in self.files.items()}
        except DataError as e:
            raise DataError(f"{e}\nIf this machine is offline, copy the files {names} into one "
                            f"of:\n  {where}\nor pass --data-dir DIR.") from None

    def __call__(self, cfg: DataConfig) -> RawData:
        paths = self.fetch(cfg.data_dir, cfg.download)
        xtr, ytr = read_idx_pair(paths["train_images"], paths["train_labels"])
        xte, yte = read_idx_pair(paths["test_images"], paths["test_labels"])
        return RawData(self.name, xtr, ytr, xte, yte, 255, self.classes, default_val_size=10_000,
                       default_binarize="dynamic")


def _verified(remote: RemoteFile, path: Path) -> bool:
    """Whether ``path`` is ``remote`` by its MD5; the answer is remembered (in the cache
    directory, by path, size and modification time), so a file is read once."""
    import json

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{remote.md5}"
    memo = cache_dir() / "verified.json"
    try:
        known = json.loads(memo.read_text()) if memo.is_file() else {}
    except ValueError:
        known = {}
    if key in known:
        return known[key]
    ok = remote.verify_file(path)
    known[key] = ok
    try:
        atomic_write(memo, json.dumps(known).encode())
    except OSError:  # a read-only cache: verify again next time
        pass
    return ok


def _find(directory: Path, gz_name: str) -> Path | None:
    for name in (gz_name, gz_name.removesuffix(".gz")):
        if (directory / name).is_file():
            return directory / name
    return None


def cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("vaelab"))


DATASETS: Registry[Callable[[DataConfig], RawData]] = Registry("data set")

MNIST = DATASETS.register("mnist")(IdxDataset(
    "mnist",
    {"train_images": RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
     "train_labels": RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
     "test_images": RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                               "2646ac647ad5339dbf082846283269ea"),
     "test_labels": RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                               "27ae3e4e09519cfbb04c329615203637")},
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    classes=tuple(str(i) for i in range(10)),
))

FASHION_MNIST = DATASETS.register("fashion-mnist")(IdxDataset(
    "fashion-mnist",
    {"train_images": RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
     "train_labels": RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                                "9018921c3c673c538a1fc5bad174d6f9"),
     "test_images": RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                               "8181f5470baa50b63fa0f6fddb340f0a"),
     "test_labels": RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                               "15d484375f8d13e6eb1aabb0c3f46965")},
    mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
             "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
))

TEST_FRACTION = 0.2  # held-out test share for data sets without an official test split


def _holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training and of the test part: a seeded ``fraction`` of ``n`` is held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(fraction * n))
    return perm[n_test:], perm[:n_test]


class LocalDataset:
    """A data set read from where it is (no download): ``load(cfg)`` and where it lives."""

    def __init__(self, load: Callable[[DataConfig], RawData], where: str):
        self.load, self._where = load, where
        self.__doc__ = load.__doc__

    def __call__(self, cfg: DataConfig) -> RawData:
        return self.load(cfg)

    def where(self, data_dir: str | None = None) -> str:
        return self._where


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' images (1797, 8, 8) and labels, read from the CSV file that scikit-learn
    bundles without importing scikit-learn (2-3 s, a twentieth of the Quick start's run);
    through ``sklearn.datasets.load_digits`` where that file is not where it was."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
        try:
            table = np.loadtxt(path, delimiter=",")
        except (OSError, ValueError):
            table = None
        if table is not None and table.shape == (1797, 65):
            return table[:, :64].reshape(-1, 8, 8), table[:, 64]
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def digits(cfg: DataConfig) -> RawData:
    """scikit-learn's 1,797 handwritten 8x8 digits (17 grey levels, 0..16); fully offline.
    A fixed 20% (seed 0) is the test set."""
    images, target = _digits_arrays()
    x = images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8) in 0..16
    y = target.astype(np.int64)
    train, test = _holdout(len(x), TEST_FRACTION, seed=0)
    return RawData("digits", x[train], y[train], x[test], y[test], max_value=16,
                   classes=tuple(str(i) for i in range(10)))


DATASETS.register("digits")(LocalDataset(
    digits, "bundled with scikit-learn (offline, 1,797 8x8 images)"))

def own_idx(cfg: DataConfig) -> RawData:
    """Your own data in the MNIST format: the four IDX files under MNIST's names
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-...``, raw or
    ``.gz``) in ``--data-dir``. They are yours, so nothing is checksummed; the labels are
    mapped to classes in sorted order; grey values (no binarization) unless asked."""
    if not cfg.data_dir:
        raise DataError("the idx data set needs --data-dir DIR holding the four IDX files "
                        f"({', '.join(f.name for f in MNIST.files.values())}, or uncompressed)")
    d = Path(cfg.data_dir)
    found = {k: _find(d, f.name) for k, f in MNIST.files.items()}
    missing = [MNIST.files[k].name for k, p in found.items() if p is None]
    if missing:
        raise DataError(f"{d} lacks {', '.join(missing)} (or their uncompressed forms)")
    xtr, ytr = read_idx_pair(found["train_images"], found["train_labels"])
    xte, yte = read_idx_pair(found["test_images"], found["test_labels"])
    values = np.union1d(np.unique(ytr), np.unique(yte))
    return RawData(f"idx:{d.resolve().name}", xtr, np.searchsorted(values, ytr), xte,
                   np.searchsorted(values, yte), 255, tuple(str(v) for v in values))


DATASETS.register("idx")(LocalDataset(
    own_idx, "your own MNIST-format files: --dataset idx --data-dir DIR"))
