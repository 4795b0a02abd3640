"""The fault-recovery study: optimizers (x mitigations) trained in lock-step, all hit by the
same fault at the same site and step, then measured on the held-out split.

    trainlab fault-recovery --num-experiments 10 --steps-after-injection 100 \
        --optimizers adam sgd rmsprop adamw --fault value --target weights

Layout of the study directory:
    all_injection_configs.json       the plan, drawn up front from --seed
    experiment_000/                  one trial per experiment
        config.json metrics.jsonl summary.json          (as every trial)
        injection_config.json injection_batch.npz       (written by the fault event)
        results.json history_<arm>.csv comparison_plots.png recovery_zoom.png
    intermediate_summary.json        every 5 experiments
    final_report.md summary_visualizations.png
"""

import json
import logging
import math
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.recovery import aggregate, best_arm, early_vs_late, head_to_head, near_chance, recovery_metrics
from ..analysis.tables import is_count, is_number, summaries_of
from ..data.paths import find_data_file
from pydantic import ValidationError

from ..engine import Hook, MemorySink, Trial
from ..errors import SpecError, UserError, one_line
from ..faults import STATE_KEYS, TARGETS
from ..faults.plan import FaultPlanOptions, draw_plan, exponent_range, site_sizes
from ..io import Anchor, plain_file, read_json, read_jsonl
from ..plugin import REGISTRIES, register_command, register_report, registries
from ..report.fault_figures import comparison_plots, recovery_zoom, summary_visualizations
from ..report.markdown import fmt, markdown_table
from ..spec import load_spec, resolve
from ..study import trust
from ..study.executor import DEFAULT_THREADS, threads_for, torch_threads
from ..study.runner import run_study
from ..study.store import StudyStore
from .flags import Command, add_common, add_plugins, add_trust, add_workers, executor_of

log = logging.getLogger(__name__)

INJECTION_KEYS = ("step", "target", "tensor", "state", "indices", "fault", "bits", "values", "duration",
                  "eval_every_after")


# ---------------------------------------------------------------- the spec


def default_source() -> str:
    """Real MNIST when its IDX files are in a data directory, else the offline digits."""
    return "idx" if find_data_file(["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"],
                                   ["mnist", "MNIST", "MNIST/raw"]) else "offline"


def build_spec(*, num_experiments=10, steps_after_injection=100, optimizers=("adam", "sgd", "rmsprop", "adamw"),
               seed=42, learning_rate=0.001, task="mnist-cnn", mitigations=("none",), plan_options=None,
               batch_size=64, eval_every=5, eval_every_before=25, dtype="float32", device="cpu", name="fault-recovery",
               output_root="runs", sets=(), plugins=(), pretrain=None) -> tuple[dict, list[dict]]:
    """The study spec (one sweep point per experiment) and the injection plan it contains."""
    task_spec = {"name": task}
    if task.startswith("mnist"):
        task_spec["source"] = default_source()
        if task_spec["source"] == "offline":
            task_spec.update(n_train=4000, n_test=1000)
    arms = []
    for optimizer in optimizers:
        for mitigation in mitigations:
            arm = {"name": optimizer if mitigation == "none" else f"{optimizer}+{mitigation}",
                   "optimizer": optimizer, "lr": learning_rate,
                   "mitigations": [] if mitigation == "none" else [{"kind": mitigation}]}
            arms.append(arm)
    plan_options = dict(plan_options or {})
    if plan_options.get("bit_range") == "exponent":
        plan_options["bit_range"] = exponent_range(dtype)
    options = FaultPlanOptions(**{"eval_every_after": eval_every, **plan_options})
    base = {"name": name, "seed": seed, "plugins": list(plugins), "task": task_spec, "arms": arms,
            "plan": {"steps": options.window[1] + steps_after_injection, "batch_size": batch_size,
                     "eval_every": eval_every_before, "dtype": dtype, "device": device,
                     "init_from": PRETRAINED if pretrain else None},
            "output": {"root": output_root, "report": "fault-recovery", "trial_dir": "experiment_{index:03d}"},
            "recipe": {"pretrain": pretrain}}
    base = load_spec(base, list(sets))  # --set applies to the base (task options, arm hyperparameters ...)
    plan = draw_injection_plan(base, options, num_experiments)
    base["sweep"] = {"repeats": 1, "seeds": None, "grid": {},
                     "points": [{"events": [event], "plan.steps": event["step"] + steps_after_injection,
                                 "seed": seed + i} for i, event in enumerate(plan)]}
    return resolve(base), plan


