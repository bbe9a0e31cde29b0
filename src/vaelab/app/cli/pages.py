"""Commands that draw and list: ``sample``, ``report``, ``compare``, ``datasets``,
``lecture``."""
from __future__ import annotations

import argparse
import time

from ...errors import ConfigError
from .common import (Command, add_data_dir_flag, add_progress_flag, add_run_args, at_least,
                     command, load, positive)
from .serving import add_server_flags, open_server


@command("sample")
class Sample(Command):
    """write the Data / Mean samples / Samples figure"""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run_args(p)
        p.add_argument("--out", metavar="PNG",
                       help="figure path (default: RUN/figures/samples.png)")
        p.add_argument("--n", type=int, default=100,
                       help="images per grid (default: 100 = 10x10)")
        p.add_argument("--temperature", type=float, default=1.0,
                       help="scale of the prior's standard deviation (default: 1)")

    def run(self, args: argparse.Namespace) -> int:
        from ...runs.rundir import workdir
        from ..plots import sample_figures

        at_least(args.n, 1, "--n")
        positive(args.temperature, "--temperature")
        model, cfg, data = load(args)
        figs = sample_figures(model, data, workdir(args.run) / "figures", args.n, args.temperature,
                              args.seed, samples_path=args.out)
        print(f"figure: {figs['samples']}")
        print(f"reconstructions: {figs['reconstructions']}")
        return 0


@command("report")
class Report(Command):
    """one self-contained HTML page with a run's figures and results"""

    description = ("Write RUN/report/index.html: the samples figure, reconstructions, "
                   "interpolations, latent traversals, the latent space, training curves and "
                   "the results of evaluate, baselines and classify (images embedded; the PNGs "
                   "are written beside it).")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run_args(p)
        p.add_argument("--out", metavar="HTML", help="default: RUN/report/index.html")

    def run(self, args: argparse.Namespace) -> int:
        from ..report import write_report

        out = write_report(args.run, args.out, device=args.device, which=args.which,
                           seed=args.seed, data_dir=args.data_dir)
        print(f"report: {out}")
        return 0


@command("compare")
class Compare(Command):
    """one HTML page with several runs side by side"""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run_args(p, runs=True)
        p.add_argument("--out", metavar="HTML", default="compare.html",
                       help="default: compare.html")

    def run(self, args: argparse.Namespace) -> int:
        from ..report import write_comparison

        if len(set(args.runs)) < 2:
            raise ConfigError("compare needs at least two different run directories")
        out = write_comparison(args.runs, args.out, device=args.device, which=args.which,
                               seed=args.seed, data_dir=args.data_dir)
        print(f"comparison: {out}")
        return 0


@command("datasets")
class Datasets(Command):
    """list the data sets and where their files are"""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", metavar="DIR", help="also look here")

    def run(self, args: argparse.Namespace) -> int:
        from ...data.datasets import DATASETS

        for name, ds in DATASETS.items():
            print(f"{name:14s} {ds.where(args.data_dir)}")
        return 0


@command("lecture")
class Lecture(Command):
    """the lecture on VAEs as one page, computed on your models"""

    description = (
        "Write one self-contained page that walks the lecture from maximum likelihood to "
        "imagination (sections: mle, bayes, gen-disc, autoencoder, compress, vae, learning, "
        "imagination, results), each idea computed on your models. With no RUN it trains "
        "what it needs on the bundled digits (a VAE, the same with a 2-D latent, an "
        "autoencoder; cached, so a second call is quick); with RUNs it uses them in their "
        "roles and trains only what is missing. --serve: the page live, its controls "
        "answered by the models (needs vaelab[serve]).")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("runs", metavar="RUN", nargs="*",
                       help="a VAE, a 2-D latent VAE and/or an autoencoder run (or hf://)")
        p.add_argument("--out", metavar="DIR", default="lecture",
                       help="where index.html goes (default: ./lecture)")
        p.add_argument("--k", type=int, default=1000,
                       help="importance samples for the VAE's log p(x) (default 1000)")
        p.add_argument("--serve", action="store_true", help="serve the page live")
        add_server_flags(p)
        p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu")
        p.add_argument("--seed", type=int, default=0)
        add_data_dir_flag(p)
        add_progress_flag(p)

    def run(self, args: argparse.Namespace) -> int:
        from ..lecture import describe, prepare, serve_lecture, write_lecture

        at_least(args.k, 1, "--k")
        # the port first: nothing is trained for a server that cannot start
        sock, ready = open_server(args) if args.serve else (None, None)
        t0 = time.perf_counter()
        lec = prepare(args.runs, args.device, not args.no_progress, args.data_dir)
        path = write_lecture(lec, args.out, args.k, args.seed, live=sock is not None)
        print(describe(lec))
        print(f"lecture: {path} ({time.perf_counter() - t0:.0f} s)")
        if sock is not None:
            serve_lecture(lec, sock, args.host, ready)
        return 0

    def interrupted(self, args: argparse.Namespace) -> str:
        return "\nstopped"
