"""Commands that measure a model or the data: ``evaluate``, ``posterior``, ``baselines``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...config import PRECISIONS, SWITCHES
from ...devices import current_world
from ...errors import ConfigError
from .common import (Command, add_config_flags, add_progress_flag, add_run_args, at_least, command,
                     config_from_args, load, names)


@command("evaluate")
class Evaluate(Command):
    """test-set ELBO, reconstruction, KL and bits/dim"""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run_args(p)
        p.add_argument("--split", choices=["train", "val", "test"], default="test")
        p.add_argument("--k", type=int, default=0, metavar="K",
                       help="importance samples for log p(x) (the literature uses 5000; "
                       "default 0: ELBO only)")
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="the decoder passes of log p(x): fp32, bf16 (matrix products in "
                       "bfloat16, log-probabilities in float32), or auto (the default: bf16 "
                       "where the CPU or GPU does bfloat16 products faster than float32's "
                       "and the likelihood has at most 17 levels)")
        p.add_argument("--compile", choices=SWITCHES, default="auto",
                       help="compile the decoder passes of log p(x) with torch.compile "
                       "(default auto: on a CPU when images x k is at least 10^7)")
        p.add_argument("--batch-size", type=int, default=1000)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        add_progress_flag(p)

    def run(self, args: argparse.Namespace) -> int:
        from ...runs.records import write_result
        from ...studies.evaluate import evaluate

        at_least(args.k, 0, "--k")
        at_least(args.batch_size, 1, "--batch-size")
        model, cfg, data = load(args)
        world = current_world()
        r = evaluate(model, data, args.split, args.batch_size, args.seed, args.k,
                     progress=not (args.json or args.no_progress), world=world,
                     precision=args.precision, compile=args.compile)
        if not world.main:  # one of several torchrun processes: rank 0 reports
            return 0
        r["run"] = str(args.run)
        r["which"] = args.which
        write_result(args.run, "evaluate", f"{args.split}, k={args.k}, {args.which}", r)
        print(json.dumps(r) if args.json else _evaluation(r))
        return 0


def _evaluation(r: dict) -> str:
    unit = "nats" if r["discrete"] else "nats (a density on [0,1]^D)"

    def bits(v):
        return f"({v:.4f} bits/dim)" if v is not None else ""

    px = "p(x|y)" if r["conditional"] else "p(x)"  # a conditional model: given the label
    lines = [f"{r['dataset']} {r['split']} set, n = {r['n']}, D = {r['dims']}, "
             f"likelihood = {r['likelihood']}"
             + (", conditional on the label y" if r["conditional"] else ""),
             f"  ELBO            {r['elbo']:10.3f} {unit} per example {bits(r['bits_per_dim'])}",
             f"  E_q log p(x|z)  {r['recon']:10.3f} nats",
             f"  KL(q(z|x)||p(z)){r['kl']:10.3f} nats"]
    if r.get("k"):
        lines.append(f"  -log {px:9s} {r['nll']:10.3f} ± {r['nll_stderr']:.3f} {unit} "
                     f"{bits(r['nll_bits_per_dim'])}, importance-sampled, k = {r['k']}, "
                     f"{r['precision']} products" + (", compiled" if r.get("compiled") else ""))
        lines.append(f"  log {px} - ELBO{r['gap']:{10 if px == 'p(x)' else 8}.3f} nats")
    if "kl_per_layer" in r:
        lines.append("  KL per layer    " + "  ".join(f"{v:.2f}" for v in r["kl_per_layer"])
                     + " nats (top first)")
    lines.append(f"  active units    {r['active_units']:6d} of {r['latent_dim']} "
                 f"(Cov_x E_q[z_d] > 0.01)")
    lines += [f"warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)


@command("posterior")
class Posterior(Command):
    """2-D latent: exact log p(x) and p(z|x) beside q(z|x)"""

    description = ("For a model with a 2-D latent: the true posterior p(z|x) = p(x|z) p(z) / "
                   "p(x) by Bayes rule on a grid, the exact log p(x) by numerical integration, "
                   "drawn beside the encoder's q(z|x).")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_run_args(p)
        p.add_argument("--n", type=int, default=6, help="test images (default 6)")
        p.add_argument("--out", metavar="PNG", help="default: RUN/figures/posterior.png")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    def run(self, args: argparse.Namespace) -> int:
        from ...data.splits import data_examples
        from ...runs.rundir import workdir
        from ...studies.posterior import posterior_study
        from ..plots import posterior_figure

        model, cfg, data = load(args)
        model.require_planar(f"`vaelab posterior` ({args.run})")
        at_least(args.n, 1, "--n")
        x = data_examples(data, args.n, seed=args.seed).to(model.device)
        study = posterior_study(model, x, seed=args.seed)
        out = posterior_figure(x, study["grids"],
                               args.out or workdir(args.run) / "figures" / "posterior.png",
                               study["elbo"])
        if args.json:
            print(json.dumps({"log_px": study["log_px"], "elbo": study["elbo"],
                              "figure": str(out)}))
            return 0
        for i, (lp, e, kl) in enumerate(zip(study["log_px"], study["elbo"], study["kl"])):
            print(f"image {i}: log p(x) = {lp:9.3f} nats (grid)   ELBO = {e:9.3f}   "
                  f"KL(q || p(z|x)) = {kl:6.3f}")
        print(f"figure: {out}")
        return 0


@command("baselines")
class Baselines(Command):
    """the lecture's MLE density models: test NLL"""

    description = ("Fit factorized Bernoulli and Gaussian models, a mixture of Bernoullis (EM) "
                   "and probabilistic PCA by maximum likelihood on the training split; print "
                   "the test NLL in nats and bits/dim, in the same protocol as `vaelab "
                   "evaluate`.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="take the [data] settings from this TOML")
        p.add_argument("--run", metavar="RUN", help="take the [data] settings from this run and "
                       "record the table in RUN/baselines.json (shown by `vaelab report`)")
        p.add_argument("--models", metavar="M1,M2", help="subset of: bernoulli, gaussian, "
                       "mixture, ppca (default: all that fit the data)")
        p.add_argument("--components", type=int, default=50,
                       help="mixture components (default 50)")
        p.add_argument("--em-iterations", type=int, default=100,
                       help="EM iterations (default 100)")
        p.add_argument("--ppca-dim", type=int, default=50,
                       help="PPCA latent dimension (default 50)")
        p.add_argument("--split", choices=["train", "val", "test"], default="test")
        p.add_argument("--json", action="store_true", help="print a JSON list")
        add_progress_flag(p)
        add_config_flags(p, ("data",))

    def run(self, args: argparse.Namespace) -> int:
        from ...data.splits import load_data
        from ...studies.baselines import BASELINES, BaselineSettings, run_baselines

        if args.run and args.config:
            raise ConfigError("give --run or --config, not both")
        if args.run:
            from ...runs.rundir import place

            args.config = str(place(args.run).source / "config.toml")
            if not Path(args.config).is_file():
                raise ConfigError(f"{args.run} is not a run directory (no config.toml)")
        cfg = config_from_args(args)
        models = names(args.models, BASELINES)
        if min(args.components, args.em_iterations, args.ppca_dim) < 1:
            raise ConfigError("--components, --em-iterations and --ppca-dim must be >= 1")
        data = load_data(cfg.data)
        rows = run_baselines(data, models, args.split, BaselineSettings(
            args.components, args.em_iterations, args.ppca_dim, cfg.train.seed),
            progress=not (args.json or args.no_progress))
        if args.run:
            from ...runs.records import write_result

            write_result(args.run, "baselines", args.split, rows)
        print(json.dumps(rows) if args.json else _baselines_table(rows, data, args.split))
        return 0


def _baselines_table(rows: list[dict], data, split: str) -> str:
    lines = [f"{data.name}, {split} set (n = {rows[0]['n'] if rows else 0}), "
             f"binarize = {data.binarize}; negative log-likelihood per example",
             f"  {'model':10s} {'NLL (nats)':>16s} {'bits/dim':>9s} {'params':>9s} "
             f"{'fit s':>7s}  note"]
    lines += [f"  {r['model']:10s} {r['nll']:9.2f} ± {r['nll_stderr']:4.2f} "
              f"{r['bits_per_dim']:9.4f} {r['params']:9d} {r['fit_seconds']:7.1f}  {r['note']}"
              for r in rows]
    return "\n".join(lines)