def draw_injection_plan(spec: dict, options: FaultPlanOptions, n: int) -> list[dict]:
    seen = Trial.inspect(spec)  # the model's shapes and a real batch for activation sizes
    try:
        sizes = site_sizes(seen.model, options.target, seen.batch[0])
        return draw_plan(options, n, spec["seed"], sizes, spec["plan"]["dtype"])
    except ValueError as exc:
        raise UserError(f"--layer/--bit: {exc}") from None


def run(spec: dict, quiet: bool = False, workers: int = 1, executor=None) -> Path:
    return run_study(spec, quiet=quiet, on_create=lambda store, plans: write_plan(store, plans, quiet), workers=workers,
                     executor=executor)


# ---------------------------------------------------------------- pretraining

PRETRAINED = "study:pretrained.pt"


class StopAt(Hook):
    """Ends training once the held-out accuracy reaches `target`."""

    def __init__(self, target: float):
        self.target = target

    def on_eval(self, trial, step):
        if any(arm.last_eval.get("accuracy", 0.0) >= self.target for arm in trial.arms if arm.alive):
            trial.stop_requested = True


def pretrain(store: StudyStore, quiet: bool) -> None:
    """Before the experiments: train the task once with the stated optimizer until the held-out
    accuracy reaches the target (or max_steps); every arm of every experiment starts from these
    weights, so the fault hits models that have learned something. Done again after a kill."""
    options = store.spec.get("recipe", {}).get("pretrain")
    if not options or (store.root / "pretrained.pt").exists():
        return
    spec = {k: v for k, v in store.spec.items() if k not in ("sweep", "events", "probes", "plugin_path")}
    spec = load_spec({**spec, "arms": [{"name": "pretrain", "optimizer": options["optimizer"], "lr": options["lr"]}],
                      "plan": {**spec["plan"], "steps": options["max_steps"], "init_from": None, "eval_every": 25}},
                     registries=store.registries())
    if not quiet:
        log.info(f"pretraining with {options['optimizer']} (lr {options['lr']}) to held-out accuracy "
              f"{options['accuracy']} (at most {options['max_steps']} steps)")
    writer = store.open_stream("pretraining/metrics.jsonl")
    try:
        trial = Trial(spec, sink=writer, hooks=[StopAt(options["accuracy"])])
        summary = trial.run()
    finally:
        writer.close()
    arm = summary["arms"]["pretrain"]
    store.write_json("pretraining.json", {
        **options, "steps": summary["steps"], "held_out_accuracy": arm["final_test_accuracy"],
        "held_out_loss": arm["final_test_loss"], "reached": (arm["final_test_accuracy"] or 0) >= options["accuracy"],
        "chance_accuracy": summary["chance_accuracy"]})
    store.place("pretrained.pt").save_torch(trial.arms[0].model.state_dict())  # whole or not at all: its presence = done


def write_plan(store: StudyStore, plans: list, quiet: bool) -> None:
    """all_injection_configs.json: every experiment's fault, written before any training."""
    per_epoch = Trial.inspect(plans[0].spec).steps_per_epoch
    entries = []
    for i, p in enumerate(plans):
        event = p.spec["events"][0]
        epoch, within = divmod(event["step"] - 1, per_epoch)  # step s is the s-th update: (epoch, step within it)
        entries.append({"experiment": i, "seed": p.seed, "epoch": epoch, "step_in_epoch": within + 1,
                        **{k: event[k] for k in INJECTION_KEYS}})
    store.write_json("all_injection_configs.json", entries)
    if not quiet:
        log.info(f"{len(plans)} experiment(s) x {len(store.spec['arms'])} arm(s); plan: "
              f"{store.root / 'all_injection_configs.json'}")


# ---------------------------------------------------------------- per experiment


def experiment_results(index: int, spec: dict, records: list[dict], injection: dict) -> dict:
    """results.json of one experiment, from its records and injection_config.json."""
    frame = pd.DataFrame.from_records(records)
    evals = frame[frame["kind"] == "eval"]
    died = {r["arm"]: r["step"] for r in records if r.get("event") == "diverged"}
    event = spec["events"][0]
    step = event["step"]
    arms = {arm["name"]: recovery_metrics(evals[evals["arm"] == arm["name"]], step, died.get(arm["name"]))
            for arm in spec["arms"]}
    corruption = {}
    for arm in arms:
        realised = injection["arms"].get(arm, {})
        if realised.get("applied"):
            change = [abs(n - o) for n, o in zip(realised["new"], realised["old"])]
            corruption[arm] = max((c for c in change if math.isfinite(c)), default=math.inf)
            corruption[arm] = corruption[arm] if math.isfinite(corruption[arm]) else None
        else:
            corruption[arm] = None
    return {"experiment": index, "seed": spec["seed"], "injection": {k: event[k] for k in INJECTION_KEYS},
            "applied": {arm: injection["arms"].get(arm, {}).get("applied", False) for arm in arms},
            "reasons": {arm: injection["arms"].get(arm, {}).get("reason") for arm in arms
                        if not injection["arms"].get(arm, {}).get("applied", False)},
            "corruption": corruption, "arms": arms}


