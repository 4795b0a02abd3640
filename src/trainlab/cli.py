"""The `trainlab` command.

Every user error (bad spec, bad flag, missing file) ends with one line on stderr and exit
code 2; nothing is written before the input has been checked.
"""

import argparse
import os
import sys

from . import __version__
from .errors import UserError, check_known

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run trials in N local worker processes (same results as one)")
    parser.add_argument("--executor", choices=("inline", "pool", "ray"),
                        help="how trials run (default: pool when --workers > 1, else inline)")
    parser.add_argument("--address", metavar="HOST:PORT", help="with --executor ray: a running Ray cluster "
                        "(default: start a local Ray instance with --workers workers)")


def executor_of(args):
    from .study.executor import ExecutorOptions

    return ExecutorOptions(kind=args.executor, workers=args.workers, address=args.address)


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
    run.add_argument("--max-experiments", type=int, metavar="N",
                     help="run a seeded random subset of N trials of the sweep (sweep.max_trials)")
    add_workers(run)
    add_common(run)

    validate = sub.add_parser("validate", help="check a spec and print it resolved, with every default")
    validate.add_argument("spec")
    validate.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE")

    resume = sub.add_parser("resume", help="finish the unfinished trials of a study")
    resume.add_argument("study_dir")
    add_workers(resume)
    add_common(resume)

    report = sub.add_parser("report", help="rebuild report.md and figures from stored data")
    report.add_argument("study_dir")

    add_fault_commands(sub)

    abl = sub.add_parser("ablation", help="Muon hyperparameter ablation on the MoE language model")
    abl.add_argument("--quick", action="store_true", help="4 trials of 20 steps on a small corpus")
    abl.add_argument("--max-experiments", type=int, metavar="N", help="a seeded random subset of N grid points")
    abl.add_argument("--preset", default="moe-tiny", help="moe-tiny or moe-384")
    abl.add_argument("--steps", type=int, default=50)
    abl.add_argument("--batch-size", type=int, default=16)
    abl.add_argument("--eval-every", type=int, default=5)
    abl.add_argument("--seed", type=int, default=42)
    abl.add_argument("--output-root", default="runs", metavar="DIR")
    abl.add_argument("--analyze-only", action="store_true", help="rebuild the analysis of --results-dir; no training")
    abl.add_argument("--results-dir", metavar="DIR",
                     help="an existing ablation study: analyse it (--analyze-only) or finish its unfinished trials")
    abl.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE")
    add_workers(abl)
    add_common(abl)

    dyn = sub.add_parser("dynamics", help="SGD vs GD dynamics: six stages per setup (docs/dynamics.md)")
    dyn.add_argument("--setup", type=int, required=True, help="preset 1-8")
    dyn.add_argument("--stage", type=int, nargs="+", choices=range(1, 7), metavar="K", help="stages to run (default all)")
    dyn.add_argument("--force", action="store_true", help="run stages again even when their outputs exist")
    dyn.add_argument("--output-root", default="runs", metavar="DIR")
    dyn.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                     help="change a setup field, e.g. --set stage1_epochs=1 --set runs=50")
    add_common(dyn)

    mon = sub.add_parser("monitor", help="follow a run or study live in a browser, or plot it once")
    mon.add_argument("run_dir", metavar="RUN_OR_STUDY_DIR")
    mon.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    mon.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    mon.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    mon.add_argument("--metrics", nargs="+", metavar="NAME", help="panels (default: silhouette clusters correlation loss)")
    mon.add_argument("--static", action="store_true", help="write the panels as a PNG and exit")
    mon.add_argument("--output", default="monitor.png", metavar="FILE", help="PNG path for --static")

    prof = sub.add_parser("profile-batch-size", help="time and memory of a spec at several batch sizes")
    prof.add_argument("spec", help="YAML or JSON spec file, or a preset name")
    prof.add_argument("--batch-sizes", type=int, nargs="+", required=True, metavar="B")
    prof.add_argument("--epochs", type=float, default=1.0)
    prof.add_argument("--memory-budget", metavar="SIZE", help="e.g. 4GB (default: --budget-fraction of the device)")
    prof.add_argument("--budget-fraction", type=float, default=0.8)
    prof.add_argument("--output", default="batch_size_profile.md", metavar="FILE")
    prof.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE")
    add_common(prof)

    dpc = sub.add_parser("dp-consistency", help="prove the DP-SGD clipping modes agree (regimes A and B)")
    dpc.add_argument("--modes", nargs="+", default=["no_dp", "per_sample", "ghost", "bk", "flash", "fused"],
                     metavar="MODE", help="no_dp per_sample ghost bk flash fused (default: all)")
    dpc.add_argument("--model", nargs="+", default=["gpt-tiny", "llama-tiny"], metavar="NAME",
                     help="gpt-tiny gpt-small gpt-256 gpt2-small llama-tiny llama-small llama-3.2-1b cnn")
    dpc.add_argument("--steps", type=int, default=5)
    dpc.add_argument("--seed", type=int, default=42)
    dpc.add_argument("--dtype", default="float64", help="float64 (threshold 1e-10) or float32 (1e-5)")
    dpc.add_argument("--batch-size", type=int, default=8)
    dpc.add_argument("--seq-len", type=int, default=32)
    dpc.add_argument("--output-root", default="runs", metavar="DIR")
    add_common(dpc)

    dpp = sub.add_parser("dp-profile", help="step time and peak memory of each DP mode vs a non-private step")
    dpp.add_argument("--modes", nargs="+", default=["no_dp", "per_sample", "ghost", "bk", "flash", "fused"],
                     metavar="MODE", help="DP modes, plus opacus_hooks opacus_ghost when Opacus is installed")
    dpp.add_argument("--model", nargs="+", default=["gpt-tiny", "gpt-256"], metavar="NAME")
    dpp.add_argument("--batch-size", type=int, nargs="+", default=[16], metavar="B")
    dpp.add_argument("--seq-len", type=int, nargs="+", default=[128], metavar="T")
    dpp.add_argument("--device", default="cpu")
    dpp.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    dpp.add_argument("--rounds", type=int, default=10, help="timed steps per mode (round-robin)")
    dpp.add_argument("--output", default="dp_profile.md", metavar="FILE", help="markdown table; the figure beside it")
    add_common(dpp)

    sub.add_parser("tasks", help="list tasks and their options")
    sub.add_parser("optimizers", help="list optimizers and their hyperparameters")
    return parser


