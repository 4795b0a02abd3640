"""What a sweep says: which hyperparameters matter, in which direction, and the best setting.

Rows are (trial, arm) with the trial's overrides as columns. For every swept field: the
metric by value (mean, std, n), the Spearman rank correlation with the metric (numeric
fields), and an importance: the drop in a random forest's R^2 when that field is shuffled
(scikit-learn permutation importance, seeded). Top and bottom configurations and a
recommendation close it.
"""

import json

import numpy as np
import pandas as pd
from scipy import stats


def sweep_frame(summaries: pd.DataFrame, trials: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """Summaries with one column per swept field (the trial's override values)."""
    overrides = {t["index"]: t.get("overrides") or {} for t in trials}
    fields = list(dict.fromkeys(k for o in overrides.values() for k in o))
    frame = summaries.copy()
    for field in fields:
        frame[field] = [_cell(overrides.get(i, {}).get(field)) for i in frame["trial"]]
    return frame, fields


def _cell(value):
    """A swept list or mapping (e.g. hidden sizes [8, 8]) becomes its JSON text: one category."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def analyse(frame: pd.DataFrame, fields: list[str], metric: str = "final_test_accuracy", higher_is_better: bool = True,
            seed: int = 0) -> dict:
    data = frame[frame[metric].notna()].copy()
    out = {"metric": metric, "higher_is_better": higher_is_better, "rows": int(len(data)), "fields": {}}
    if data.empty or not fields:
        return out
    for field in fields:
        grouped = data.groupby(levels(data[field]))[metric]
        by_value = sorted(({"value": v, "mean": float(g.mean()), "std": float(g.std(ddof=1)) if len(g) > 1 else None,
                            "n": int(len(g))} for v, g in grouped), key=lambda row: value_order(row["value"]))
        numeric = pd.to_numeric(data[field], errors="coerce")
        rho = p = None
        if numeric.notna().all() and numeric.nunique() > 1:
            result = stats.spearmanr(numeric, data[metric])
            rho, p = float(result.statistic), float(result.pvalue)
        out["fields"][field] = {"by_value": by_value, "spearman": rho, "spearman_p": p}
    for field, value in importance(data, fields, metric, seed).items():
        out["fields"][field]["importance"] = value
    out["interaction"] = interaction(data, fields, out["fields"], metric)
    ranked = data.sort_values(metric, ascending=not higher_is_better)
    columns = ["trial", "arm", *fields, metric]
    out["top"] = ranked[columns].head(5).to_dict("records")
    out["bottom"] = ranked[columns].tail(5).iloc[::-1].to_dict("records")
    best = ranked.iloc[0]
    out["recommendation"] = {"trial": int(best["trial"]), "arm": best["arm"], metric: float(best[metric]),
                             **{f: best[f] for f in fields}}
    return out


def interaction(data: pd.DataFrame, fields: list[str], info: dict, metric: str) -> dict | None:
    """Mean metric over the value grid of the two most important fields (by importance, else by
    the spread of their means), and how far that grid is from additive (max |residual|)."""
    if len(fields) < 2:
        return None

    def weight(f):
        imp = info[f].get("importance")
        means = [row["mean"] for row in info[f]["by_value"]]
        return imp if imp is not None else (max(means) - min(means))

    a, b = sorted(fields, key=weight, reverse=True)[:2]
    table = data.pivot_table(index=levels(data[a]), columns=levels(data[b]), values=metric, aggfunc="mean",
                             observed=True)
    values = table.to_numpy(dtype=float)
    additive = np.nanmean(values, 1, keepdims=True) + np.nanmean(values, 0, keepdims=True) - np.nanmean(values)
    residual = float(np.nanmax(np.abs(values - additive))) if np.isfinite(values).any() else None
    return {"fields": [a, b], "rows": list(table.index), "columns": list(table.columns),
            "mean": [[None if np.isnan(v) else float(v) for v in row] for row in values], "non_additivity": residual}


MAX_LEVELS = 6


def levels(column: pd.Series) -> pd.Series:
    """The values a field's effect is shown by: its own values, or for a numeric field with many
    (random or Optuna draws) five quantile bins labelled "[low, high]"."""
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all() and numeric.nunique() > MAX_LEVELS:
        bins = pd.qcut(numeric, 5, duplicates="drop")
        return bins.map(lambda b: f"[{b.left:.3g}, {b.right:.3g}]").astype(str)
    return column.astype(str)


def value_order(value: str):
    """Numbers (and bins, by their low end) in numeric order, then everything else alphabetically."""
    try:
        return (0, float(value.removeprefix("[").split(",")[0]), "")
    except ValueError:
        return (1, 0.0, value)


def short_label(label: str) -> str:
    try:
        return f"{float(label):g}"
    except ValueError:
        return label


def importance(data: pd.DataFrame, fields: list[str], metric: str, seed: int) -> dict:
    """Permutation importance of each field for a random forest fitted to the metric."""
    if len(data) < 8:
        return {f: None for f in fields}
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    x = pd.DataFrame({f: pd.factorize(data[f].astype(str))[0] if pd.to_numeric(data[f], errors="coerce").isna().any()
                      else pd.to_numeric(data[f]) for f in fields})
    model = RandomForestRegressor(n_estimators=200, random_state=seed).fit(x, data[metric])
    result = permutation_importance(model, x, data[metric], n_repeats=10, random_state=seed)
    return {f: float(v) for f, v in zip(fields, result.importances_mean)}