def write_experiment(place: Anchor, index: int) -> dict:
    """An experiment's outputs, from its stored records, into its folder `place` (in the study)."""
    folder = place.path
    config = read_json(folder / "config.json")
    records = read_jsonl(folder / "metrics.jsonl")
    results = experiment_results(index, config["spec"], records, read_json(folder / "injection_config.json"))
    (place / "results.json").write_json(results)
    frame = pd.DataFrame.from_records(records)
    for arm in results["arms"]:
        (place / f"history_{arm}.csv").write_text(history(frame, arm).to_csv(index=False))
    evals, train = frame[frame["kind"] == "eval"], frame[frame["kind"] == "train"]
    comparison_plots(evals, results, place / "comparison_plots.png")
    recovery_zoom(evals, train, results, place / "recovery_zoom.png")
    return results


def history(frame: pd.DataFrame, arm: str) -> pd.DataFrame:
    """One row per step: training loss/accuracy and, where evaluated, held-out loss/accuracy."""
    mine = frame[frame["arm"] == arm]
    train = mine[mine["kind"] == "train"][["step", "loss", "accuracy"]].rename(
        columns={"loss": "train_loss", "accuracy": "train_accuracy"})
    evals = mine[mine["kind"] == "eval"][["step", "loss", "accuracy"]].rename(
        columns={"loss": "test_loss", "accuracy": "test_accuracy"})
    return pd.merge(train, evals, on="step", how="outer").sort_values("step")


def finished_results(store: StudyStore) -> list[dict]:
    out = []
    for index, folder in store.trial_dirs():
        if (folder / "summary.json").exists():
            if not (folder / "results.json").exists():
                write_experiment(store.trial_place(index), index)
            out.append(checked_results(folder / "results.json", index, [arm["name"] for arm in store.spec["arms"]]))
    return out


RESULT_NUMBERS = ("accuracy_pre", "loss_pre", "accuracy_post", "loss_post", "accuracy_final", "loss_final",
                  "accuracy_change", "total_recovery", "degradation_rate", "steps_to_recover", "peak_loss_spike",
                  "divergence_step")


def checked_results(path: Path, index: int, arms: list[str]) -> dict:
    """An experiment's results.json as experiment_results writes it (the report reads every
    field of it), else a one-line refusal: removed, it is rebuilt from the experiment's records."""
    r = json_object(path)
    injection, metrics = r.get("injection"), r.get("arms")
    number = lambda value: value is None or is_number(value)  # noqa: E731
    shaped = (r.get("experiment") == index and isinstance(injection, dict) and all(k in injection for k in INJECTION_KEYS)
              and is_count(injection["step"]) and isinstance(injection["indices"], list)
              and all(isinstance(r.get(k), dict) for k in ("applied", "reasons", "corruption"))
              and isinstance(metrics, dict) and sorted(metrics) == sorted(arms)
              and all(isinstance(m, dict) and isinstance(m.get("diverged"), bool)
                      and all(number(m.get(k)) for k in RESULT_NUMBERS) for m in metrics.values())
              and all(number(r["corruption"].get(arm)) for arm in arms))
    if not shaped:
        raise UserError(f"{path} is not the results of experiment {index} as trainlab writes them (was it edited?); "
                        "remove it and `trainlab report` rebuilds it from the experiment's records")
    return r


def on_experiment_end(store: StudyStore, plan) -> None:
    write_experiment(store.trial_place(plan.index), plan.index)
    results = finished_results(store)
    if len(results) % 5 == 0:
        store.write_json("intermediate_summary.json",
                          {"experiments_finished": len(results), "per_arm": aggregate(results),
                           "head_to_head": head_to_head(results)})


# ---------------------------------------------------------------- the final report


