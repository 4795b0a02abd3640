"""Study directory -> pandas DataFrames."""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..study.store import StudyStore, read_json, read_jsonl

log = logging.getLogger(__name__)


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
        values = frame[column]
        if values.dtype == object:  # mixed values: only then can one be an int past the float range
            values = values.map(lambda value: None if isinstance(value, int) and abs(value) > sys.float_info.max
                                else value)
        frame[column] = pd.to_numeric(values, errors="coerce")
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
    for summary in summaries_of(store, warn=True):
        for arm, numbers in summary["arms"].items():
            rows.append({**numbers, "trial": summary["index"], "seed": summary["seed"],  # ours, not the arm's
                         **{field: values.get(summary["index"]) for field, values in swept.items()},
                         "arm": arm, "threads": summary["threads"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- summaries as the tables use them
# A summary.json may have been edited or damaged: a number that is a string, a list where a
# mapping goes. Each field the report reads is checked here, once; what is not of its kind is
# missing (with a warning), so no table or figure further on meets it.

ARM_NUMBERS = ("final_train_loss", "final_train_accuracy", "final_test_loss", "final_test_accuracy",
               "best_test_accuracy", "time_s", "diverged_step")
PRIVACY_NUMBERS = ("noise_multiplier", "sample_rate", "epsilon", "delta")


def is_number(value) -> bool:
    """A float (NaN and inf included: a diverged arm's loss) or an int a float can hold."""
    return isinstance(value, float) or (is_count(value) and abs(value) <= sys.float_info.max)


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def summaries_of(store: StudyStore, warn: bool = False) -> list[dict]:
    """The finished trials' summaries, each field the report reads of its kind or missing
    (a warning names each one, when `warn`)."""
    return [clean_summary(summary, log.warning if warn else lambda *args: None) for summary in store.summaries()]


def clean_summary(summary: dict, warn) -> dict:
    where = f"trial {summary['index']} summary.json"
    notes = summary.get("notes")
    if notes is not None and not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        warn("%s: notes is not a list of texts; left out", where)
    return {**summary, "seed": summary.get("seed") if is_count(summary.get("seed")) else None,
            "threads": summary.get("threads") if is_count(summary.get("threads")) else None,
            "notes": [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else [],
            "data_source": summary.get("data_source") if isinstance(summary.get("data_source"), str) else None,
            "chance_accuracy": summary.get("chance_accuracy") if is_number(summary.get("chance_accuracy")) else None,
            "arms": {arm: clean_arm(numbers, f"{where}: arms.{arm}", warn) for arm, numbers in summary["arms"].items()}}


def clean_arm(numbers: dict, where: str, warn) -> dict:
    arm = dict(numbers)
    for field in ARM_NUMBERS:
        value = arm.get(field)
        if value is not None and not is_number(value):
            warn("%s.%s is %s, not a number: taken as missing", where, field, short(value))
            value = None
        arm[field] = value
    if not isinstance(arm.get("diverged", False), bool):
        warn("%s.diverged is %s, not true or false: taken as not diverged", where, short(arm["diverged"]))
    arm["diverged"] = arm.get("diverged") is True
    arm["diverged_reason"] = arm.get("diverged_reason") if isinstance(arm.get("diverged_reason"), str) else None
    for field, shaped in (("param_groups", split_shaped), ("privacy", privacy_shaped)):
        if arm.get(field) is not None and not shaped(arm[field]):
            warn("%s.%s is not of the shape trainlab writes: left out", where, field)
            arm[field] = None
    return arm


def split_shaped(groups) -> bool:
    """A split optimizer's parts: {part: {parameters, tensors, roles: {role: count}}} (a part
    without `parameters` is a note, skipped by the report)."""
    return isinstance(groups, dict) and all(
        not isinstance(group, dict) or "parameters" not in group
        or (is_count(group["parameters"]) and isinstance(group.get("roles"), dict)
            and all(is_count(n) for n in group["roles"].values()))
        for group in groups.values())


def privacy_shaped(privacy) -> bool:
    return isinstance(privacy, dict) and all(is_number(privacy.get(k)) for k in PRIVACY_NUMBERS) \
        and all(k in privacy for k in ("mode", "accountant"))


def short(value) -> str:
    """A value as a warning shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
