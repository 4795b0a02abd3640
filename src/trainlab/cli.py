"""The `trainlab` command: a thin dispatcher over the command plugins.

Every subcommand (run, resume, report, ... and each recipe's) is a plugin that declares its
flags and runs (recipes/flags.py), so a plugin module can add commands too (`--plugin`).
Every user error (bad spec, bad flag, missing file) ends with one line on stderr and exit
code 2; nothing is written before the input has been checked.
"""

import argparse
import logging
import os
import sys

from .errors import TrialsFailed, UserError
from .plugin import registries
from .study import trust
from .study.store import version

EXIT_USAGE = 2  # bad input: nothing ran
EXIT_FAILED = 1  # the study ran, but some of its trials failed


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def plugins_in(argv: list[str]) -> list[str]:
    """The --plugin modules anywhere on the command line: loaded before parsing, so that the
    commands they register exist."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found


def build_parser(commands) -> Parser:
    parser = Parser(prog="trainlab", description="Controlled experiments on neural-network training dynamics.")
    parser.add_argument("--version", action="version", version=f"trainlab {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for plugin in commands.values():
        command = plugin.target
        plugin_parser = sub.add_parser(plugin.name, help=command.help, description=command.description or command.help)
        command.arguments(plugin_parser)
    return parser


class Messages(logging.Formatter):
    """Status lines as they are; warnings and worse say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"trainlab: {record.levelname.lower()}: {text}"


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """trainlab's messages (logger "trainlab" and its children, one per module) to stderr:
    status at INFO, --quiet keeps warnings and errors, -v adds DEBUG. A Python caller sets
    levels per part as usual, e.g. logging.getLogger("trainlab.study").setLevel("DEBUG")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Messages("%(message)s"))
    logger = logging.getLogger("trainlab")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def os_error(exc: OSError) -> str:
    """'<path>: <why>' (both paths of a rename), or what the error says when it names no path."""
    # a descriptor number is no path to show (os.fdopen puts one in filename)
    paths = [os.fsdecode(p) for p in (exc.filename, exc.filename2) if isinstance(p, (str, bytes, os.PathLike))]
    text = f"{' -> '.join(paths)}: {exc.strerror or exc}" if paths else exc.strerror or str(exc)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    configure_logging(quiet="--quiet" in argv or "-q" in argv, verbose="--verbose" in argv or "-v" in argv)
    try:
        asked = plugins_in(argv)  # the current folder is searched for --plugin modules only, never on its own
        commands = registries(asked, os.getcwd() if asked else None).commands
        parser = build_parser(commands)
        args = parser.parse_args(argv)
        configure_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
        if getattr(args, "trust", False):
            trust.trust_what_is_opened()
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if getattr(args, "data_dir", None):
            if not os.path.isdir(args.data_dir):
                raise UserError(f"--data-dir {args.data_dir!r} is not a directory")
            os.environ["TRAINLAB_DATA"] = os.path.abspath(args.data_dir)
        return commands.get(args.command).target.run(args)
    except UserError as err:
        message = " ".join(str(err).split())  # one line, whatever a library put in the message
        print(f"trainlab: error: {message}", file=sys.stderr)
        return EXIT_FAILED if isinstance(err, TrialsFailed) else EXIT_USAGE
    except BrokenPipeError:  # `trainlab validate SPEC | head`: the reader left; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk, an unwritable or read-only place: the path and why, no traceback
        print(f"trainlab: error: {os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stop:
        study = getattr(stop, "study_dir", None)
        why = getattr(stop, "signal_name", "interrupt")
        print(f"trainlab: stopped by {why}" + (f"; finished trials are kept, and `trainlab resume {study}` runs the rest"
                                               if study else ""), file=sys.stderr)
        return 143 if why == "SIGTERM" else 130
