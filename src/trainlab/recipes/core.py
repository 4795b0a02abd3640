"""The commands every study shares: run, validate, resume, report, monitor, and listing plugins."""

import math

from ..errors import UserError
from ..monitor import serve, static_plot
from ..monitor.data import check_metrics, trial_dirs
from ..plugin import register_command, registries
from ..report import build_study_report
from ..report.diagnostics import diagnose_outputs
from ..report.text import markdown_table
from ..spec import dump_yaml, load_spec
from ..study import expand, export_study, resume_study, run_study
from ..study.sweep import seeds_of
from .flags import Command, add_common, add_plugins, add_sets, add_trust, add_workers, at_least, executor_of


def run_arguments(parser) -> None:
    parser.add_argument("spec", help="YAML or JSON spec file")
    add_sets(parser, "override a spec field, e.g. --set plan.steps=20 --set arms.adam.lr=0.01")
    parser.add_argument("--output-root", metavar="DIR", help="parent folder of the study directory (output.root)")
    parser.add_argument("--max-experiments", type=int, metavar="N",
                        help="run a seeded random subset of N trials of the sweep (sweep.max_trials)")
    parser.add_argument("--log", action="append", default=[], metavar="NAME",
                        help="also log to an experiment tracker as trials run: tensorboard, mlflow, wandb "
                             "(output.loggers; repeat for several)")
    add_plugins(parser)
    add_workers(parser)
    add_common(parser)


def run(args) -> int:
    executor = executor_of(args)
    sets = list(args.sets) + ([f"output.root={args.output_root}"] if args.output_root else [])
    if args.max_experiments is not None:
        at_least("--max-experiments", args.max_experiments)
        sets.append(f"sweep.max_trials={args.max_experiments}")
    study = run_study(args.spec, sets, quiet=args.quiet, executor=executor, plugins=args.plugins, loggers=args.log)
    print(study)
    return 0


def validate_arguments(parser) -> None:
    parser.add_argument("spec")
    add_sets(parser)
    add_plugins(parser)


def validate(args) -> int:
    spec = load_spec(args.spec, args.sets, plugins=args.plugins)
    print(dump_yaml(spec), end="")
    search = spec["sweep"]["optuna"]
    if search:
        print(f"# Optuna search: {search['n_trials']} proposal(s) x {len(seeds_of(spec))} seed(s), proposed as it runs")
    else:
        print(f"# {len(expand(spec))} trial(s)")
    return 0


def resume_arguments(parser) -> None:
    parser.add_argument("study_dir")
    add_workers(parser)
    add_common(parser)
    add_trust(parser)


def resume(args) -> int:
    print(resume_study(args.study_dir, quiet=args.quiet, executor=executor_of(args)))
    return 0


def report_arguments(parser) -> None:
    parser.add_argument("study_dir")
    add_trust(parser)


def report(args) -> int:
    print(build_study_report(args.study_dir))
    return 0


def monitor_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_OR_STUDY_DIR")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--metrics", nargs="+", metavar="NAME", help="panels (default: silhouette clusters correlation loss)")
    parser.add_argument("--static", action="store_true", help="write the panels as a PNG and exit")
    parser.add_argument("--output", default="monitor.png", metavar="FILE", help="PNG path for --static")
    add_trust(parser)


