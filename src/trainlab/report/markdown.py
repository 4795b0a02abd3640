"""report.md: what was run, on which data, and how each arm did (tables + figure)."""

import json
from pathlib import Path

from ..analysis.sweep import analyse, sweep_frame
from ..analysis.tables import arm_table, load, load_summaries, summaries_of
from ..plugin import Registries, register_report
from ..study.executor import threads_for, torch_threads
from ..study.store import StudyStore
from .diagnostics import diagnostics_section
from .figures import curves_figure, effects_figure
from .text import fmt, markdown_table


def mean_std(row, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return fmt(mean) if row["trials"] < 2 else f"{fmt(mean)} ± {fmt(std, 2)}"


def build_study_report(study_dir: str | Path, registries: Registries | None = None) -> Path | None:
    """Rebuild a study's report with the builder its spec names (output.report)."""
    store = StudyStore.open(study_dir)
    registries = registries or store.registries()
    with torch_threads(threads_for(store, None)):  # what a report computes, it computes as the trials did
        return registries.reports.get(store.spec["output"]["report"]).target(store.root)


def language_model(store: StudyStore) -> bool:
    """Whether the study's task is a language model (perplexity columns)."""
    task = store.registries().tasks.get(store.spec["task"]["name"]).target
    options = task.Options(**{k: v for k, v in store.spec["task"].items() if k != "name"})
    return bool(task.is_language_model(options))


def build_report(study_dir: str | Path) -> Path:
    """The standard report: report.md and figures/ from the stored metrics and summaries."""
    store = StudyStore.open(study_dir)
    spec = store.spec
    summaries = load_summaries(store.root)
    metrics = load(store.root)
    finished = summaries["trial"].nunique() if len(summaries) else 0
    plan = spec["plan"]
    arms = ", ".join(f"`{a['name']}` ({a['optimizer']}, lr {a['lr']})" for a in spec["arms"])
    lines = [
        f"# {spec['name']}",
        "",
        *_notes(store),
        f"- task: `{spec['task']['name']}`; data: {_data_sources(store)}",
        f"- arms: {arms}",
        f"- plan: {plan['steps'] or plan['epochs']} {'steps' if plan['steps'] else 'epochs'}, batch {plan['batch_size']}, "
        f"sampler {plan['sampler']}, {plan['dtype']} on {plan['device']}, held-out evaluation every {plan['eval_every']} steps",
        f"- trials finished: {finished} of {len(store.meta.get('trials', []))}",
        *[f"- trial {f['index']} failed: {f['reason']} (`trainlab resume` tries it again)" for f in store.failures()],
        f"- trainlab {store.meta.get('trainlab')}, torch {store.meta.get('torch')}, git {store.meta.get('git_revision') or '-'}",
        "",
    ]
    if finished:
        table = arm_table(summaries)
        lines += ["## Arms", "", "Mean over trials (± standard deviation when there are several).", ""]
        headers = ["arm", "final train loss", "held-out loss", "held-out accuracy", "best held-out accuracy",
                   "diverged", "train time (s)"]
        rows = [[r["arm"], mean_std(r, "final_train_loss"), mean_std(r, "final_test_loss"),
                 mean_std(r, "final_test_accuracy"), mean_std(r, "best_test_accuracy"), f"{r['diverged']}/{r['trials']}",
                 mean_std(r, "time_s")] for _, r in table.iterrows()]
        if language_model(store):
            headers.insert(3, "held-out perplexity")  # each trial's exp(held-out loss), then their mean
            for row, (_, r) in zip(rows, table.iterrows()):
                row.insert(3, mean_std(r, "final_test_perplexity"))
        lines += [markdown_table(headers, rows), ""]
        if len(table) > 1:
            best = table.sort_values("final_test_accuracy_mean", ascending=False).iloc[0]
            lines += [f"Highest mean held-out accuracy at the end: **{best['arm']}** "
                      f"({fmt(best['final_test_accuracy_mean'])}); see the spread across trials before reading it "
                      "as a ranking.", ""]
        curves_figure(metrics, store.place("figures/curves.png"))
        lines += ["## Curves", "", "![loss and accuracy](figures/curves.png)", ""]
        lines += _sweep(store, summaries) + diagnostics_section(store, metrics) + _splits(store) + _privacy(store)
        lines += _divergences(summaries) + _samples(summaries)
    else:
        lines += ["No trial has finished yet.", ""]
    return store.write_text("report.md", "\n".join(lines))


METHOD_NAMES = {"fanova": "fANOVA", "ped_anova": "PED-ANOVA"}


def _sweep(store: StudyStore, summaries) -> list[str]:
    """Hyperparameter effects, when the study swept anything."""
    frame, fields = sweep_frame(summaries, store.meta.get("trials", []))
    if not fields:
        return []
    language = language_model(store)
    metric = "final_test_loss" if language else "final_test_accuracy"  # perplexity follows the loss
    result = analyse(frame, fields, metric=metric, higher_is_better=not language, seed=store.spec["seed"],
                     arms=[arm["name"] for arm in store.spec["arms"]])
    if not result["fields"]:
        return []
    store.write_text("analysis.json", json.dumps(result, indent=2, default=str))
    effects_figure(frame, fields, result["metric"], store.place("figures/effects.png"))
    pick = max if result["higher_is_better"] else min
    label = "held-out accuracy" if result["higher_is_better"] else "held-out loss"
    rows, values = [], []
    for field, info in result["fields"].items():
        best = pick(info["by_value"], key=lambda v: v["adjusted"] if v["adjusted"] is not None else v["mean"])
        rows.append([field, best["value"], info["spearman"], info["spearman_p"], info.get("importance"),
                     *(info.get(method) for method in result.get("importance_methods", []))])
        for v in info["by_value"]:
            interval = f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]" if v["ci_low"] is not None else "-"
            values.append([field, v["value"], v["n"], v["mean"], interval, v["adjusted"]])
    rec = result["recommendation"]
    lines = ["## Hyperparameters", "",
             f"The {label} by value: the raw mean over the trials (and arms) that had the value, with n and a bootstrap "
             "95% interval, and the adjusted mean of a main-effects least-squares model over every swept field "
             "(each other field averaged over its values alike: a value is not credited with the other fields it "
             "happened to be drawn with). Details: `analysis.json`.", "",
             markdown_table(["field", "value", "n", f"raw mean {label}", "95% interval", "adjusted mean"], values), "",
             f"Per field: the value with the best (adjusted, else raw) mean; Spearman rank correlation with the {label}; "
             "permutation importance = drop in a random forest's R^2 (scikit-learn) when the field is shuffled"
             + ("; fANOVA = share of the metric's variance the field explains (Optuna's functional ANOVA)"
                if "fanova" in result.get("importance_methods", []) else "")
             + ("; PED-ANOVA = how differently the field is spread in the best 10% of rows (Optuna), both normalised "
                "to sum to 1" if "ped_anova" in result.get("importance_methods", []) else "") + ".", "",
             markdown_table(["field", "best value", "Spearman", "p", "permutation importance",
                             *(METHOD_NAMES[m] for m in result.get("importance_methods", []))], rows), "",
             "Best configuration: trial " + str(rec["trial"]) + f" (`{rec['arm']}`), "
             + ", ".join(f"{f} = {rec[f]}" for f in fields) + f": {label} {fmt(rec[result['metric']])}.", "",
             "![effects](figures/effects.png)", ""]
    inter = result.get("interaction")
    if inter:
        a, b = inter["fields"]
        table = [[r, *row] for r, row in zip(inter["rows"], inter["mean"])]
        lines += [f"Interaction of the two most important fields ({label}, mean; rows {a}, columns {b}); "
                  f"largest departure from an additive model: {fmt(inter['non_additivity'])}.", "",
                  markdown_table([f"{a} \\ {b}", *inter["columns"]], table), ""]
    return lines


