"""Commands that serve a page: ``serve`` (and the server flags ``lecture --serve`` shares)."""
from __future__ import annotations

import argparse
from typing import Callable

from ...errors import ConfigError
from .common import Command, add_data_dir_flag, command


def add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def open_server(args: argparse.Namespace) -> tuple[object, Callable]:
    """The port taken, before anything is loaded (a taken port is refused first), and what
    prints the page's address once the server answers."""
    try:
        from ..serve import listen
    except ImportError:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install "
                          "'vaelab[serve]'") from None
    sock = listen(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host

    def ready(server) -> None:
        print(f"open http://{host}:{args.port}/  (Ctrl-C stops)", flush=True)

    return sock, ready


@command("serve")
class Serve(Command):
    """explore runs live in the browser: imagination, the latent map, sliders, your drawing"""

    description = ("Serve one page for exploring runs: z ~ p(z) at a temperature with E[x|z] "
                   "and x ~ p(x|z) side by side; the latent map (the plane itself for a 2-D "
                   "latent, else the principal plane of the test codes) decoded under the "
                   "cursor; a slider per latent dimension, the most informative first; an "
                   "image drawn or dropped -> q(z|x), its reconstruction, -ELBO and log p(x) "
                   "(for a conditional run p(y|x)); interpolations; for a 2-D latent the "
                   "true posterior beside q(z|x). Needs: pip install 'vaelab[serve]'.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("runs", metavar="RUN", nargs="+",
                       help="run directories, exported folders or hf://USER/REPO")
        add_server_flags(p)
        p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
        add_data_dir_flag(p)

    def run(self, args: argparse.Namespace) -> int:
        from ...devices import resolve_device

        sock, ready = open_server(args)
        from ..serve import create_app, explorers, run_server

        device = resolve_device(args.device)
        print(f"loading {len(args.runs)} run(s) ...", flush=True)
        runs = explorers(args.runs, str(device), args.data_dir)
        run_server(create_app(runs), sock, args.host, ready)
        return 0

    def interrupted(self, args: argparse.Namespace) -> str:
        return "\nstopped"