def trajectories(store: StudyStore, results: list[dict], points: int = 50) -> dict:
    """Accuracy minus pre-injection accuracy on a common grid of steps after the injection."""
    span = max(r["plan_steps"] - r["injection"]["step"] for r in results) if results else 1
    grid = np.linspace(0, span, points)
    out = {"grid": grid, **{arm: [] for arm in results[0]["arms"]}}
    for r in results:  # each experiment's stream is read once, for every arm
        evals = pd.DataFrame.from_records([x for x in read_jsonl(store.trial_dir(r["experiment"]) / "metrics.jsonl")
                                           if x.get("kind") == "eval"])
        for arm in results[0]["arms"]:
            pre = r["arms"][arm]["accuracy_pre"]
            after = evals[(evals["arm"] == arm) & (evals["step"] >= r["injection"]["step"])] if len(evals) else evals
            if pre is None or len(after) == 0:
                continue
            rel = after["step"].to_numpy() - r["injection"]["step"]
            out[arm].append(np.interp(grid, rel, after["accuracy"].to_numpy() - pre, right=np.nan))
    for arm in results[0]["arms"]:
        out[arm] = np.array(out[arm]) if out[arm] else np.empty((0, points))
    return out


def build_final_report(study_dir: str | Path) -> Path:
    store = StudyStore.open(study_dir)
    results = finished_results(store)
    lines = [f"# Fault recovery: {store.spec['name']}", ""]
    if not results:
        return store.write_text("final_report.md", "\n".join(lines + ["No experiment has finished yet.", ""]))
    for r in results:
        r["plan_steps"] = plan_steps_of(store.trial_dir(r["experiment"]) / "config.json")
    summary_visualizations(results, trajectories(store, results), store.place("summary_visualizations.png"))
    table = aggregate(results)
    spec, first = store.spec, results[0]["injection"]
    first_summary = next(iter(summaries_of(store)), {})  # checked: a number is a number, or missing
    data, chance = first_summary.get("data_source") or "-", first_summary.get("chance_accuracy")
    reached = [a for a in table if table[a]["experiments"]]
    untrained = [a for a in reached if near_chance(table[a]["accuracy_pre"]["mean"], chance)]
    eligible = [a for a in reached if a not in untrained]
    pairs = head_to_head(results, arms=eligible)
    best, why = best_arm(table, pairs, eligible)
    counts = sorted({len(r["injection"]["indices"]) for r in results})
    lines += caveats(table, untrained, eligible, chance) + pretraining_lines(store)
    lines += [
        f"- experiments: {len(results)} of {len(store.meta['trials'])}; arms: {', '.join(table)}",
        f"- task `{spec['task']['name']}` on {data}; {spec['plan']['dtype']} on {spec['plan']['device']}; "
        f"batch {spec['plan']['batch_size']}; held-out evaluation every {spec['plan']['eval_every']} steps, right "
        f"before the injection, and every {first['eval_every_after'] or spec['plan']['eval_every']} steps from it on",
        f"- fault: {first['fault']} on {first['target']}, "
        f"{counts[0] if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'} element(s) per fault; injection steps "
        f"{min(r['injection']['step'] for r in results)}-{max(r['injection']['step'] for r in results)}; "
        f"the plan is in `all_injection_configs.json`",
        f"- chance level (always the most frequent held-out class): {fmt(chance)}" if chance is not None else
        "- chance level: not defined for this task's targets",
        "- every arm of an experiment starts from the same weights, sees the same batches and is hit at the same "
        "site and step; an arm is diverged when its training loss, weights or held-out loss turned non-finite, "
        "whatever its mitigations did; intervals are 95% bootstrap intervals of the mean over experiments "
        "(Wilson for the divergence rate)",
        "", "## Per arm", "",
        "Over the experiments in which the fault reached the arm.", ""]
    rows = []
    for arm, m in table.items():
        ci = lambda k: _ci(m[k])  # noqa: E731
        low, high = m["divergence_interval"]
        rows.append([arm, ci("accuracy_pre"), ci("accuracy_post"), ci("accuracy_final"), ci("accuracy_change"),
                     ci("total_recovery"), ci("degradation_rate"), ci("steps_to_recover"), ci("peak_loss_spike"),
                     f"{m['diverged']}/{m['experiments']}" + (f" [{fmt(low, 2)}, {fmt(high, 2)}]" if low is not None else "")])
    lines += [markdown_table(["arm", "acc pre", "acc post", "acc final", "change (final-post)", "total recovery",
                              "degradation rate", "steps to recover", "peak loss spike", "diverged"], rows), ""]
    lines += [f"**Best arm**: **{best}** by mean final held-out accuracy ({_ci(table[best]['accuracy_final'])}): {why}."
              if best else f"**No best arm**: {why}.", ""]
    not_reached = [a for a, m in table.items() if m["not_reached"]]
    if not_reached:
        lines += ["## Not reached by the fault", "",
                  "These arms were left out of the experiments in which the fault did not reach them (for example "
                  "no optimizer state of the targeted kind): those runs measure no recovery.", ""]
        lines += [markdown_table(["arm", "experiments not reached", "reason (first)"],
                                 [[a, f"{table[a]['not_reached']}/{len(results)}", first_reason(results, a)]
                                  for a in not_reached]), ""]
    lines += ["## Head to head", "",
              "Between the arms that were trained before the fault and reached by it. Win = higher final held-out "
              "accuracy in the same experiment (a diverged arm loses). Difference = mean paired difference in final "
              "accuracy (A - B) over experiments where both survived, with a bootstrap 95% interval and a Wilcoxon "
              "signed-rank p-value.", ""]
    rows = [[p["arm_a"], p["arm_b"], f"{p['wins_a']}-{p['wins_b']}-{p['ties']}", p["win_rate_a"], p["mean_diff"],
             f"[{fmt(p['ci_low'])}, {fmt(p['ci_high'])}]" if p["ci_low"] is not None else "-", p["p_value"]]
            for p in pairs]
    lines += [markdown_table(["A", "B", "wins A-B-ties", "win rate A", "difference", "95% interval", "p"], rows)
              if rows else "No two arms to compare.", ""]
    timing = early_vs_late(results)
    lines += ["## Early vs late injection", "",
              f"Mean total recovery for injections at or before step {fmt(timing['median_step'])} (early) and after (late).", ""]
    lines += [markdown_table(["arm", "early", "late"], [[a, timing[a]["early"], timing[a]["late"]] for a in table]), ""]
    lines += ["## Divergence", ""]
    lines += [markdown_table(["arm", "diverged", "rate", "95% interval (Wilson)"],
                             [[a, f"{m['diverged']}/{m['experiments']}", m["divergence_rate"],
                               f"[{fmt(m['divergence_interval'][0], 2)}, {fmt(m['divergence_interval'][1], 2)}]"
                               if m["divergence_interval"][0] is not None else "-"] for a, m in table.items()]), ""]
    lines += ["## Findings", ""] + [f"- {f}" for f in findings(table, pairs, eligible)] + [""]
    lines += ["## Figures", "", "![summary](summary_visualizations.png)", "",
              "Panels: accuracy change per arm (box plots); mean recovery trajectory with a ±1 std band; win-rate "
              "matrix; degradation-rate distributions; total recovery against the size of the corruption; mean "
              "total recovery by injection step. Each `experiment_NNN/` has `comparison_plots.png` and "
              "`recovery_zoom.png` with the injection step marked.", ""]
    return store.write_text("final_report.md", "\n".join(lines))


