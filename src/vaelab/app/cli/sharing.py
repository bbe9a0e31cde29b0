"""Commands that share a model: ``export`` and ``push``."""
from __future__ import annotations

import argparse

from .common import Command, command


def _samples_figure(run: str) -> None:
    """Draw the samples figure of a run that has none yet (the card shows it)."""
    from ...data.splits import load_data
    from ...errors import DataError
    from ...runs.rundir import load_run, place, workdir
    from ..plots import sample_figures

    if any((d / "figures" / "samples.png").is_file()
           for d in (place(run).source, place(run).workdir)):
        return
    model, cfg = load_run(run)
    try:
        data = load_data(cfg.data)
    except DataError as e:  # the card goes without the figure
        print(f"note: no samples figure in the card ({e})")
        return
    sample_figures(model, data, workdir(run) / "figures")


@command("export")
class Export(Command):
    """write a run as a model folder in the Hugging Face Hub's conventions, with its card"""

    description = ("Write RUN as a model folder: model.safetensors (the best weights), "
                   "config.toml and config.json, the recorded results and figures, and a "
                   "README.md model card whose YAML metadata holds the test numbers that "
                   "`vaelab evaluate` recorded (nothing that was not measured). Every command "
                   "that takes a RUN takes the folder.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", metavar="RUN", help="run directory (or exported folder, hf://...)")
        p.add_argument("--out", metavar="DIR", required=True, help="the folder to write")
        p.add_argument("--name", metavar="USER/REPO",
                       help="the repository name the card uses (default: the folder's name)")

    def run(self, args: argparse.Namespace) -> int:
        from ...runs.export import export_run

        _samples_figure(args.run)
        out = export_run(args.run, args.out, repo_id=args.name)
        print(f"model folder: {out} (model card: {out / 'README.md'})")
        return 0


@command("push")
class Push(Command):
    """upload a run to the Hugging Face Hub as a model (needs vaelab[hub] and a token)"""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", metavar="RUN", help="run directory")
        p.add_argument("repo", metavar="USER/REPO", help="the model repository (created if "
                       "needed)")
        p.add_argument("--private", action="store_true", help="create it private")

    def run(self, args: argparse.Namespace) -> int:
        from ...runs.export import push_run

        _samples_figure(args.run)
        url = push_run(args.run, args.repo, args.private)
        print(f"uploaded: {url}\nload it with: vaelab sample hf://{args.repo}")
        return 0