def cmd_run(args) -> int:
    from .study import run_study

    executor = executor_of(args)
    sets = list(args.sets) + ([f"output.root={args.output_root}"] if args.output_root else [])
    if args.max_experiments is not None:
        if args.max_experiments < 1:
            raise UserError("--max-experiments: must be at least 1")
        sets.append(f"sweep.max_trials={args.max_experiments}")
    study = run_study(args.spec, sets, quiet=args.quiet, executor=executor)
    print(study)
    return 0


def cmd_validate(args) -> int:
    from .spec import dump_yaml, load_spec
    from .study import expand
    from .study.sweep import seeds_of

    spec = load_spec(args.spec, args.sets)
    print(dump_yaml(spec), end="")
    search = spec["sweep"]["optuna"]
    if search:
        print(f"# Optuna search: {search['n_trials']} proposal(s) x {len(seeds_of(spec))} seed(s), proposed as it runs")
    else:
        print(f"# {len(expand(spec))} trial(s)")
    return 0


def cmd_resume(args) -> int:
    from .study import resume_study

    executor = executor_of(args)
    print(resume_study(args.study_dir, quiet=args.quiet, executor=executor))
    return 0


def cmd_report(args) -> int:
    from .report import build_study_report

    print(build_study_report(args.study_dir))
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


