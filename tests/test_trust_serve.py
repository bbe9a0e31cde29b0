"""`vaelab serve` under hostile clients, against a real uvicorn process: bodies streamed
past the limit, heads over the limit, hundreds of idle or trickling connections, a port
that is taken."""
from __future__ import annotations

import select
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import vaelab  # noqa: E402
from vaelab.app.guard import HEAD_SECONDS, MAX_BODY  # noqa: E402
from helpers import free_port, vaelab_server  # noqa: E402
from vaelab.config import Config  # noqa: E402

pytestmark = pytest.mark.slow  # a server process, hundreds of connections


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("guard") / "run"
    vaelab.train(Config().override(epochs=1, hidden=(32,), latent_dim=2), d, progress=False)
    return d


@pytest.fixture(scope="module")
def server(run):
    port = free_port()
    with vaelab_server(["serve", run, "--port", port], port) as proc:
        yield port, proc


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1") else 0


@pytest.mark.parametrize("total_mb", [5, 300])
def test_a_chunked_body_over_the_limit_is_refused_at_the_limit(server, total_mb):
    port, proc = server
    before = _rss_mb(proc.pid)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % (1 << 16) + b"[" * (1 << 16) + b"\r\n"
    sent, closed = 0, False
    try:
        while sent < total_mb << 20:
            sock.sendall(chunk)
            sent += 1 << 16
            if select.select([sock], [], [], 0)[0]:
                break  # answered while sending: the rest is never read
    except (BrokenPipeError, ConnectionResetError):
        closed = True  # answered and closed
    assert sent < MAX_BODY + (32 << 20), "the server read far past the limit"
    if not closed:
        assert select.select([sock], [], [], 10)[0], "no answer"
        try:
            assert _status(sock) == 413
        except ConnectionResetError:
            pass  # answered and closed before the answer was read here
    sock.close()
    assert _rss_mb(proc.pid) - before < 50
    assert httpx.get(f"http://127.0.0.1:{port}/api/runs").status_code == 200


def test_a_head_over_the_limit_is_refused(server):
    port, _ = server
    # refused on the head: answered 400/431 and closed; a client still writing its 64 KiB
    # head can see the closed connection's reset before it reads that answer (seen once in
    # a full suite under load), which is a refusal too. It must not be served, and the
    # server must stay up.
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/runs", headers={"x-big": "a" * (64 << 10)})
        assert r.status_code in (400, 431)
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        pass
    assert httpx.get(f"http://127.0.0.1:{port}/api/runs").status_code == 200


def test_idle_and_trickling_connections_neither_lock_out_clients_nor_stay(server):
    port, _ = server
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    trickle = socket.create_connection(("127.0.0.1", port))
    t0 = time.time()
    try:
        for _ in range(3):  # normal clients are answered while the 300 are held
            start = time.time()
            assert httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=10).status_code == 200
            assert time.time() - start < 2.0
        head = b"GET /api/runs HTTP/1.1\r\nHost: x\r\n"
        closed_at = None
        for i in range(int(HEAD_SECONDS) + 10):  # one byte a second: closed at the deadline
            try:
                trickle.sendall(head[i % len(head):i % len(head) + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.time() - t0
                break
            if select.select([trickle], [], [], 1.0)[0] and trickle.recv(1) == b"":
                closed_at = time.time() - t0
                break
        assert closed_at is not None and closed_at < HEAD_SECONDS + 5
        for s in idle:  # the idle ones were closed by the server too
            s.settimeout(5)
            assert s.recv(1) == b""
    finally:
        for s in idle + [trickle]:
            s.close()
    assert httpx.get(f"http://127.0.0.1:{port}/api/runs").status_code == 200


def test_a_port_in_use_is_a_clear_error_before_anything_is_announced(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "vaelab", "serve", str(run), "--port",
                            str(port)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "port" in p.stderr and "--port" in p.stderr, p.stderr
    assert "open http" not in p.stdout and "Traceback" not in p.stderr
