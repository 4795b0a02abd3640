"""The Muon ablation: muon lr x AdamW lr ratio x momentum x weight decay on the MoE language model.

    trainlab ablation --quick                      # 4 trials, minutes on CPU
    trainlab ablation --max-experiments 20 --workers 2
    trainlab ablation --analyze-only --results-dir runs/ablation-20261122_120000

Outputs (besides the study's trials): report.md, analysis.json, final_results.json,
config.json and figures/ (curves, effects per hyperparameter, performance distribution,
rank-correlation heatmap, top performers).
"""

import json
from pathlib import Path

import numpy as np

from ..analysis.sweep import sweep_frame
from ..analysis.tables import load_summaries
from ..errors import UserError
from ..report.markdown import build_report
from ..io import atomic_write_json, atomic_write_text
from ..plugin import register_command, register_report
from ..report.plotting import pyplot
from ..study import resume_study, run_study
from ..study.store import StudyStore
from .flags import Command, add_common, add_sets, add_workers, executor_of

LEGACY_GRID = {"muon_lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3], "adamw_lr_ratio": [0.01, 0.05, 0.1, 0.2, 0.5],
               "momentum": [0.9, 0.95, 0.99], "weight_decay": [0.01, 0.1, 0.5]}
QUICK_GRID = {"muon_lr": [0.01, 0.03], "adamw_lr_ratio": [0.1, 0.5], "momentum": [0.95], "weight_decay": [0.1]}
PATHS = {"muon_lr": "arms.muon.lr", "adamw_lr_ratio": "arms.muon.adamw_lr_ratio", "momentum": "arms.muon.momentum",
         "weight_decay": "arms.muon.weight_decay"}


def build_spec(quick: bool = False, preset: str = "moe-tiny", steps: int = 50, batch_size: int = 16, eval_every: int = 5,
               seed: int = 42, max_experiments: int | None = None, output_root: str = "runs") -> dict:
    grid = QUICK_GRID if quick else LEGACY_GRID
    return {
        "name": "ablation-quick" if quick else "ablation", "seed": seed,
        "task": {"name": "moe-lm", "preset": preset, **({"n_chars": 50_000} if quick else {})},
        "arms": [{"name": "muon", "optimizer": "muon", "lr": grid["muon_lr"][0],
                  "schedule": {"kind": "cosine", "warmup_steps": max(1, steps // 10)},
                  "mitigations": [{"kind": "grad_clip", "max_norm": 1.0}]}],
        "plan": {"steps": 20 if quick else steps, "batch_size": batch_size, "eval_every": eval_every},
        "sweep": {"grid": {PATHS[k]: v for k, v in grid.items()}, "max_trials": max_experiments},
        "output": {"root": output_root, "report": "ablation"},
    }


def build_ablation_report(study_dir) -> Path:
    plt = pyplot()
    report = build_report(study_dir)
    store = StudyStore.open(study_dir)
    frame, fields = sweep_frame(load_summaries(store.root), store.meta["trials"])
    names = {path: short for short, path in PATHS.items()}
    rows = frame.rename(columns=names)
    short = [names.get(f, f) for f in fields]
    results = rows[["trial", *short, "final_train_loss", "final_test_loss", "final_test_accuracy", "diverged"]]
    atomic_write_json(store.root / "final_results.json", json.loads(results.to_json(orient="records")))
    atomic_write_json(store.root / "config.json", {"grid": {names.get(k, k): v for k, v in store.spec["sweep"]["grid"].items()},
                                                   "max_trials": store.spec["sweep"]["max_trials"],
                                                   "task": store.spec["task"], "plan": store.spec["plan"],
                                                   "arm": store.spec["arms"][0]})
    figures = store.root / "figures"
    fig, (dist, heat, top) = plt.subplots(1, 3, figsize=(18, 4.8))
    loss = rows["final_test_loss"].dropna()
    dist.hist(loss, bins=min(30, max(5, len(loss))), color="tab:blue")
    dist.set(title="performance distribution", xlabel="final held-out loss", ylabel="trials")
    numeric = rows[short + ["final_test_loss"]].apply(lambda c: c.astype(float))
    corr = numeric.corr(method="spearman").to_numpy() if len(numeric) > 2 else np.full((len(short) + 1,) * 2, np.nan)
    image = heat.imshow(corr, vmin=-1, vmax=1, cmap="coolwarm")
    labels = short + ["held-out loss"]
    heat.set_xticks(range(len(labels)), labels, rotation=30)
    heat.set_yticks(range(len(labels)), labels)
    heat.set_title("Spearman rank correlation")
    fig.colorbar(image, ax=heat, fraction=0.046)
    best = rows.sort_values("final_test_loss").head(10)
    top.barh([" / ".join(f"{r[k]:g}" for k in short) for _, r in best.iterrows()][::-1],
             best["final_test_loss"].to_numpy()[::-1], color="tab:green")
    top.set(title="top performers: " + " / ".join(short), xlabel="final held-out loss")
    top.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(figures / "ablation.png", dpi=100)
    plt.close(fig)
    return atomic_write_text(report, report.read_text(encoding="utf-8") + (
        "\n## Ablation figures\n\nPerformance distribution, rank correlations between the hyperparameters "
        "and the held-out loss, and the ten best configurations.\n\n![ablation](figures/ablation.png)\n\n"
        "Per-trial results: `final_results.json`; the configuration: `config.json`; statistics: `analysis.json`.\n"))


def analyze_only(results_dir: str | Path) -> Path:
    path = Path(results_dir)
    if not (path / "study.json").is_file():
        raise UserError(f"--results-dir {str(path)!r}: not a study directory (no study.json)")
    return build_ablation_report(path)


register_report("ablation", build_ablation_report, doc="sweep analysis of the Muon ablation")


# ---------------------------------------------------------------- the command


def arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="4 trials of 20 steps on a small corpus")
    parser.add_argument("--max-experiments", type=int, metavar="N", help="a seeded random subset of N grid points")
    parser.add_argument("--preset", default="moe-tiny", help="moe-tiny or moe-384")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-root", default="runs", metavar="DIR")
    parser.add_argument("--analyze-only", action="store_true", help="rebuild the analysis of --results-dir; no training")
    parser.add_argument("--results-dir", metavar="DIR",
                        help="an existing ablation study: analyse it (--analyze-only) or finish its unfinished trials")
    add_sets(parser)
    add_workers(parser)
    add_common(parser)


def run_command(args) -> int:
    if args.analyze_only:
        if not args.results_dir:
            raise UserError("--analyze-only needs --results-dir DIR (the study to analyse)")
        print(analyze_only(args.results_dir))
        return 0
    executor = executor_of(args)
    if args.results_dir:  # run again into an existing study: finished trials are skipped
        print(resume_study(args.results_dir, quiet=args.quiet, executor=executor))
        return 0
    for flag in ("steps", "batch_size", "eval_every"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1")
    if args.max_experiments is not None and args.max_experiments < 1:
        raise UserError("--max-experiments: must be at least 1")
    spec = build_spec(args.quick, args.preset, args.steps, args.batch_size, args.eval_every, args.seed,
                      args.max_experiments, args.output_root)
    print(run_study(spec, args.sets, quiet=args.quiet, executor=executor))
    return 0


register_command("ablation", Command("Muon hyperparameter ablation on the MoE language model", arguments, run_command))
