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
    # one thread count for every run of a test, however busy the machine is meanwhile
    # (vaelab fits its threads to the idle cores where OMP_NUM_THREADS is not set; the
    # tests of that unset it themselves): runs compared bit for bit stay comparable
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
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


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through WebDriver, for the pages vaelab writes and serves. Skipped
    where Chromium is missing, except in CI (`.ci/run` installs Debian's chromium and
    chromium-driver)."""
    import os
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        msg = "needs chromium, chromedriver and selenium (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking"):
        opts.add_argument(arg)
    b = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=opts)
    yield b
    b.quit()