def monitor(args) -> int:
    trial_dirs(args.run_dir)  # a clear error for a folder that is neither a study nor a trial
    # nan or inf stops the page's refresh; past 2**31 ms a browser's timer fires at once, over and over
    if not (math.isfinite(args.interval) and 0 < args.interval <= 86400):
        raise UserError(f"--interval: must be a finite positive number of seconds, at most 86400 (got {args.interval})")
    if not 0 <= args.port <= 65535:
        raise UserError("--port: must be between 0 and 65535")
    check_metrics(args.run_dir, args.metrics)
    if args.static:
        print(static_plot(args.run_dir, args.output, args.metrics))
        return 0
    try:
        serve(args.run_dir, args.host, args.port, args.metrics, args.interval)
    except OSError as exc:
        raise UserError(f"--host/--port: cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    return 0


def diagnose_arguments(parser) -> None:
    parser.add_argument("path", metavar="CHECKPOINT_OR_DIR",
                        help="a checkpoint (.pt), a trial directory or a study directory (every checkpoint in it)")
    parser.add_argument("--eps", type=float, metavar="R", help="also cluster with this absolute DBSCAN radius")
    parser.add_argument("--min-samples", type=int, metavar="N",
                        help="... and this min_samples (alone: with the run's eps, auto by default)")
    parser.add_argument("--encoder", metavar="NAME", help="encoder weight [h, d] (default: the study's blobs probe, "
                                                          "else fc1.weight)")
    parser.add_argument("--decoder", metavar="NAME", help="decoder weight [d, h] (default: the study's blobs probe, "
                                                          "else fc2.weight)")
    parser.add_argument("--pairs", type=int, metavar="N", help="pairs to sample (default: the probe's; 0 = all h*d: "
                                                               "slow, and DBSCAN memory grows with dense clusters)")
    parser.add_argument("--output", metavar="DIR", help="where the table and figures go "
                                                        "(default: <trial or study>/diagnostics)")
    add_trust(parser)


def diagnose_command(args) -> int:
    if args.eps is not None and not (math.isfinite(args.eps) and args.eps > 0):
        raise UserError("--eps: must be a positive finite number")
    if args.min_samples is not None and args.min_samples < 2:
        raise UserError("--min-samples: must be at least 2")
    if args.pairs is not None and args.pairs < 0:
        raise UserError("--pairs: must be 0 (every pair) or a positive count")
    extra = {k: v for k, v in (("eps", args.eps), ("min_samples", args.min_samples)) if v is not None}
    output, frame = diagnose_outputs(args.path, args.output, extra, args.encoder, args.decoder, args.pairs)
    columns = ["trial", "arm", "step", "setting", "clusters", "noise", "largest_share", "silhouette", "correlation"]
    print(markdown_table(columns, frame[columns].astype(object).where(frame[columns].notna(), None).values.tolist()))
    print(f"{output}: blobs.csv, blobs.md, blobs.png (history), blob_pairs.png (last checkpoint)")
    return 0


PLURALS = {"task": "tasks", "optimizer": "optimizers", "event": "events", "probe": "probes", "mitigation": "mitigations",
           "fault_model": "fault_models", "report": "reports", "dp_rule": "dp_rules", "command": "commands"}


def export_arguments(parser) -> None:
    parser.add_argument("study_dir")
    parser.add_argument("--to", action="append", required=True, metavar="NAME",
                        help="tensorboard, mlflow or wandb (repeat for several)")
    parser.add_argument("--tracking-uri", metavar="URI", help="with --to mlflow: a tracking server or database "
                        "(default: sqlite in the study)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    add_trust(parser)


def export(args) -> int:
    items = [{"kind": name, **({"tracking_uri": args.tracking_uri} if name == "mlflow" and args.tracking_uri else {})}
             for name in dict.fromkeys(args.to)]
    if args.tracking_uri and "mlflow" not in args.to:
        raise UserError("--tracking-uri: only with --to mlflow")
    trials = export_study(args.study_dir, items, quiet=args.quiet)
    print(f"{args.study_dir}: {len(trials)} trial(s) logged to {', '.join(dict.fromkeys(args.to))}")
    return 0


def list_arguments(parser) -> None:
    parser.add_argument("kind", nargs="?", choices=sorted(PLURALS.values()), help="one kind (default: every kind)")
    add_plugins(parser)


def list_plugins(args, kinds=None) -> int:
    found = registries(args.plugins)
    for kind in kinds or ([args.kind] if args.kind else PLURALS.values()):
        print(f"# {kind}")
        for plugin in getattr(found, kind).values():
            print(f"{plugin.name}: {plugin.doc}")
            for field, info in plugin.Options.model_fields.items():
                note = f"  {info.description}" if info.description else ""
                print(f"    {field} = {info.default!r}{note}")
    return 0


def list_of(kind: str):
    def arguments(parser) -> None:
        add_plugins(parser)

    def run_list(args) -> int:
        return list_plugins(args, [kind])
    return Command(f"list {kind} and their options", arguments, run_list)


register_command("run", Command("run a study from a spec file", run_arguments, run))
register_command("validate", Command("check a spec and print it resolved, with every default", validate_arguments,
                                     validate))
register_command("resume", Command("finish the unfinished trials of a study", resume_arguments, resume))
register_command("report", Command("rebuild report.md and figures from stored data", report_arguments, report))
register_command("monitor", Command("follow a run or study live in a browser, or plot it once", monitor_arguments,
                                    monitor))
register_command("export", Command("log an existing study to TensorBoard, MLflow or W&B (the runs --log makes)",
                                   export_arguments, export))
register_command("diagnose", Command("cluster the weight pairs of saved checkpoints under the run's and the "
                                      "original study's DBSCAN settings, side by side", diagnose_arguments,
                                      diagnose_command))
register_command("plugins", Command("list the plugins of every kind (tasks, optimizers, probes, ...)", list_arguments,
                                    list_plugins))
register_command("tasks", list_of("tasks"))
register_command("optimizers", list_of("optimizers"))