def add_fault_commands(sub) -> None:
    fr = sub.add_parser("fault-recovery", help="which optimizer recovers from the same injected fault?",
                        description="Train optimizers in lock-step, hit them all with the same fault at the same "
                                    "site and step, and measure recovery on the held-out split.")
    fr.add_argument("--num-experiments", type=int, default=10, metavar="N")
    fr.add_argument("--steps-after-injection", type=int, default=100, metavar="N")
    fr.add_argument("--optimizers", nargs="+", default=["adam", "sgd", "rmsprop", "adamw"], metavar="OPT")
    fr.add_argument("--seed", type=int, default=42)
    fr.add_argument("--learning-rate", type=float, default=0.001, metavar="LR")
    fr.add_argument("--task", default="mnist-cnn")
    fr.add_argument("--fault", default="value", help="bitflip, value, zero, sign_flip, add_noise, mul_noise, stuck")
    fr.add_argument("--target", default="weights", help="weights, gradients, optimizer_state, activations")
    fr.add_argument("--mitigations", nargs="+", default=["none"], metavar="M",
                    help="none, skip_nonfinite, grad_clip, rollback, bound_state: one arm per optimizer x mitigation")
    fr.add_argument("--injection-window", default="20:120", metavar="LO:HI", help="steps the injection is drawn from")
    fr.add_argument("--layer", help="parameter (or module, for activations) to hit; default: drawn per experiment")
    fr.add_argument("--count", type=int, default=16, help="elements hit per fault")
    fr.add_argument("--scattered", action="store_true", help="hit scattered elements instead of contiguous ones")
    fr.add_argument("--bit", type=int, help="bitflip: this bit")
    fr.add_argument("--bit-range", metavar="LO:HI|exponent", help="bitflip: a bit drawn from this range")
    fr.add_argument("--bits-per-element", type=int, default=1)
    fr.add_argument("--value", type=float, help="value/stuck: this value (default: log-uniform in --value-range)")
    fr.add_argument("--value-range", default="3.6e2:1.2e8", metavar="LO:HI")
    fr.add_argument("--noise-scale", type=float, default=0.1)
    fr.add_argument("--duration", type=int, default=1, help="stuck: steps")
    fr.add_argument("--state", default="first_moment", help="optimizer_state: first_moment or second_moment")
    fr.add_argument("--batch-size", type=int, default=64)
    fr.add_argument("--eval-every", type=int, default=5, help="held-out evaluation cadence from the injection on")
    fr.add_argument("--eval-every-before", type=int, default=25, help="held-out evaluation cadence before it")
    fr.add_argument("--dtype", default="float32")
    fr.add_argument("--device", default="cpu")
    fr.add_argument("--name", default="fault-recovery")
    fr.add_argument("--output-root", default="runs", metavar="DIR")
    fr.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                    help="override a field of the study spec, e.g. --set task.n_train=2000")
    add_workers(fr)
    add_common(fr)

    fault = sub.add_parser("fault", help="fault tools: replay an experiment")
    fault_sub = fault.add_subparsers(dest="fault_command", metavar="COMMAND", parser_class=Parser, required=True)
    rp = fault_sub.add_parser("replay", help="re-run one experiment and check it reproduces its results exactly")
    rp.add_argument("experiment_dir")
    add_common(rp)


def parse_range(flag: str, text: str, kind=float) -> tuple:
    try:
        lo, hi = (kind(part) for part in text.split(":"))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected LO:HI, e.g. {'20:120' if kind is int else '1e2:1e8'}") from None
    return lo, hi


def check_names(flag: str, names: list[str], registry) -> None:
    check_known(flag, registry.kind, names, registry.names())


