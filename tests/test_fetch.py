"""The download path against a real HTTP server on 127.0.0.1, with the real MNIST files."""
import gzip

import pytest

from vaelab.data.datasets import MNIST
from vaelab.data.fetch import fetch_file
from vaelab.data.idx import read_idx
from vaelab.errors import DataError

NAME = "t10k-labels-idx1-ubyte.gz"
REMOTE = MNIST.files["test_labels"]


def serve(www, sub, data):
    (www / sub).mkdir(exist_ok=True)
    (www / sub / NAME).write_bytes(data)
    return sub


def leftovers(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_good_copy_is_downloaded_and_verified(http_root, mnist_t10k, tmp_path):
    www, url = http_root
    serve(www, "good", (mnist_t10k / NAME).read_bytes())
    dest = tmp_path / "cache"
    path = fetch_file(REMOTE, dest, [f"{url}/good/"])
    assert path == dest / NAME and leftovers(dest) == [NAME]
    assert read_idx(path)[:3].tolist() == [7, 2, 1]


def test_corrupted_mirror_falls_back_to_the_next(http_root, mnist_t10k, tmp_path):
    www, url = http_root
    good = (mnist_t10k / NAME).read_bytes()
    serve(www, "bad", good[:-100] + bytes(100))
    serve(www, "good", good)
    dest = tmp_path / "cache"
    mirrors = [f"{url}/missing/", f"{url}/bad/", f"{url}/good/"]
    assert fetch_file(REMOTE, dest, mirrors).read_bytes() == good


def test_checksum_mismatch_raises_and_leaves_no_file(http_root, mnist_t10k, tmp_path):
    www, url = http_root
    raw = gzip.decompress((mnist_t10k / NAME).read_bytes())
    corrupted = gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 256]))  # one label changed
    serve(www, "bad", corrupted)
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match=r"(?s)could not download .*checksum mismatch.*HTTP 404"):
        fetch_file(REMOTE, dest, [f"{url}/bad/", f"{url}/missing/"], retries=1)
    assert leftovers(dest) == []


def test_recompressed_copy_passes_on_content(http_root, mnist_t10k, tmp_path):
    www, url = http_root
    raw = gzip.decompress((mnist_t10k / NAME).read_bytes())
    serve(www, "re", gzip.compress(raw, compresslevel=1))
    path = fetch_file(REMOTE, tmp_path, [f"{url}/re/"])
    assert gzip.decompress(path.read_bytes()) == raw


def test_whole_dataset_fetch_via_env_mirror(http_root, mnist_t10k, tmp_path, monkeypatch):
    """``IdxDataset.fetch`` downloads each missing file; $VAELAB_MIRRORS comes first."""
    www, url = http_root
    for f in mnist_t10k.iterdir():
        (www / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("VAELAB_MIRRORS", url)
    test_only = type(MNIST)(MNIST.name, {k: v for k, v in MNIST.files.items()
                                         if k.startswith("test")}, ("http://127.0.0.1:9/",),
                            MNIST.classes)
    paths = test_only.fetch(str(tmp_path))
    assert paths["test_images"] == tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    assert read_idx(paths["test_images"]).shape == (10000, 28, 28)
    assert test_only.locate(str(tmp_path)) == paths  # found next time, no download
