"""What the commands share: the ``Command`` interface and its registry, one flag per
config field, the arguments of a command that reads a run, and small parsers."""
from __future__ import annotations

import argparse
import math
import typing

from ...config import Config, field_specs
from ...errors import ConfigError
from ...registry import Registry


class Command:
    """A subcommand: its one-line ``help`` (the class docstring's first line unless set),
    an optional ``description``, its arguments and what it runs. ``run`` returns the exit
    status; errors the user can fix are raised as ConfigError, DataError or RunError."""

    help: str = ""
    description: str | None = None

    def __init__(self) -> None:
        if not self.help:
            self.help = (self.__doc__ or "").strip().splitlines()[0]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError

    def interrupted(self, args: argparse.Namespace) -> str:
        """What to tell the user after Ctrl-C."""
        return "\ninterrupted"


COMMANDS: Registry[Command] = Registry("command")


def command(name: str):
    """``@command("name")`` on a Command subclass registers one instance of it."""
    def deco(cls: type[Command]) -> type[Command]:
        COMMANDS.register(name)(cls())
        return cls

    return deco


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def _registries() -> dict[str, list[str]]:
    from ...data.datasets import DATASETS
    from ...models.likelihoods import LIKELIHOODS
    from ...models.nets import ACTIVATIONS, NETS
    from ...models.priors import PRIORS

    return {"dataset": DATASETS.names(), "likelihood": ["auto", *LIKELIHOODS.names()],
            "net": NETS.names(), "prior": PRIORS.names(), "activation": ACTIVATIONS.names()}


def add_config_flags(p: argparse.ArgumentParser,
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


def given_settings(args: argparse.Namespace) -> set[str]:
    """The config fields given as flags."""
    return {name for _, name, _, _ in field_specs() if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    """The defaults, then ``--config FILE``, then the flags."""
    cfg = Config.load(args.config) if getattr(args, "config", None) else Config()
    return cfg.override(**{name: getattr(args, name) for name in given_settings(args)})


def add_run_args(p: argparse.ArgumentParser, runs: bool = False) -> None:
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
    add_data_dir_flag(p)


def add_data_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR", help="where the run's data set is (default: "
                   "the run's own setting; a model exported or from hf:// brings none, so "
                   "give it for a folder or idx data set)")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (--json implies it where a command has it)")


def load(args: argparse.Namespace):
    """The run's model (on this rank's device under torchrun), its config and its data."""
    from ...data.splits import load_data
    from ...devices import fit_threads, join, resolve_device
    from ...runs.rundir import load_run

    _, device = join(resolve_device(args.device))
    fit_threads(device)
    model, cfg = load_run(args.run, args.which, device, args.data_dir)
    return model, cfg, load_data(cfg.data, device)


def at_least(value: int, least: int, flag: str) -> int:
    if value < least:
        raise ConfigError(f"{flag} must be >= {least}, got {value}")
    return value


def positive(value: float, flag: str, unit: str = "") -> float:
    """A finite number > 0 (nan and inf are refused)."""
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{flag} must be > 0{unit} (a finite number), got {value}")
    return value


def names(text: str | None, registry) -> list[str] | None:
    """``--models A,B``: the names, each checked against ``registry`` (an unknown one fails
    with the choices); None when not given."""
    out = [m.strip() for m in text.split(",")] if text else None
    for n in out or []:
        registry.get(n)
    return out


def sizes(text: str) -> list[int] | None:
    """'100,300,all' -> [100, 300] plus the whole split (None stands for 'all' alone)."""
    out, everything = [], False
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            everything = True
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"--sizes takes positive integers and 'all', got {part!r}")
        out.append(int(part))
    return out + [10 ** 12] * everything  # 'all' is capped to the split's size later
