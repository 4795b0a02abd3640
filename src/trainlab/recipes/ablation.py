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
import pandas as pd

from ..analysis.sweep import sweep_frame
from ..analysis.tables import load, load_summaries
from ..errors import UserError
from ..io import read_json, read_text
from ..report.markdown import build_report
from ..plugin import register_command, register_report
from ..report.plotting import pyplot, save_figure
from ..study import resume_study, run_study
from ..study.store import StudyStore
from .flags import Command, add_common, add_sets, add_workers, executor_of

LEGACY_GRID = {"muon_lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3], "adamw_lr_ratio": [0.01, 0.05, 0.1, 0.2, 0.5],
               "momentum": [0.9, 0.95, 0.99], "weight_decay": [0.01, 0.1, 0.5]}
QUICK_GRID = {"muon_lr": [0.01, 0.03], "adamw_lr_ratio": [0.1, 0.5], "momentum": [0.95], "weight_decay": [0.1]}
PATHS = {"muon_lr": "arms.muon.lr", "adamw_lr_ratio": "arms.muon.adamw_lr_ratio", "momentum": "arms.muon.momentum",
         "weight_decay": "arms.muon.weight_decay"}


def build_spec(quick: bool = False, preset: str = "moe-tiny", steps: int | None = None, batch_size: int = 16,
               eval_every: int = 5, seed: int = 42, max_experiments: int | None = None, output_root: str = "runs") -> dict:
    """The ablation's study: 20 steps by default with --quick, 50 without; `steps` overrides either."""
    grid = QUICK_GRID if quick else LEGACY_GRID
    steps = steps or (20 if quick else 50)
    return {
        "name": "ablation-quick" if quick else "ablation", "seed": seed,
        "task": {"name": "moe-lm", "preset": preset, **({"n_chars": 50_000} if quick else {})},
        "arms": [{"name": "muon", "optimizer": "muon", "lr": grid["muon_lr"][0],
                  "schedule": {"kind": "cosine", "warmup_steps": max(1, steps // 10)},
                  "mitigations": [{"kind": "grad_clip", "max_norm": 1.0}]}],
        "plan": {"steps": steps, "batch_size": batch_size, "eval_every": eval_every},
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
    rows["final_test_perplexity"] = np.exp(rows["final_test_loss"].astype(float).clip(upper=700))
    rows["train_time_s"] = rows["time_s"]
    columns = ["trial", *short, "final_train_loss", "final_train_accuracy", "final_test_loss", "final_test_accuracy",
               "final_test_perplexity", "best_test_accuracy", "diverged", "train_time_s", "threads"]
    results = rows[[c for c in columns if c in rows]]
    records = json.loads(results.to_json(orient="records"))
    store.write_json("final_results.json", records)
    analysis = read_json(store.root / "analysis.json") if (store.root / "analysis.json").exists() else {}
    ranked = results.sort_values("final_test_loss")
    store.write_json("comprehensive_report.json", {
        "study": store.root.name, "trials": len(store.meta["trials"]), "finished": int(len(results)),
        "grid": {names.get(k, k): v for k, v in store.spec["sweep"]["grid"].items()},
        "max_trials": store.spec["sweep"]["max_trials"], "task": store.spec["task"], "plan": store.spec["plan"],
        "arm": store.spec["arms"][0], "results": records,
        "best": json.loads(ranked.head(5).to_json(orient="records")),
        "worst": json.loads(ranked.tail(5).iloc[::-1].to_json(orient="records")),
        "effects": {names.get(f, f): info for f, info in analysis.get("fields", {}).items()},
        "timing": {"threads": sorted({int(t) for t in results.get("threads", pd.Series(dtype=float)).dropna()}),
                   "train_time_s": {"mean": float(results["train_time_s"].mean()), "max": float(results["train_time_s"].max())}
                   if "train_time_s" in results else None}})
    store.write_json("config.json", {"grid": {names.get(k, k): v for k, v in store.spec["sweep"]["grid"].items()},
                                     "max_trials": store.spec["sweep"]["max_trials"],
                                     "task": store.spec["task"], "plan": store.spec["plan"],
                                     "arm": store.spec["arms"][0]})
    figures = store.place("figures")
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
    save_figure(fig, figures / "ablation.png", dpi=100)
    plt.close(fig)
    configuration_curves(store, ranked, short, figures / "configurations.png")
    threads = sorted({int(t) for t in results["threads"].dropna()}) if "threads" in results else []
    timing = ("Train times were measured with " + (f"{threads[0]} torch thread(s) in every trial." if len(threads) == 1
              else f"different thread counts ({', '.join(map(str, threads))}) across trials: compare them only "
                   "within one count (`threads` in final_results.json).")) if threads else ""
    return store.write_text("report.md", read_text(report) + (
        "\n## Ablation figures\n\nPerformance distribution, rank correlations between the hyperparameters "
        "and the held-out loss, and the ten best configurations.\n\n![ablation](figures/ablation.png)\n\n"
        "Held-out loss over training of the best, the median and the worst configuration (each its own line; "
        "`figures/curves.png` above averages every trial).\n\n![configurations](figures/configurations.png)\n\n"
        f"{timing}\n\nPer-trial results: `final_results.json`; everything in one file: `comprehensive_report.json`; "
        "the configuration: `config.json`; statistics: `analysis.json`.\n"))


def configuration_curves(store: StudyStore, ranked: pd.DataFrame, short: list[str], path) -> None:
    """Held-out loss curves of the best, median and worst trial, labelled by their settings."""
    plt = pyplot()
    metrics = load(store.root)
    evals = metrics[metrics["kind"] == "eval"] if len(metrics) else metrics
    picks = {"best": ranked.iloc[0], "median": ranked.iloc[len(ranked) // 2], "worst": ranked.iloc[-1]} if len(ranked) else {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, row in picks.items():
        curve = evals[evals["trial"] == row["trial"]].sort_values("step")
        settings = ", ".join(f"{k} {row[k]:g}" for k in short)
        ax.plot(curve["step"], curve["loss"], marker="o", label=f"{label} (trial {int(row['trial'])}): {settings}")
    ax.set(xlabel="step", ylabel="held-out loss", title="best, median and worst configuration")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


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
    parser.add_argument("--steps", type=int, help="steps per trial (default 50; 20 with --quick)")
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
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1")
    if args.max_experiments is not None and args.max_experiments < 1:
        raise UserError("--max-experiments: must be at least 1")
    spec = build_spec(args.quick, args.preset, args.steps, args.batch_size, args.eval_every, args.seed,
                      args.max_experiments, args.output_root)
    print(run_study(spec, args.sets, quiet=args.quiet, executor=executor))
    return 0


register_command("ablation", Command("Muon hyperparameter ablation on the MoE language model", arguments, run_command))
