"""Command line: ``vaelab COMMAND``; the only argv parser.

Each command is one class in one of the modules below, registered in ``COMMANDS`` with its
arguments beside the code that runs it; adding a command is adding one class (and, for a
new module, one import here). The commands print; the library computes.

    training.py   train, classify        (commands that train models)
    studies.py    evaluate, posterior, baselines
    pages.py      sample, report, compare, datasets
    coding.py     compress, decompress
    sharing.py    export, push
    serving.py    serve
"""
from __future__ import annotations

import argparse
import logging
import sys

from ...devices import current_world, leave
from ...errors import USER_ERRORS
from . import coding, pages, serving, sharing, studies, training  # noqa: F401,E402
from .common import COMMANDS, Command

__all__ = ["main", "build_parser", "COMMANDS", "Command"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaelab", description="Variational autoencoders: train, sample, evaluate.")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.description))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world = current_world()  # under torchrun, only rank 0 logs progress
    logging.basicConfig(level=logging.WARNING if args.quiet or not world.main else logging.INFO,
                        format="%(message)s" if not world.distributed else
                        f"[rank {world.rank}] %(message)s")
    logging.captureWarnings(True)
    cmd = COMMANDS.get(args.command)
    try:
        return cmd.run(args)
    except USER_ERRORS as e:
        print(f"vaelab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(cmd.interrupted(args), file=sys.stderr)
        return 130
    except OSError as e:  # the file system said no: no space, no permission, ...
        print(f"vaelab {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 1
    finally:
        leave()


def _os_error(e: OSError) -> str:
    import errno

    where = f" ({e.filename})" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"no space left on the device{where}; free some space and run the command "
                "again (an interrupted training run continues with --resume)")
    return f"{e.strerror or e}{where}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
