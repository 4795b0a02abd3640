"""Study directory -> pandas DataFrames."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..study.store import StudyStore, read_json, read_jsonl


def load(study_dir: str | Path) -> pd.DataFrame:
    """Every metrics record of every trial, one row each, with `trial` and `seed` columns and
    one column per swept field (its value in that trial), so `df.groupby("arms.adam.lr")` works."""
    store = StudyStore.open(study_dir)
    swept = swept_values(store.meta.get("trials", []))
    frames = []
    for index, folder in store.trial_dirs():
        records = read_jsonl(folder / "metrics.jsonl")
        if not records:
            continue
        try:
            seed = read_json(folder / "config.json")["seed"]
        except (OSError, ValueError, KeyError, TypeError):
            seed = None
        frame = pd.DataFrame.from_records(records)
        frame = frame.drop(columns=[c for c in ("trial", "seed", *swept) if c in frame.columns])  # ours, not a record's
        frame.insert(0, "trial", index)
        frame.insert(1, "seed", seed)
        for i, (field, values) in enumerate(swept.items()):
            frame.insert(2 + i, field, values.get(index))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["trial", "seed", *swept, "kind", "arm", "step"])
    frame = pd.concat(frames, ignore_index=True)
    for column in NUMERIC.intersection(frame.columns):  # a garbled value is missing, not a crash further on
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in TEXT.intersection(frame.columns):
        frame[column] = frame[column].where(frame[column].map(lambda value: isinstance(value, str)))
    return frame


def swept_values(trials: list[dict]) -> dict[str, dict[int, object]]:
    """Swept field -> {trial index: the value that trial used}, from study.json. A list or
    mapping value becomes its JSON text, so that it can be grouped by."""
    swept: dict[str, dict[int, object]] = {}
    for trial in trials:
        overrides = trial.get("overrides")
        for field, value in (overrides.items() if isinstance(overrides, dict) else ()):
            if field in RESERVED:
                continue
            swept.setdefault(field, {})[trial["index"]] = value if not isinstance(value, (list, dict)) else \
                json.dumps(value, sort_keys=True)
    return swept


RESERVED = {"trial", "seed", "kind", "arm", "step"}  # a swept field never hides these columns


NUMERIC = {"step", "loss", "accuracy", "lr", "perplexity", "epsilon", "time_s"}
TEXT = {"kind", "arm", "event", "probe", "reason"}


def load_summaries(study_dir: str | Path) -> pd.DataFrame:
    """One row per (finished trial, arm) with the trial summary's numbers, and one column per
    swept field (as `load`)."""
    store = StudyStore.open(study_dir)
    swept = swept_values(store.meta.get("trials", []))
    rows = []
    for summary in store.summaries():
        for arm, numbers in summary.get("arms", {}).items():
            rows.append({"trial": summary["index"], "seed": summary.get("seed"),
                         **{field: values.get(summary["index"]) for field, values in swept.items()},
                         "arm": arm, "threads": summary.get("threads"), **numbers})
    return pd.DataFrame(rows)


def arm_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per arm across trials: mean and std of the final numbers, divergence count."""
    summaries = summaries.assign(final_test_perplexity=np.exp(summaries["final_test_loss"].astype(float).clip(upper=700)))
    metrics = ["final_train_loss", "final_test_loss", "final_test_accuracy", "best_test_accuracy", "time_s",
               "final_test_perplexity"]
    grouped = summaries.groupby("arm", sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{m}_{stat}" for m, stat in table.columns]
    table["trials"] = grouped.size()
    table["diverged"] = grouped["diverged"].sum().astype(int)
    return table.reset_index()
