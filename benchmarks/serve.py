"""Latency and throughput of `vaelab serve`, end to end, against the real server.

    python benchmarks/serve.py RUN [RUN ...] [--requests 200] [--clients 1,8,32]

Starts `vaelab serve RUN` (uvicorn) on 127.0.0.1 in its own process, then for each
endpoint sends --requests requests one after another from this process (httpx, a kept-alive
connection) and prints p50 and p99 of the wall-clock time per request; then the decode of
one code from N concurrent clients (threads, each with its own connection): requests per
second, p50 and p99, and the number of errors.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def start(run: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "-q", "serve", run, "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/api/runs", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read().decode()}")


def timed(client: httpx.Client, method: str, url: str, body) -> float:
    t0 = time.perf_counter()
    r = client.request(method, url, json=body, timeout=120)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return dt


def pct(ms: list[float]) -> str:
    a = np.array(ms) * 1000
    return f"{np.percentile(a, 50):8.1f} {np.percentile(a, 99):8.1f}"


def bench(run: str, requests: int, clients: list[int]) -> None:
    proc, url = start(run)
    try:
        info = httpx.get(url + "/api/runs").json()["runs"][0]
        name, L = info["name"], info["latent_dim"]
        ex = httpx.get(url + "/api/examples", params={"run": name}).json()["pixels"]
        rng = np.random.default_rng(0)
        cases = {
            "decode one code (a slider, the map)": lambda: ("POST", "/api/decode", {
                "run": name, "z": [rng.normal(size=L).round(3).tolist()]}),
            "imagine 100 (mean + sample grids)": lambda: ("POST", "/api/imagine", {
                "run": name, "n": 100, "seed": int(rng.integers(1 << 30))}),
            "encode a drawing (q, recon, ELBO, log p(x) k=256)": lambda: ("POST", "/api/encode", {
                "run": name, "pixels": ex[int(rng.integers(len(ex)))]}),
            "interpolate 10": lambda: ("POST", "/api/interpolate", {"run": name}),
        }
        print(f"\n## {run}: {info['data']}, latent {L}, {info['likelihood']}\n")
        print(f"{'endpoint':52s} {'p50 ms':>8s} {'p99 ms':>8s}")
        with httpx.Client(base_url=url) as c:
            for what, make in cases.items():
                for _ in range(5):  # warm up
                    timed(c, *make())
                n = requests if "encode" not in what else max(20, requests // 5)
                print(f"{what:52s} {pct([timed(c, *make()) for _ in range(n)])}")
        print(f"\n{'concurrent clients (decode one code)':40s} {'req/s':>8s} {'p50 ms':>8s} "
              f"{'p99 ms':>8s} {'errors':>7s}")
        for k in clients:
            def worker(i, per=max(10, requests // k)):
                out, errors = [], 0
                with httpx.Client() as c:
                    for _ in range(per):
                        try:
                            out.append(timed(c, "POST", url + "/api/decode",
                                             {"run": name, "z": [[i / k] * L]}))
                        except httpx.HTTPError:
                            errors += 1
                return out, errors

            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(k) as pool:
                res = list(pool.map(worker, range(k)))
            wall = time.perf_counter() - t0
            times = [t for r, _ in res for t in r]
            errors = sum(e for _, e in res)
            print(f"{k:40d} {len(times) / wall:8.0f} {pct(times)} {errors:7d}")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", default="1,8,32")
    a = p.parse_args()
    for run in a.runs:
        bench(str(Path(run)), a.requests, [int(c) for c in a.clients.split(",")])


if __name__ == "__main__":
    main()
