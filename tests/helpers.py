"""What several tests share: the devices a device path is checked on; with real processes
and a real browser, a free port, a server process started until it answers and stopped
with Ctrl-C, a script awaited in Chromium."""
from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

# every device path is checked on the CPU, and on a GPU where there is one
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vaelab_server(args: list, port: int, env: dict | None = None, timeout: float = 300):
    """``python -m vaelab ARGS`` running until 127.0.0.1:``port`` answers HTTP;
    yields the process, stopped with SIGINT (then killed) afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {proc.stderr.read()}")
            try:  # an HTTP answer, not only a connection (the port is bound before loading)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("the server did not start") from None
                time.sleep(0.3)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for(browser, script: str, timeout: float = 60):
    """The first truthy value of ``script`` in the page, or an AssertionError."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")
