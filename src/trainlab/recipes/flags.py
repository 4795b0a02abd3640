"""Commands: every `trainlab` subcommand is a plugin that declares its flags and runs.

    register_command("my-study", Command("what it answers", arguments, run))

`arguments(parser)` adds the command's flags; `run(args) -> exit code`. The helpers below
add the flags several commands share (executors, quiet, data directory, --set, --plugin).
"""

import argparse
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..study.executor import KINDS, ExecutorOptions


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run trials in N local worker processes (same results as one)")
    parser.add_argument("--executor", choices=KINDS, help="how trials run (default: pool when --workers > 1, else inline)")
    parser.add_argument("--address", metavar="HOST:PORT", help="with --executor ray: a running Ray cluster "
                        "(default: start a local Ray instance with --workers workers)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads per trial (default: the cores divided "
                        "among the workers); the same N gives bit-identical numbers in every executor")


def executor_of(args) -> ExecutorOptions:
    return ExecutorOptions(kind=args.executor, workers=args.workers, address=args.address, threads=args.threads)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines (warnings and "
                        "errors still show)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also debug messages (logging level DEBUG)")
    parser.add_argument("--data-dir", metavar="DIR", help="where datasets live (else $TRAINLAB_DATA, then ~/.cache/trainlab)")


def add_sets(parser: argparse.ArgumentParser, help: str = "override a spec field, e.g. --set plan.steps=20") -> None:
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE", help=help)


def add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust", action="store_true", help="import the plugin modules of a study made elsewhere "
                        "(this runs its code); it is then signed, and trusted here from now on (study/trust.py)")


def add_plugins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                        help="import MODULE, which registers tasks, optimizers, probes, ... (stored with the study)")


def at_least(flag: str, value: int | float, low: int = 1) -> None:
    if value < low:
        raise UserError(f"{flag}: must be at least {low}, got {value}")
