"""Commands that train: ``train`` and ``classify``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ...config import Config
from ...devices import current_world, resolve_device
from ...errors import ConfigError
from .common import (Command, add_config_flags, add_progress_flag, at_least, command,
                     config_from_args, given_settings, names, positive, sizes)


@command("train")
class Train(Command):
    """train a VAE by maximising the ELBO"""

    description = ("Train a VAE. Settings come from the defaults, then --config FILE, then "
                   "flags. Writes a run directory and the samples figure.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML file with [data], [model], [train]")
        p.add_argument("--out", metavar="DIR", help="run directory (default: runs/DATASET-TIME)")
        p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its "
                       "checkpoint (only --epochs and --device may be changed)")
        add_progress_flag(p)
        p.add_argument("--time-limit", type=float, metavar="MINUTES",
                       help="stop after the last epoch that ends within this many minutes (for "
                       "jobs with a wall-clock limit); --resume goes on from there")
        p.add_argument("--tensorboard", action="store_true", help="also log scalars and sample "
                       "grids to RUN/tensorboard (needs: pip install 'vaelab[tensorboard]')")
        add_config_flags(p)

    def run(self, args: argparse.Namespace) -> int:
        from ...training.loop import train
        from ..plots import sample_figures, training_curves

        cfg, run_dir = self._settings(args)
        if args.time_limit is not None:
            positive(args.time_limit, "--time-limit", " minutes")
        result = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                       tensorboard=args.tensorboard,
                       time_limit=None if args.time_limit is None else 60 * args.time_limit)
        if not current_world().main:  # one of several torchrun processes: rank 0 reports
            return 0
        figs = sample_figures(result.model, result.data, run_dir / "figures")
        if result.history:
            figs["curves"] = training_curves(result.history, run_dir / "figures" / "curves.png",
                                             f"{result.data.name}: {run_dir}")
        print(_summary(cfg, result, run_dir, figs))
        return 0

    @staticmethod
    def _settings(args: argparse.Namespace) -> tuple[Config, Path]:
        """The run's config and directory: a resumed run's own, or from the arguments."""
        if args.resume:
            run_dir = Path(args.resume)
            cfg = Config.load(run_dir / "config.toml")
            changed = given_settings(args)
            if args.config or changed - {"epochs", "device"}:
                raise ConfigError("--resume continues a run with its own config.toml; only "
                                  f"--epochs and --device may be given (got {sorted(changed)})")
            try:
                return cfg.override(**{n: getattr(args, n) for n in changed}), run_dir
            except ConfigError as e:  # (e.g. fewer epochs than the run's IWAE tail)
                raise ConfigError(f"{e}. A resumed run takes its other settings from "
                                  f"{run_dir / 'config.toml'}: change them there") from None
        cfg = config_from_args(args)
        run_dir = Path(args.out or f"runs/{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        args.out = str(run_dir)  # named in the message if the run is interrupted
        return cfg, run_dir

    def interrupted(self, args: argparse.Namespace) -> str:
        run = args.resume or args.out or "RUN"
        return (f"\ninterrupted: the last completed epoch is saved; continue with "
                f"`vaelab train --resume {run}`")


def _summary(cfg: Config, result, run_dir: Path, figs: dict) -> str:
    from ...runs.records import best_epoch, selection

    key, words = selection(cfg.train)
    best = best_epoch(result.history, cfg.train)
    lines = []
    if best:
        bpd = best["val_bits_per_dim"]
        extra = [] if key == "val_elbo" else [f"validation ELBO {best['val_elbo']:.3f}"]
        extra.append(f"{bpd:.4f} bits/dim" if bpd is not None else "a density")
        lines.append(f"best {words} {best[key]:.3f} nats at epoch {best['epoch']} "
                     f"({', '.join(extra)})")
    if result.stopped:
        lines.append(f"stopped by --time-limit after epoch {result.history[-1]['epoch']} of "
                     f"{cfg.train.epochs}; continue with: vaelab train --resume {run_dir}")
    lines += [f"run directory: {run_dir}", f"figure: {figs['samples']}",
              f"reconstructions: {figs['reconstructions']}"]
    if "curves" in figs:
        lines.append(f"training curves: {figs['curves']}")
    return "\n".join(lines)


@command("classify")
class Classify(Command):
    """generative vs discriminative classifiers; what the codes know"""

    description = (
        "On a labelled data set: a class-conditional VAE turned into a classifier by Bayes "
        "rule, Gaussian and Bernoulli naive Bayes, logistic regression and an MLP on pixels, "
        "and logistic-regression and 10-NN probes of the codes of a VAE and of an autoencoder "
        "of the same size; each trained on nested class-balanced subsets of the labelled "
        "training images. Prints accuracy, log-loss, calibration error and training time; "
        "writes the data-efficiency curve (PNG, JSON) and the features figure. With --run, "
        "probes that run's VAE; otherwise trains one first. Every model trained here gets "
        "--epochs passes (default: 20, or the run's) and at least --min-steps steps.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", metavar="RUN", help="a trained (unconditional) VAE run; results "
                       "go to RUN/classify.json and RUN/classify/. --epochs (default: the run's) "
                       "is then the budget of the models trained here")
        p.add_argument("--config", metavar="FILE",
                       help="without --run: settings of the VAE to train")
        p.add_argument("--out", metavar="DIR", help="without --run: the run directory of the "
                       "VAE it trains (default: runs/classify-DATASET-TIME)")
        p.add_argument("--models", metavar="M1,M2",
                       help="subset of the classifiers (default: all)")
        p.add_argument("--sizes", metavar="N1,N2", default="100,300,1000,3000,10000,all",
                       help="labelled training examples per fit (default: 100,300,1000,3000,"
                       "10000,all)")
        p.add_argument("--k", type=int, default=16, help="importance samples per class for the "
                       "conditional VAE's log p(x|y) (default 16)")
        p.add_argument("--min-steps", type=int, default=1000, help="fewest optimizer steps of a "
                       "model trained on a small subset (default 1000)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        add_progress_flag(p)
        add_config_flags(p)

    def run(self, args: argparse.Namespace) -> int:
        import json

        from ...data.splits import load_data
        from ...studies.classifiers import CLASSIFIERS, budget_epochs
        from ...training.loop import train
        from ..experiments import classify_run

        subsets = sizes(args.sizes)
        models = names(args.models, CLASSIFIERS)
        at_least(args.k, 1, "--k")
        at_least(args.min_steps, 1, "--min-steps")
        given = given_settings(args)
        cfg = config_from_args(args)  # parses and checks the flags
        epochs = cfg.train.epochs if "epochs" in given else None
        if args.run:
            if args.config or args.out or given - {"epochs", "seed", "device"}:
                raise ConfigError("with --run the data and model come from the run; only "
                                  f"--epochs, --seed and --device may be given (got "
                                  f"{sorted(given)})")
            run = args.run
        else:
            epochs = epochs or (cfg.train.epochs if args.config else 20)
            data = load_data(cfg.data, resolve_device(cfg.train.device))
            data.require_labels("`vaelab classify`")  # before any training
            cfg = cfg.override(epochs=budget_epochs(len(data.train), cfg.train.batch_size,
                                                    epochs, args.min_steps))
            run = Path(args.out or f"runs/classify-{cfg.data.dataset}-"
                       f"{time.strftime('%Y%m%d-%H%M%S')}")
            args.out = str(run)
            train(cfg, run, data=data, progress=not args.no_progress)
        r = classify_run(run, epochs=epochs, min_steps=args.min_steps, k=args.k, sizes=subsets,
                         names=models, seed=cfg.train.seed, device=cfg.train.device,
                         progress=not (args.no_progress or args.json))
        print(json.dumps(r) if args.json else _classify_table(r, run))
        return 0


def _classify_table(r: dict, run) -> str:
    n = r["n_train"]
    lines = [f"{r['dataset']}: {r['n_test']} test images; trained on all {n} labelled images",
             f"  {'classifier':40s} {'kind':14s} {'accuracy':>8s} {'log-loss':>8s} "
             f"{'ECE':>6s} {'train s':>8s}"]
    for row in (x for x in r["rows"] if x["n"] == n):
        ll = "–" if row["log_loss"] is None else f"{row['log_loss']:.4f}"
        lines.append(f"  {row['model']:40s} {row['kind']:14s} {row['accuracy']:8.4f} {ll:>8s} "
                     f"{row['ece']:6.4f} {row['seconds']:8.1f}")
    subsets = sorted({x["n"] for x in r["rows"]})
    lines.append("test accuracy against labelled training examples:")
    lines.append(f"  {'classifier':40s} " + " ".join(f"{s:>7d}" for s in subsets))
    for name in dict.fromkeys(x["model"] for x in r["rows"]):
        acc = {x["n"]: x["accuracy"] for x in r["rows"] if x["model"] == name}
        lines.append(f"  {name:40s} " + " ".join(f"{acc[s]:7.4f}" for s in subsets))
    from ...runs.rundir import workdir

    lines += [f"curve: {r['figures']['efficiency']} (and efficiency.json beside it)",
              f"features: {r['figures']['features']}",
              f"results: {workdir(run) / 'classify.json'} (shown by `vaelab report {run}`)"]
    return "\n".join(lines)