def _notes(store: StudyStore) -> list[str]:
    """What the trials substituted or could not do as asked, stated before any number."""
    counts, total = {}, 0
    for summary in summaries_of(store):
        total += 1
        for note in summary.get("notes") or []:
            counts[note] = counts.get(note, 0) + 1
    if not counts:
        return []
    return [f"> **Note:** {note}" + (f" ({n} of {total} trials)" if n < total else "") for note, n in counts.items()] + [""]


def _splits(store: StudyStore) -> list[str]:
    """Optimizers that split the parameters (Muon + AdamW): what each part got, first trial that has them."""
    for summary in summaries_of(store):
        rows = []
        for arm, info in summary["arms"].items():
            for part, group in (info.get("param_groups") or {}).items():
                if isinstance(group, dict) and "parameters" in group:
                    roles = ", ".join(f"{role} {n:,}" for role, n in group["roles"].items()) or "-"
                    rows.append([arm, part, f"{group['parameters']:,}", group["tensors"], roles])
        if rows:
            return ["## Parameter split", "", f"Which parameters each part of a split optimizer trained (trial "
                    f"{summary['index']}; roles read from a forward pass, see docs/optimizers.md). Tensor names: "
                    "`param_groups` in each trial's summary.json.", "",
                    markdown_table(["arm", "part", "parameters", "tensors", "by role"], rows), ""]
    return []


def _data_sources(store: StudyStore) -> str:
    sources = {s.get("data_source") for s in summaries_of(store)} - {None}
    return "; ".join(sorted(sources)) or "-"


def _privacy(store: StudyStore) -> list[str]:
    """DP-SGD arms: the privacy spent (first trial that has them)."""
    arms = {a["name"]: a["privacy"] for a in store.spec["arms"] if a.get("privacy")}
    if not arms:
        return []
    for summary in summaries_of(store):
        rows = [[name, p["mode"], arms[name]["max_grad_norm"], fmt(p["noise_multiplier"]), fmt(p["sample_rate"]),
                 fmt(p["epsilon"]), p["delta"], p["accountant"]]
                for name, p in ((n, summary["arms"][n].get("privacy")) for n in arms if n in summary["arms"]) if p]
        if rows:
            return ["## Privacy", "", f"DP-SGD arms of trial {summary['index']}: epsilon spent by the end of training "
                    "(Opacus accountant; every eval record carries it as training goes).", "",
                    markdown_table(["arm", "mode", "C", "noise multiplier", "sample rate", "epsilon", "delta",
                                    "accountant"], rows), ""]
    return []


def _divergences(summaries) -> list[str]:
    diverged = summaries[summaries["diverged"]]
    if diverged.empty:
        return []
    rows = [[r["trial"], r["arm"], r["diverged_step"], r["diverged_reason"]] for _, r in diverged.iterrows()]
    return ["## Divergence", "", markdown_table(["trial", "arm", "step", "reason"], rows), ""]


def _samples(summaries) -> list[str]:
    if "sample" not in summaries:
        return []
    first = summaries[summaries["trial"] == summaries["trial"].min()]
    lines = ["## Samples (first trial, temperature 0.8)", ""]
    lines += [f"- `{r['arm']}`: `{r['sample']}`" for _, r in first.iterrows() if isinstance(r["sample"], str)]
    return lines + [""]




def no_report(study_dir) -> None:
    return None


register_report("standard", build_report, doc="report.md: arms table and loss/accuracy curves")
register_report("none", no_report, doc="no report")
