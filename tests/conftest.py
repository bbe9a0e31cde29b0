import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
MNIST_T10K = SHARED / "mnist-t10k"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path_factory):
    """No test reads the user's data cache or mirrors, or writes outside tmp."""
    monkeypatch.delenv("VAELAB_MIRRORS", raising=False)
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("VAELAB_HOME", str(tmp_path_factory.mktemp("home")))
    torch.manual_seed(0)


@pytest.fixture
def mnist_t10k() -> Path:
    if not (MNIST_T10K / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the MNIST test files are not at {MNIST_T10K}")
    return MNIST_T10K


@pytest.fixture
def fashion_dir() -> Path:
    if not (FASHION_DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not at {FASHION_DEBIAN} "
                    "(apt-get install dataset-fashion-mnist)")
    return FASHION_DEBIAN


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (root dir, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