def plan_steps_of(path: Path) -> int:
    """The planned steps in an experiment's config.json."""
    config = json_object(path)
    spec = config.get("spec") if isinstance(config.get("spec"), dict) else {}
    steps = spec.get("plan", {}).get("steps") if isinstance(spec.get("plan"), dict) else None
    if not is_count(steps):
        raise UserError(f"{path}: no spec.plan.steps (a number of steps); was it edited?")
    return steps


def pretraining_lines(store: StudyStore) -> list[str]:
    path = store.root / "pretraining.json"
    if not path.exists():
        return ["- no pretraining: every experiment starts from freshly initialised weights", ""] \
            if not store.spec.get("recipe", {}).get("pretrain") else []
    p = json_object(path)
    missing = [k for k in ("optimizer", "lr", "steps", "held_out_accuracy", "accuracy", "reached") if k not in p]
    if missing:
        raise UserError(f"{path}: no {missing[0]!r}; was it edited? (remove it and pretrained.pt to pretrain again)")
    line = (f"- every experiment starts from weights pretrained once with {p['optimizer']} (lr {p['lr']}) for "
            f"{p['steps']} steps to held-out accuracy {fmt(p['held_out_accuracy'], 3)} (target {p['accuracy']})")
    if not p["reached"]:
        return [f"> **Pretraining fell short**: {p['steps']} steps reached held-out accuracy "
                f"{fmt(p['held_out_accuracy'], 3)}, below its target {p['accuracy']}.", "", line, ""]
    return [line, ""]


