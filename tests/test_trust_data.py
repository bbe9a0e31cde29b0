"""Data that is not what it says: files named like MNIST's that are not MNIST, 16-bit
and oversized PNGs, a FIFO among images, a mirror that streams without end."""
from __future__ import annotations

import gzip
import http.server
import os
import struct
import threading
import zlib

import numpy as np
import pytest

from vaelab.config import DataConfig
from vaelab.data.datasets import MNIST
from vaelab.data.fetch import RemoteFile, fetch_file
from vaelab.data.splits import load_data
from vaelab.errors import DataError


def _idx(path, array):
    head = b"\0\0\x08" + bytes([array.ndim]) + np.array(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(head + array.astype(np.uint8).tobytes()))


def _own_files(d, n_train=300, n_test=100):
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    names = {k: f.name for k, f in MNIST.files.items()}
    _idx(d / names["train_images"], rng.integers(0, 256, (n_train, 28, 28)))
    _idx(d / names["train_labels"], rng.integers(3, 6, n_train))  # labels 3, 4, 5
    _idx(d / names["test_images"], rng.integers(0, 256, (n_test, 28, 28)))
    _idx(d / names["test_labels"], rng.integers(3, 6, n_test))
    return d


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_files_named_like_the_published_ones_are_checked(tmp_path, dataset):
    d = _own_files(tmp_path / "mine")
    with pytest.raises(DataError, match="not the .* files.*--dataset idx"):
        load_data(DataConfig(dataset=dataset, data_dir=str(d), download=False))
    assert sorted(p.name for p in d.iterdir()) == sorted(f.name for f in MNIST.files.values())


def test_own_mnist_format_files_train_under_their_own_name(tmp_path):
    d = _own_files(tmp_path / "mine")
    data = load_data(DataConfig(dataset="idx", data_dir=str(d)))
    assert data.name == "idx:mine" and data.classes == ("3", "4", "5")
    assert set(data.test.labels.tolist()) == {0, 1, 2} and data.binarize == "none"


def test_the_real_files_verify_once_and_are_remembered(mnist_t10k, tmp_path, monkeypatch):
    from vaelab.data import datasets

    calls = []
    real = datasets.RemoteFile.verify_file
    monkeypatch.setattr(datasets.RemoteFile, "verify_file",
                        lambda self, p: calls.append(p) or real(self, p))
    remote = MNIST.files["test_images"]
    path = mnist_t10k / remote.name
    assert datasets._verified(remote, path) and datasets._verified(remote, path)
    assert len(calls) == 1


def _png(path, width, height, depth=8, colour=0, data=b""):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    ramp = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)  # up to 63,000
    for i in range(10):
        Image.fromarray(ramp).save(d / f"{i}.png")
    assert Image.open(d / "0.png").mode == "I;16"
    data = load_data(DataConfig(dataset="folder", data_dir=str(d), val_size=0))
    got = data.train.stored().numpy()[0, 0]
    np.testing.assert_array_equal(got, np.round(ramp / 257).astype(np.uint8))
    assert (got == 255).mean() < 0.02  # Pillow's own conversion made 99% of them 255


def test_a_decompression_bomb_is_refused(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _png(d / "bomb.png", 40000, 40000)
    with pytest.raises(DataError, match="too large"):
        load_data(DataConfig(dataset="folder", data_dir=str(d)))


def test_a_fifo_named_like_an_image_is_not_read(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(10):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(d / f"{i}.png")
    os.mkfifo(d / "x.png")
    data = load_data(DataConfig(dataset="folder", data_dir=str(d), val_size=0))
    assert len(data.train) + len(data.test) == 10


class _Endless(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_a_mirror_that_streams_without_end_is_cut_off(tmp_path):
    import resource

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        remote = RemoteFile("x.gz", "0" * 32, max_bytes=32 << 20)
        with pytest.raises(DataError, match="more than the"):
            fetch_file(remote, tmp_path / "dl", [f"http://127.0.0.1:{server.server_address[1]}/"])
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
        assert grown < 16 * 1024  # streamed to disk, not held: far below the 32 MB sent
        assert not list((tmp_path / "dl").glob("*"))  # no partial file left
    finally:
        server.shutdown()
        server.server_close()
