"""Command line: ``vaelab train | sample | evaluate | posterior | baselines | report | compare
| datasets``. The only argv parser."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import typing
from pathlib import Path

from .config import Config, ConfigError, field_specs
from .distributed import current_world, join, leave

log = logging.getLogger("vaelab")


def _registries() -> dict[str, list[str]]:
    from .datasets import DATASETS
    from .distributions import LIKELIHOODS, PRIORS
    from .nets import ACTIVATIONS, NETS

    return {"dataset": DATASETS.names(), "likelihood": ["auto", *LIKELIHOODS.names()],
            "net": NETS.names(),
            "prior": PRIORS.names(), "activation": ACTIVATIONS.names()}


def _add_config_flags(p: argparse.ArgumentParser,
                      sections: tuple[str, ...] = ("data", "model", "train")) -> None:
    """One flag per config field (``latent_dim`` -> ``--latent-dim``); unset flags are None."""
    choices = _registries()
    groups = {sec: p.add_argument_group(f"[{sec}] settings") for sec in sections}
    for sec, name, tp, f in field_specs():
        if sec not in sections:
            continue
        flag = "--" + name.replace("_", "-")
        meta = dict(f.metadata)
        ch = choices.get(name) or meta.get("choices")
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        help_ = meta.get("help", "") + ("" if default is None else f" (default: {default})")
        if tp is bool:
            groups[sec].add_argument(flag, dest=name, default=None,
                                     action=argparse.BooleanOptionalAction, help=help_)
            continue
        kw: dict = {"dest": name, "default": None, "help": help_, "metavar": name.upper()}
        if ch:
            kw["choices"] = [str(c) for c in ch]
            kw["metavar"] = "{" + ",".join(map(str, ch)) + "}"
        if typing.get_origin(tp) is tuple:
            kw["metavar"] = "W1,W2,..."
        groups[sec].add_argument(flag, **kw)


def _config_from_args(args: argparse.Namespace) -> Config:
    cfg = Config.load(args.config) if getattr(args, "config", None) else Config()
    given = {name: getattr(args, name) for _, name, _, _ in field_specs()
             if getattr(args, name, None) is not None}
    return cfg.override(**given)


def _add_run_args(p: argparse.ArgumentParser, runs: bool = False) -> None:
    """The arguments of every command that reads a run directory (``runs``: several)."""
    if runs:
        p.add_argument("runs", metavar="RUN", nargs="+", help="run directories")
    else:
        p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--which", choices=["best", "last"], default="best",
                   help="checkpoint: best (the best validation score of the trained "
                   "objective, the default) or last")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")


def _add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (--json implies it where a command has it)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaelab", description="Variational autoencoders: train, sample, evaluate.")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a VAE by maximising the ELBO",
                       description="Train a VAE. Settings come from the defaults, then --config "
                       "FILE, then flags. Writes a run directory and the samples figure.")
    t.add_argument("--config", metavar="FILE", help="TOML file with [data], [model], [train]")
    t.add_argument("--out", metavar="DIR", help="run directory (default: runs/DATASET-TIME)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its checkpoint "
                   "(only --epochs and --device may be changed)")
    _add_progress_flag(t)
    t.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after the last epoch that ends within this many minutes (for "
                   "jobs with a wall-clock limit); --resume goes on from there")
    t.add_argument("--tensorboard", action="store_true", help="also log scalars and sample "
                   "grids to RUN/tensorboard (needs: pip install 'vaelab[tensorboard]')")
    _add_config_flags(t)

    s = sub.add_parser("sample", help="write the Data / Mean samples / Samples figure")
    _add_run_args(s)
    s.add_argument("--out", metavar="PNG", help="figure path (default: RUN/figures/samples.png)")
    s.add_argument("--n", type=int, default=100, help="images per grid (default: 100 = 10x10)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the prior's standard deviation (default: 1)")

    e = sub.add_parser("evaluate", help="test-set ELBO, reconstruction, KL and bits/dim")
    _add_run_args(e)
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--k", type=int, default=0, metavar="K",
                   help="importance samples for log p(x) (the literature uses 5000; "
                   "default 0: ELBO only)")
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    _add_progress_flag(e)

    po = sub.add_parser("posterior", help="2-D latent: exact log p(x) and p(z|x) beside q(z|x)",
                        description="For a model with a 2-D latent: the true posterior "
                        "p(z|x) = p(x|z) p(z) / p(x) by Bayes rule on a grid, the exact log p(x) "
                        "by numerical integration, drawn beside the encoder's q(z|x).")
    _add_run_args(po)
    po.add_argument("--n", type=int, default=6, help="test images (default 6)")
    po.add_argument("--out", metavar="PNG", help="default: RUN/figures/posterior.png")
    po.add_argument("--json", action="store_true", help="print one JSON object")

    b = sub.add_parser("baselines", help="the lecture's MLE density models: test NLL",
                       description="Fit factorized Bernoulli and Gaussian models, a mixture of "
                       "Bernoullis (EM) and probabilistic PCA by maximum likelihood on the "
                       "training split; print the test NLL in nats and bits/dim, in the same "
                       "protocol as `vaelab evaluate`.")
    b.add_argument("--config", metavar="FILE", help="take the [data] settings from this TOML")
    b.add_argument("--run", metavar="RUN", help="take the [data] settings from this run and "
                   "record the table in RUN/baselines.json (shown by `vaelab report`)")
    b.add_argument("--models", metavar="M1,M2", help="subset of: bernoulli, gaussian, mixture, "
                   "ppca (default: all that fit the data)")
    b.add_argument("--components", type=int, default=50, help="mixture components (default 50)")
    b.add_argument("--em-iterations", type=int, default=100, help="EM iterations (default 100)")
    b.add_argument("--ppca-dim", type=int, default=50, help="PPCA latent dimension (default 50)")
    b.add_argument("--split", choices=["train", "val", "test"], default="test")
    b.add_argument("--json", action="store_true", help="print a JSON list")
    _add_progress_flag(b)
    _add_config_flags(b, ("data",))

    cl = sub.add_parser(
        "classify", help="generative vs discriminative classifiers; what the codes know",
        description="On a labelled data set: a class-conditional VAE turned into a classifier "
        "by Bayes rule, Gaussian and Bernoulli naive Bayes, logistic regression and an MLP on "
        "pixels, and logistic-regression and 10-NN probes of the codes of a VAE and of an "
        "autoencoder of the same size; each trained on nested class-balanced subsets of the "
        "labelled training images. Prints accuracy, log-loss, calibration error and training "
        "time; writes the data-efficiency curve (PNG, JSON) and the features figure. With "
        "--run, probes that run's VAE; otherwise trains one first. Every model trained here "
        "gets --epochs passes (default: 20, or the run's) and at least --min-steps steps.")
    cl.add_argument("--run", metavar="RUN", help="a trained (unconditional) VAE run; results "
                    "go to RUN/classify.json and RUN/classify/. --epochs (default: the run's) "
                    "is then the budget of the models trained here")
    cl.add_argument("--config", metavar="FILE", help="without --run: settings of the VAE to train")
    cl.add_argument("--out", metavar="DIR", help="without --run: the run directory of the VAE "
                    "it trains (default: runs/classify-DATASET-TIME)")
    cl.add_argument("--models", metavar="M1,M2", help="subset of the classifiers (default: all)")
    cl.add_argument("--sizes", metavar="N1,N2", default="100,300,1000,3000,10000,all",
                    help="labelled training examples per fit (default: 100,300,1000,3000,"
                    "10000,all)")
    cl.add_argument("--k", type=int, default=16, help="importance samples per class for the "
                    "conditional VAE's log p(x|y) (default 16)")
    cl.add_argument("--min-steps", type=int, default=1000, help="fewest optimizer steps of a "
                    "model trained on a small subset (default 1000)")
    cl.add_argument("--json", action="store_true", help="print one JSON object")
    _add_progress_flag(cl)
    _add_config_flags(cl)

    r = sub.add_parser("report", help="one self-contained HTML page with a run's figures "
                       "and results", description="Write RUN/report/index.html: the samples "
                       "figure, reconstructions, interpolations, latent traversals, the latent "
                       "space, training curves and the results of evaluate, baselines and "
                       "classify (images embedded; the PNGs are written beside it).")
    _add_run_args(r)
    r.add_argument("--out", metavar="HTML", help="default: RUN/report/index.html")

    c = sub.add_parser("compare", help="one HTML page with several runs side by side")
    _add_run_args(c, runs=True)
    c.add_argument("--out", metavar="HTML", default="compare.html",
                   help="default: compare.html")

    d = sub.add_parser("datasets", help="list the data sets and where their files are")
    d.add_argument("--data-dir", metavar="DIR", help="also look here")
    return p


# ---------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .plots import sample_figures, training_curves
    from .train import best_epoch, selection, train

    if args.resume:
        run_dir = Path(args.resume)
        cfg = Config.load(run_dir / "config.toml")
        changed = {n for _, n, _, _ in field_specs() if getattr(args, n) is not None}
        if args.config or changed - {"epochs", "device"}:
            raise ConfigError("--resume continues a run with its own config.toml; only "
                              f"--epochs and --device may be given (got {sorted(changed)})")
        cfg = cfg.override(**{n: getattr(args, n) for n in changed})
    else:
        cfg = _config_from_args(args)
        run_dir = Path(args.out or f"runs/{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        args.out = str(run_dir)  # named in the message if the run is interrupted
    if args.time_limit is not None and args.time_limit <= 0:
        raise ConfigError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    result = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                   tensorboard=args.tensorboard,
                   time_limit=None if args.time_limit is None else 60 * args.time_limit)
    if not current_world().main:  # one of several torchrun processes: rank 0 reports
        return 0
    figs = sample_figures(result.model, result.data, run_dir / "figures")
    if result.history:
        figs["curves"] = training_curves(result.history, run_dir / "figures" / "curves.png",
                                         f"{result.data.name}: {run_dir}")
    key, words = selection(cfg.train)
    best = best_epoch(result.history, cfg.train)
    if best:
        bpd = best["val_bits_per_dim"]
        extra = [] if key == "val_elbo" else [f"validation ELBO {best['val_elbo']:.3f}"]
        extra.append(f"{bpd:.4f} bits/dim" if bpd is not None else "a density")
        print(f"best {words} {best[key]:.3f} nats at epoch {best['epoch']} "
              f"({', '.join(extra)})")
    if result.stopped:
        print(f"stopped by --time-limit after epoch {result.history[-1]['epoch']} of "
              f"{cfg.train.epochs}; continue with: vaelab train --resume {run_dir}")
    print(f"run directory: {run_dir}")
    print(f"figure: {figs['samples']}")
    print(f"reconstructions: {figs['reconstructions']}")
    if "curves" in figs:
        print(f"training curves: {figs['curves']}")
    return 0


def _load(args: argparse.Namespace):
    from .data import load_data
    from .rundir import load_run
    from .train import resolve_device

    _, device = join(resolve_device(args.device))  # under torchrun: this rank's device
    model, cfg = load_run(args.run, args.which, device)
    return model, cfg, load_data(cfg.data, device)


def cmd_sample(args: argparse.Namespace) -> int:
    from .plots import sample_figures

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    model, cfg, data = _load(args)
    figs = sample_figures(model, data, Path(args.run) / "figures", args.n, args.temperature,
                          args.seed, samples_path=args.out)
    print(f"figure: {figs['samples']}")
    print(f"reconstructions: {figs['reconstructions']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .rundir import write_result

    model, cfg, data = _load(args)
    if args.k < 0:
        raise ConfigError(f"--k must be >= 0, got {args.k}")
    world = current_world()
    r = evaluate(model, data, args.split, args.batch_size, args.seed, args.k,
                 progress=not (args.json or args.no_progress), world=world)
    if not world.main:  # one of several torchrun processes: rank 0 reports
        return 0
    r["run"] = str(args.run)
    r["which"] = args.which
    write_result(args.run, "evaluate", f"{args.split}, k={args.k}, {args.which}", r)
    if args.json:
        print(json.dumps(r))
        return 0
    unit = "nats" if r["discrete"] else "nats (a density on [0,1]^D)"

    def bits(v):
        return f"({v:.4f} bits/dim)" if v is not None else ""

    px = "p(x|y)" if r["conditional"] else "p(x)"  # a conditional model: given the label
    print(f"{r['dataset']} {r['split']} set, n = {r['n']}, D = {r['dims']}, "
          f"likelihood = {r['likelihood']}" + (", conditional on the label y" if
                                               r["conditional"] else ""))
    print(f"  ELBO            {r['elbo']:10.3f} {unit} per example {bits(r['bits_per_dim'])}")
    print(f"  E_q log p(x|z)  {r['recon']:10.3f} nats")
    print(f"  KL(q(z|x)||p(z)){r['kl']:10.3f} nats")
    if args.k:
        print(f"  -log {px:9s} {r['nll']:10.3f} ± {r['nll_stderr']:.3f} {unit} "
              f"{bits(r['nll_bits_per_dim'])}, importance-sampled, k = {r['k']}")
        print(f"  log {px} - ELBO{r['gap']:{10 if px == 'p(x)' else 8}.3f} nats")
    if "kl_per_layer" in r:
        print("  KL per layer    " + "  ".join(f"{v:.2f}" for v in r["kl_per_layer"])
              + " nats (top first)")
    print(f"  active units    {r['active_units']:6d} of {r['latent_dim']} "
          f"(Cov_x E_q[z_d] > 0.01)")
    for w in r["warnings"]:
        print(f"warning: {w}")
    return 0


def cmd_posterior(args: argparse.Namespace) -> int:
    from .evaluate import posterior_grid
    from .model import seeded
    from .objectives import elbo
    from .plots import data_examples, posterior_figure

    model, cfg, data = _load(args)
    if model.latent_dim != 2 or model.classes:
        raise ConfigError(f"`vaelab posterior` needs an unconditional model with latent_dim "
                          f"= 2; {args.run} has {model.latent_dim}"
                          + (" and is conditional" if model.classes else ""))
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    x = data_examples(data, args.n, seed=args.seed).to(model.device)
    with seeded(args.seed, model.device):
        elbos = elbo(model, x, k=1000)[1].elbo.tolist()
    grids = posterior_grid(model, x)
    out = posterior_figure(x, grids, args.out or Path(args.run) / "figures" / "posterior.png",
                           elbos)
    exact = [g["log_px"] for g in grids]
    if args.json:
        print(json.dumps({"log_px": exact, "elbo": elbos, "figure": str(out)}))
        return 0
    for i, (lp, e) in enumerate(zip(exact, elbos)):
        print(f"image {i}: log p(x) = {lp:9.3f} nats (grid)   ELBO = {e:9.3f}   "
              f"KL(q || p(z|x)) = {lp - e:6.3f}")
    print(f"figure: {out}")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from .baselines import BASELINES, BaselineSettings, run_baselines
    from .data import load_data

    if args.run and args.config:
        raise ConfigError("give --run or --config, not both")
    if args.run:
        args.config = str(Path(args.run) / "config.toml")
        if not Path(args.config).is_file():
            raise ConfigError(f"{args.run} is not a run directory (no config.toml)")
    cfg = _config_from_args(args)
    names = _names(args.models, BASELINES)
    if min(args.components, args.em_iterations, args.ppca_dim) < 1:
        raise ConfigError("--components, --em-iterations and --ppca-dim must be >= 1")
    data = load_data(cfg.data)
    rows = run_baselines(data, names, args.split, BaselineSettings(
        args.components, args.em_iterations, args.ppca_dim, cfg.train.seed),
        progress=not (args.json or args.no_progress))
    if args.run:
        from .rundir import write_result

        write_result(args.run, "baselines", args.split, rows)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{data.name}, {args.split} set (n = {rows[0]['n'] if rows else 0}), "
          f"binarize = {data.binarize}; negative log-likelihood per example")
    print(f"  {'model':10s} {'NLL (nats)':>16s} {'bits/dim':>9s} {'params':>9s} "
          f"{'fit s':>7s}  note")
    for r in rows:
        print(f"  {r['model']:10s} {r['nll']:9.2f} ± {r['nll_stderr']:4.2f} "
              f"{r['bits_per_dim']:9.4f} {r['params']:9d} {r['fit_seconds']:7.1f}  {r['note']}")
    return 0


def _names(text: str | None, registry) -> list[str] | None:
    """``--models A,B``: the names, each checked against ``registry`` (an unknown one fails
    with the choices); None when not given."""
    names = [m.strip() for m in text.split(",")] if text else None
    for n in names or []:
        registry.get(n)
    return names


def _sizes(text: str) -> list[int] | None:
    """'100,300,all' -> [100, 300] plus the whole split (None stands for 'all' alone)."""
    sizes, everything = [], False
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            everything = True
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"--sizes takes positive integers and 'all', got {part!r}")
        sizes.append(int(part))
    return sizes + [10 ** 12] * everything  # 'all' is capped to the split's size later


def cmd_classify(args: argparse.Namespace) -> int:
    from .classify import CLASSIFIERS, budget_epochs, classify_run
    from .data import load_data
    from .train import resolve_device, train

    sizes = _sizes(args.sizes)
    names = _names(args.models, CLASSIFIERS)
    if args.k < 1 or args.min_steps < 1:
        raise ConfigError("--k and --min-steps must be >= 1")
    given = {n for _, n, _, _ in field_specs() if getattr(args, n) is not None}
    cfg = _config_from_args(args)  # parses and checks the flags
    epochs = cfg.train.epochs if "epochs" in given else None
    if args.run:
        if args.config or args.out or given - {"epochs", "seed", "device"}:
            raise ConfigError("with --run the data and model come from the run; only --epochs, "
                              f"--seed and --device may be given (got {sorted(given)})")
        run = Path(args.run)
    else:
        epochs = epochs or (cfg.train.epochs if args.config else 20)
        data = load_data(cfg.data, resolve_device(cfg.train.device))
        data.require_labels("`vaelab classify`")  # before any training
        cfg = cfg.override(epochs=budget_epochs(len(data.train), cfg.train.batch_size, epochs,
                                                args.min_steps))
        run = Path(args.out or f"runs/classify-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        args.out = str(run)
        train(cfg, run, data=data, progress=not args.no_progress)
    r = classify_run(run, epochs=epochs, min_steps=args.min_steps, k=args.k, sizes=sizes,
                     names=names, seed=cfg.train.seed, device=cfg.train.device,
                     progress=not (args.no_progress or args.json))
    if args.json:
        print(json.dumps(r))
        return 0
    n = r["n_train"]
    print(f"{r['dataset']}: {r['n_test']} test images; trained on all {n} labelled images")
    print(f"  {'classifier':40s} {'kind':14s} {'accuracy':>8s} {'log-loss':>8s} {'ECE':>6s} "
          f"{'train s':>8s}")
    for row in (x for x in r["rows"] if x["n"] == n):
        ll = "–" if row["log_loss"] is None else f"{row['log_loss']:.4f}"
        print(f"  {row['model']:40s} {row['kind']:14s} {row['accuracy']:8.4f} {ll:>8s} "
              f"{row['ece']:6.4f} {row['seconds']:8.1f}")
    sizes = sorted({x["n"] for x in r["rows"]})
    print("test accuracy against labelled training examples:")
    print(f"  {'classifier':40s} " + " ".join(f"{s:>7d}" for s in sizes))
    for name in dict.fromkeys(x["model"] for x in r["rows"]):
        acc = {x["n"]: x["accuracy"] for x in r["rows"] if x["model"] == name}
        print(f"  {name:40s} " + " ".join(f"{acc[s]:7.4f}" for s in sizes))
    print(f"curve: {r['figures']['efficiency']} (and efficiency.json beside it)")
    print(f"features: {r['figures']['features']}")
    print(f"results: {run / 'classify.json'} (shown by `vaelab report {run}`)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(args.run, args.out, device=args.device, which=args.which,
                       seed=args.seed)
    print(f"report: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import write_comparison

    if len(set(args.runs)) < 2:
        raise ConfigError("compare needs at least two different run directories")
    out = write_comparison(args.runs, args.out, device=args.device, which=args.which,
                           seed=args.seed)
    print(f"comparison: {out}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .datasets import DATASETS, IdxDataset

    for name in DATASETS.names():
        ds = DATASETS.get(name)
        if isinstance(ds, IdxDataset):
            found = ds.locate(args.data_dir)
            where = (f"found in {next(iter(found.values())).parent}" if found else
                     f"not found; `vaelab train --dataset {name}` downloads it to "
                     f"{ds.download_dir(args.data_dir)}")
        elif name == "digits":
            where = "bundled with scikit-learn (offline, 1,797 8x8 images)"
        else:
            where = "your own images: --dataset folder --data-dir DIR [--image-size N]"
        print(f"{name:14s} {where}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
            "posterior": cmd_posterior, "baselines": cmd_baselines, "classify": cmd_classify,
            "report": cmd_report,
            "compare": cmd_compare, "datasets": cmd_datasets}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world = current_world()  # under torchrun, only rank 0 logs progress
    logging.basicConfig(level=logging.WARNING if args.quiet or not world.main else logging.INFO,
                        format="%(message)s" if not world.distributed else
                        f"[rank {world.rank}] %(message)s")
    logging.captureWarnings(True)
    from .fetch import DataError
    from .rundir import RunError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, RunError) as e:
        print(f"vaelab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "train":
            run = args.resume or args.out or "RUN"
            print(f"\ninterrupted: the last completed epoch is saved; continue with "
                  f"`vaelab train --resume {run}`", file=sys.stderr)
        return 130
    finally:
        leave()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