def caveats(table: dict, untrained: list[str], eligible: list[str], chance: float | None) -> list[str]:
    """What the study cannot conclude, said before any number."""
    out = []
    if untrained:
        accuracies = ", ".join(f"{a} {fmt(table[a]['accuracy_pre']['mean'], 3)}" for a in untrained)
        if not eligible:
            out.append(f"> **No conclusion**: every arm was near chance (held-out accuracy before the fault {accuracies}; "
                       f"chance {fmt(chance, 3)}): the models had not learned the task, so their recovery says nothing "
                       "about the optimizers. Train longer or with a larger learning rate before the injection window.")
        else:
            out.append(f"> **Untrained arms left out**: {accuracies} held-out accuracy before the fault (chance "
                       f"{fmt(chance, 3)}): they are not ranked or compared.")
    never = [a for a, m in table.items() if not m["experiments"]]
    if never:
        out.append(f"> **Never reached by the fault**: {', '.join(never)} (see below); not ranked or compared.")
    return out + ([""] if out else [])


def first_reason(results: list[dict], arm: str) -> str:
    return next((r.get("reasons", {}).get(arm) for r in results if not r["applied"].get(arm, True)), None) or "-"


def _ci(m: dict) -> str:
    if m["mean"] is None:
        return "-"
    if m["ci_low"] is None:
        return fmt(m["mean"])
    return f"{fmt(m['mean'])} [{fmt(m['ci_low'], 3)}, {fmt(m['ci_high'], 3)}]"


def findings(table: dict, pairs: list[dict], eligible: list[str]) -> list[str]:
    out = []
    ranked = sorted(eligible, key=lambda a: table[a]["accuracy_final"]["mean"] or -1, reverse=True)
    if len(ranked) > 1:
        out.append("ranking by mean final held-out accuracy (not a verdict: see the tests below): " + " > ".join(ranked))
    for p in pairs:
        if p["p_value"] is not None and p["p_value"] < 0.05:
            winner = p["arm_a"] if p["mean_diff"] > 0 else p["arm_b"]
            out.append(f"{winner} beats {p['arm_b'] if winner == p['arm_a'] else p['arm_a']} in final accuracy "
                       f"(difference {fmt(abs(p['mean_diff']))}, Wilcoxon p = {fmt(p['p_value'], 2)})")
    if pairs and not any(p["p_value"] is not None and p["p_value"] < 0.05 for p in pairs):
        out.append("no pair of arms differs significantly at p < 0.05 (Wilcoxon signed-rank) with this many experiments")
    for arm, m in table.items():
        if m["diverged"]:
            out.append(f"{arm} diverged in {m['diverged']} of {m['experiments']} experiment(s)")
    recovering = [a for a in eligible if table[a]["steps_to_recover"]["mean"] is not None and not table[a]["diverged"]]
    if len(recovering) > 1:
        a = min(recovering, key=lambda k: table[k]["steps_to_recover"]["mean"])
        out.append(f"fastest to recover to within 0.01 of its pre-injection accuracy, among arms that never diverged: "
                   f"{a} ({fmt(table[a]['steps_to_recover']['mean'])} steps on average)")
    return out


register_report("fault-recovery", build_final_report, on_trial_end=on_experiment_end, prepare=pretrain,
                doc="fault-recovery outputs per experiment and final_report.md")


# ---------------------------------------------------------------- replay


def replay(experiment_dir: str | Path, threads: int | None = None) -> tuple[bool, list[str]]:
    """Re-run one experiment from its config.json and compare with what it stored, with the
    torch threads its study ran with (or `threads`, with a warning when they differ)."""
    folder = Path(experiment_dir)
    config, stored, stored_injection, stored_batch = experiment_inputs(folder)
    study = study_of(folder, config)
    try:
        spec = load_spec(config["spec"])
    except SpecError as err:  # said of the file it came from
        raise UserError(f"{folder / 'config.json'}: its spec is not valid: {err}") from None
    if not spec["events"] or spec["events"][0]["kind"] != "fault":
        raise UserError(f"{folder / 'config.json'}: its spec injects no fault (events.0 is not kind: fault); "
                        "not a fault experiment")
    with tempfile.TemporaryDirectory() as tmp:
        sink = MemorySink()
        with torch_threads(threads_for(study, threads) if study else threads or DEFAULT_THREADS):
            Trial(spec, sink=sink, artifact_dir=Path(tmp), study_root=folder.resolve().parent).run()
        injection = read_json(Path(tmp) / "injection_config.json")
        fresh = experiment_results(config["index"], spec, sink.records, injection)
        batch_same = same_arrays(stored_batch, read_batch(Path(tmp) / "injection_batch.npz"))
    problems = [f"results.json differs at {key}" for key in _diff(stored, json.loads(json.dumps(fresh)))]
    if stored_injection["arms"] != json.loads(json.dumps(injection["arms"])):
        problems.append("the realised fault values (injection_config.json) differ")
    if not batch_same:
        problems.append("the injection batch (injection_batch.npz) differs")
    return not problems, problems


