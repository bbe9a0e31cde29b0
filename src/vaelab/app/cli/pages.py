"""Commands that draw and list: ``sample``, ``report``, ``compare``, ``datasets``."""
from __future__ import annotations

import argparse

from ...errors import ConfigError
from .common import Command, add_run_args, at_least, command, load, positive


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