def cmd_fault_recovery(args) -> int:
    from pydantic import ValidationError

    from . import plugins
    from .recipes import fault_recovery

    executor = executor_of(args)
    check_names("--optimizers", args.optimizers, plugins.optimizers)
    check_names("--mitigations", args.mitigations, plugins.mitigations)
    check_names("--task", [args.task], plugins.tasks)
    for flag in ("num_experiments", "steps_after_injection", "count", "batch_size", "eval_every", "eval_every_before"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1, got {getattr(args, flag)}")
    plan = {"fault": args.fault, "target": args.target, "layer": args.layer, "count": args.count,
            "contiguous": not args.scattered, "bit": args.bit, "bits_per_element": args.bits_per_element,
            "value": args.value, "value_range": parse_range("--value-range", args.value_range),
            "noise_scale": args.noise_scale, "duration": args.duration, "state": args.state,
            "window": parse_range("--injection-window", args.injection_window, int)}
    if args.bit_range:
        plan["bit_range"] = "exponent" if args.bit_range == "exponent" else parse_range("--bit-range", args.bit_range, int)
    try:
        spec, _ = fault_recovery.build_spec(
            num_experiments=args.num_experiments, steps_after_injection=args.steps_after_injection,
            optimizers=args.optimizers, seed=args.seed, learning_rate=args.learning_rate, task=args.task,
            mitigations=args.mitigations, plan_options=plan, batch_size=args.batch_size, eval_every=args.eval_every,
            eval_every_before=args.eval_every_before,
            dtype=args.dtype, device=args.device, name=args.name, output_root=args.output_root, sets=args.sets)
    except ValidationError as err:
        first = err.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = str(first["loc"][0]) if first["loc"] else next(
            (f for f in ("window", "value_range", "bit_range") if message.startswith(f)), "fault")
        flag = {"window": "--injection-window"}.get(field, f"--{field.replace('_', '-')}")
        raise UserError(f"{flag}: {message}") from None
    print(fault_recovery.run(spec, quiet=args.quiet, executor=executor))
    return 0


def cmd_profile(args) -> int:
    from .profiler import device_memory, parse_size, profile_batch_sizes, write_report
    from .spec import load_spec

    if any(b <= 0 for b in args.batch_sizes):
        raise UserError("--batch-sizes: every size must be a positive integer")
    if args.epochs <= 0:
        raise UserError("--epochs: must be positive")
    if not 0 < args.budget_fraction <= 1:
        raise UserError("--budget-fraction: must be in (0, 1]")
    spec = load_spec(args.spec, args.sets)
    budget = parse_size(args.memory_budget) if args.memory_budget else int(
        args.budget_fraction * device_memory(spec["plan"]["device"]))
    records = profile_batch_sizes(spec, args.batch_sizes, args.epochs, budget, quiet=args.quiet)
    output = write_report(records, budget, spec, args.epochs, args.output)
    print(output.read_text())
    return 0


def cmd_ablation(args) -> int:
    from .recipes import ablation
    from .study import run_study

    if args.analyze_only:
        if not args.results_dir:
            raise UserError("--analyze-only needs --results-dir DIR (the study to analyse)")
        print(ablation.analyze_only(args.results_dir))
        return 0
    executor = executor_of(args)
    if args.results_dir:  # run again into an existing study: finished trials are skipped
        from .study import resume_study

        print(resume_study(args.results_dir, quiet=args.quiet, executor=executor))
        return 0
    for flag in ("steps", "batch_size", "eval_every"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1")
    if args.max_experiments is not None and args.max_experiments < 1:
        raise UserError("--max-experiments: must be at least 1")
    spec = ablation.build_spec(args.quick, args.preset, args.steps, args.batch_size, args.eval_every, args.seed,
                               args.max_experiments, args.output_root)
    print(run_study(spec, args.sets, quiet=args.quiet, executor=executor))
    return 0


def cmd_dp_consistency(args) -> int:
    from .recipes.dp_consistency import run_suite

    root = run_suite(args.model, args.modes, args.steps, args.seed, args.dtype, args.batch_size, args.seq_len,
                     output_root=args.output_root, quiet=args.quiet)
    summary = (root / "summary.md").read_text()
    print(summary)
    print(root)
    return 0 if "# DP consistency: PASS" in summary else 1


def cmd_dp_profile(args) -> int:
    from pathlib import Path

    import torch

    from .privacy import MODES
    from .privacy.profile import OPACUS, figure, markdown, profile
    from .recipes.dp_consistency import MODEL_NAMES
    from .study.store import atomic_write_text

    check_known("--modes", "mode", args.modes, (*MODES, *OPACUS))
    check_known("--model", "model", args.model, MODEL_NAMES)
    if args.dtype not in ("float32", "bfloat16"):
        raise UserError(f"--dtype: must be float32 or bfloat16, got {args.dtype!r}")
    if min(args.batch_size + args.seq_len + [args.rounds]) < 1:
        raise UserError("--batch-size, --seq-len and --rounds: must be at least 1")
    if any(m in OPACUS for m in args.modes):
        import importlib.util

        if importlib.util.find_spec("opacus") is None:
            raise UserError("--modes opacus_*: Opacus is not installed (pip install 'trainlab[dp]')")
    output = Path(args.output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {args.output!r}: cannot create its folder: {exc.strerror}") from None
    rows = profile(args.model, args.batch_size, args.seq_len, args.modes, args.device, args.rounds, args.dtype,
                   quiet=args.quiet)
    figure_path = output.with_suffix(".png")
    figure(rows, figure_path)
    text = (f"# DP step time and memory\n\ntorch {torch.__version__}, device {args.device}, "
            f"{args.dtype}, median of {args.rounds} round-robin steps.\n\n" + markdown(rows)
            + f"\n![profile]({figure_path.name})\n")
    atomic_write_text(output, text)
    print(text)
    return 0


def cmd_dynamics(args) -> int:
    from pathlib import Path

    from .recipes.dynamics import run_pipeline, setup_of

    setup = setup_of(args.setup, args.sets)
    root = Path(args.output_root) / f"dynamics-setup{args.setup}"
    print(run_pipeline(setup, root, args.stage or [1, 2, 3, 4, 5, 6], args.force))
    return 0


def cmd_monitor(args) -> int:
    from .monitor import serve, static_plot
    from .monitor.data import trial_dirs

    trial_dirs(args.run_dir)  # a clear error for a folder that is neither a study nor a trial
    if args.interval <= 0:
        raise UserError("--interval: must be positive")
    if not 0 <= args.port <= 65535:
        raise UserError("--port: must be between 0 and 65535")
    if args.static:
        print(static_plot(args.run_dir, args.output, args.metrics))
        return 0
    try:
        serve(args.run_dir, args.host, args.port, args.metrics, args.interval)
    except OSError as exc:
        raise UserError(f"--host/--port: cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    return 0


def cmd_fault(args) -> int:
    from .recipes.fault_recovery import replay

    ok, problems = replay(args.experiment_dir)
    if ok:
        print(f"{args.experiment_dir}: replay reproduces results.json, the realised fault values and the "
              "injection batch exactly")
        return 0
    for problem in problems:
        print(f"{args.experiment_dir}: {problem}")
    return 1


COMMANDS = {"ablation": cmd_ablation, "dp-consistency": cmd_dp_consistency, "dp-profile": cmd_dp_profile, "dynamics": cmd_dynamics, "monitor": cmd_monitor, "profile-batch-size": cmd_profile, "fault-recovery": cmd_fault_recovery, "fault": cmd_fault, "run": cmd_run, "validate": cmd_validate, "resume": cmd_resume, "report": cmd_report,
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
        message = " ".join(str(err).split())  # one line, whatever a library put in the message
        print(f"trainlab: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("trainlab: interrupted; `trainlab resume DIR` finishes the study", file=sys.stderr)
        return 130
