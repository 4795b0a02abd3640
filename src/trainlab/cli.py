"""The `trainlab` command.

Every user error (bad spec, bad flag, missing file) ends with one line on stderr and exit
code 2; nothing is written before the input has been checked.
"""

import argparse
import os
import sys

from . import __version__
from .errors import UserError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--data-dir", metavar="DIR", help="where datasets live (else $TRAINLAB_DATA, then ~/.cache/trainlab)")


def build_parser() -> Parser:
    parser = Parser(prog="trainlab", description="Controlled experiments on neural-network training dynamics.")
    parser.add_argument("--version", action="version", version=f"trainlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser("run", help="run a study from a spec file")
    run.add_argument("spec", help="YAML or JSON spec file")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                     help="override a spec field, e.g. --set plan.steps=20 --set arms.adam.lr=0.01")
    run.add_argument("--output-root", metavar="DIR", help="parent folder of the study directory (output.root)")
    add_common(run)

    validate = sub.add_parser("validate", help="check a spec and print it resolved, with every default")
    validate.add_argument("spec")
    validate.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE")

    resume = sub.add_parser("resume", help="finish the unfinished trials of a study")
    resume.add_argument("study_dir")
    add_common(resume)

    report = sub.add_parser("report", help="rebuild report.md and figures from stored data")
    report.add_argument("study_dir")

    sub.add_parser("tasks", help="list tasks and their options")
    sub.add_parser("optimizers", help="list optimizers and their hyperparameters")
    return parser


def cmd_run(args) -> int:
    from .study import run_study

    sets = list(args.sets) + ([f"output.root={args.output_root}"] if args.output_root else [])
    study = run_study(args.spec, sets, quiet=args.quiet)
    print(study)
    return 0


def cmd_validate(args) -> int:
    from .spec import dump_yaml, load_spec
    from .study import expand

    spec = load_spec(args.spec, args.sets)
    print(dump_yaml(spec), end="")
    print(f"# {len(expand(spec))} trial(s)")
    return 0


def cmd_resume(args) -> int:
    from .study import resume_study

    print(resume_study(args.study_dir, quiet=args.quiet))
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    print(build_report(args.study_dir))
    return 0


def cmd_list(registry_name: str) -> int:
    from . import plugins

    registry = getattr(plugins, registry_name)
    for name in registry.names():
        entry = registry.get(name)
        model = entry.Options if hasattr(entry, "Options") else entry.Hparams
        print(f"{name}: {entry.doc}")
        for field, info in model.model_fields.items():
            note = f"  {info.description}" if info.description else ""
            print(f"    {field} = {info.default!r}{note}")
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "resume": cmd_resume, "report": cmd_report,
            "tasks": lambda args: cmd_list("tasks"), "optimizers": lambda args: cmd_list("optimizers")}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return EXIT_USAGE
        if getattr(args, "data_dir", None):
            if not os.path.isdir(args.data_dir):
                raise UserError(f"--data-dir {args.data_dir!r} is not a directory")
            os.environ["TRAINLAB_DATA"] = os.path.abspath(args.data_dir)
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"trainlab: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("trainlab: interrupted; `trainlab resume DIR` finishes the study", file=sys.stderr)
        return 130