def study_of(folder: Path, config: dict) -> StudyStore | None:
    """The study an experiment folder sits in (its trust and its thread count), None for a folder
    on its own, whose plugin modules are imported only with --trust."""
    root = folder.resolve().parent
    if (root / "study.json").is_file():
        study = StudyStore.open(root)
        study.require_trust("fault replay")
        return study
    modules = (config.get("spec") or {}).get("plugins") if isinstance(config.get("spec"), dict) else None
    if modules and not trust.ASKED:
        raise UserError(f"fault replay: {folder} is not inside its study, so nothing vouches for its plugin modules "
                        f"({', '.join(map(str, modules))}); if you trust its code, run again with --trust")
    return None


def experiment_inputs(folder: Path) -> tuple[dict, dict, dict, dict | None]:
    """What replay compares against (config.json, results.json, injection_config.json and the
    injection batch), read and checked before anything trains: a malformed experiment is one
    line now, not a traceback after the training."""
    for name in ("config.json", "results.json", "injection_config.json"):
        if not (folder / name).is_file():
            raise UserError(f"{str(folder)!r} is not a finished fault experiment (no {name})")
    config, results, injection = (json_object(folder / name)
                                  for name in ("config.json", "results.json", "injection_config.json"))
    index = config.get("index")
    if not (isinstance(index, int) and not isinstance(index, bool) and isinstance(config.get("spec"), dict)):
        raise UserError(f"{folder / 'config.json'}: not a trial's config (it needs an integer index and a spec)")
    for name, stored in (("results.json", results), ("injection_config.json", injection)):
        if not isinstance(stored.get("arms"), dict):
            raise UserError(f"{folder / name}: no record per arm ('arms' is not a mapping); was it edited?")
    return config, results, injection, read_batch(folder / "injection_batch.npz")


def json_object(path: Path) -> dict:
    try:
        value = read_json(path)
    except ValueError as exc:
        raise UserError(f"{path} cannot be read: {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object; was it edited?")
    return value


def read_batch(path: Path) -> dict | None:
    """The arrays of an injection batch (.npz), None when there is none."""
    if not path.exists():
        return None
    try:
        data = np.load(plain_file(path), allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("one array, not an archive of arrays")
        with data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # not an .npz, or a torn one
        raise UserError(f"{path} cannot be read as an injection batch (.npz): {one_line(exc)}") from None


def same_arrays(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    return set(a) == set(b) and all(np.array_equal(a[name], b[name]) for name in a)


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in sorted(keys) for d in _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return [] if same else [path]


# ---------------------------------------------------------------- the commands


def arguments(parser) -> None:
    parser.add_argument("--num-experiments", type=int, default=10, metavar="N")
    parser.add_argument("--steps-after-injection", type=int, default=100, metavar="N")
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd", "rmsprop", "adamw"], metavar="OPT")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--learning-rate", type=float, default=0.001, metavar="LR")
    parser.add_argument("--task", default="mnist-cnn")
    parser.add_argument("--fault", default="value", help=f"a fault model: {', '.join(REGISTRIES.fault_models.names())}")
    parser.add_argument("--target", default="weights", help=", ".join(TARGETS))
    parser.add_argument("--mitigations", nargs="+", default=["none"], metavar="M",
                        help=f"{', '.join(REGISTRIES.mitigations.names())}: one arm per optimizer x mitigation")
    parser.add_argument("--injection-window", default="20:120", metavar="LO:HI", help="steps the injection is drawn from")
    parser.add_argument("--layer", help="parameter (or module, for activations) to hit; default: drawn per experiment")
    parser.add_argument("--count", type=int, default=16, help="elements hit per fault")
    parser.add_argument("--scattered", action="store_true", help="hit scattered elements instead of contiguous ones")
    parser.add_argument("--bit", type=int, help="bitflip: this bit")
    parser.add_argument("--bit-range", metavar="LO:HI|exponent", help="bitflip: a bit drawn from this range")
    parser.add_argument("--bits-per-element", type=int, default=1)
    parser.add_argument("--value", type=float, help="value/stuck: this value (default: log-uniform in --value-range)")
    parser.add_argument("--value-range", default="3.6e2:1.2e8", metavar="LO:HI")
    parser.add_argument("--noise-scale", type=float, default=0.1)
    parser.add_argument("--duration", type=int, default=1, help="stuck: steps")
    parser.add_argument("--state", default="first_moment", help=f"optimizer_state: {' or '.join(STATE_KEYS)}")
    parser.add_argument("--pretrain-accuracy", type=float, default=0.4, metavar="ACC",
                        help="train the task once to this held-out accuracy before the experiments, which all start "
                             "from those weights (0: no pretraining)")
    parser.add_argument("--pretrain-optimizer", default="adam", metavar="OPT")
    parser.add_argument("--pretrain-lr", type=float, default=0.01, metavar="LR")
    parser.add_argument("--pretrain-max-steps", type=int, default=2000, metavar="N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=5, help="held-out evaluation cadence from the injection on")
    parser.add_argument("--eval-every-before", type=int, default=25, help="held-out evaluation cadence before it")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="fault-recovery")
    parser.add_argument("--output-root", default="runs", metavar="DIR")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field of the study spec, e.g. --set task.n_train=2000")
    add_workers(parser)
    add_common(parser)
    add_plugins(parser)


def parse_range(flag: str, text: str, kind=float) -> tuple:
    try:
        lo, hi = (kind(part) for part in text.split(":"))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected LO:HI, e.g. {'20:120' if kind is int else '1e2:1e8'}") from None
    return lo, hi


def run_command(args) -> int:
    executor = executor_of(args)
    found = registries(args.plugins)
    for flag, names, registry in (("--optimizers", args.optimizers, found.optimizers),
                                  ("--pretrain-optimizer", [args.pretrain_optimizer], found.optimizers),
                                  ("--mitigations", args.mitigations, found.mitigations), ("--task", [args.task], found.tasks)):
        for name in names:
            try:
                registry.get(name)
            except SpecError as err:
                raise UserError(f"{flag}: {err.message}") from None
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
        spec, _ = build_spec(
            num_experiments=args.num_experiments, steps_after_injection=args.steps_after_injection,
            optimizers=args.optimizers, seed=args.seed, learning_rate=args.learning_rate, task=args.task,
            mitigations=args.mitigations, plan_options=plan, batch_size=args.batch_size, eval_every=args.eval_every,
            eval_every_before=args.eval_every_before,
            dtype=args.dtype, device=args.device, name=args.name, output_root=args.output_root, sets=args.sets,
            plugins=args.plugins, pretrain=pretraining_of(args))
    except ValidationError as err:
        first = err.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = str(first["loc"][0]) if first["loc"] else next(
            (f for f in ("window", "value_range", "bit_range") if message.startswith(f)), "fault")
        flag = {"window": "--injection-window"}.get(field, f"--{field.replace('_', '-')}")
        raise UserError(f"{flag}: {message}") from None
    print(run(spec, quiet=args.quiet, executor=executor))
    return 0


def pretraining_of(args) -> dict | None:
    if not 0 <= args.pretrain_accuracy < 1:
        raise UserError(f"--pretrain-accuracy: must be in [0, 1), got {args.pretrain_accuracy}")
    if args.pretrain_accuracy == 0:
        return None
    if args.pretrain_lr <= 0 or args.pretrain_max_steps < 1:
        raise UserError("--pretrain-lr and --pretrain-max-steps: must be positive")
    return {"optimizer": args.pretrain_optimizer, "lr": args.pretrain_lr, "accuracy": args.pretrain_accuracy,
            "max_steps": args.pretrain_max_steps}


def fault_arguments(parser) -> None:
    tools = parser.add_subparsers(dest="fault_command", metavar="COMMAND", required=True)
    replay_parser = tools.add_parser("replay", help="re-run one experiment and check it reproduces its results exactly")
    replay_parser.add_argument("experiment_dir")
    replay_parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: the study's, "
                               "as its experiments ran; another count may change the last bits)")
    add_common(replay_parser)
    add_trust(replay_parser)


def replay_command(args) -> int:
    ok, problems = replay(args.experiment_dir, args.threads)
    if ok:
        print(f"{args.experiment_dir}: replay reproduces results.json, the realised fault values and the "
              "injection batch exactly")
        return 0
    for problem in problems:
        print(f"{args.experiment_dir}: {problem}")
    return 1


register_command("fault-recovery", Command(
    "which optimizer recovers from the same injected fault?", arguments, run_command,
    description="Train optimizers in lock-step, hit them all with the same fault at the same site and step, and "
                "measure recovery on the held-out split."))
register_command("fault", Command("fault tools: replay an experiment", fault_arguments, replay_command))
