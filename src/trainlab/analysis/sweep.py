"""What a sweep says: which hyperparameters matter, in which direction, and the best setting.

Rows are (trial, arm) with the trial's overrides as columns. For every swept field: the
metric by value, as the raw mean over the trials that had that value (with n and a seeded
bootstrap 95% interval) and as an *adjusted* mean, the least-squares mean of a main-effects
model over all swept fields (each other field averaged over its values alike), so that a value
does not look good only because the trials that had it also had good values of another field;
the Spearman rank correlation with the metric (numeric fields); and an importance: the drop in
a random forest's R^2 when that field is shuffled (scikit-learn permutation importance,
seeded). Top and bottom configurations and a recommendation close it.
"""


import numpy as np
import pandas as pd
from scipy import stats

from .tables import swept_values


def sweep_frame(summaries: pd.DataFrame, trials: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """Summaries with one column per swept field (the trial's value; a list or mapping is one
    category, its JSON text)."""
    swept = swept_values(trials)
    frame = summaries.copy()
    for field, values in swept.items():
        frame[field] = [values.get(i) for i in frame["trial"]]
    return frame, list(swept)


def own_rows(data: pd.DataFrame, field: str, arms: list[str]) -> pd.DataFrame:
    """The rows a field's effect is read from: a field of one arm (`arms.<name or index>.lr`) only
    changes that arm, so only its rows; any other field, every row."""
    parts = field.split(".")
    if parts[0] != "arms" or len(parts) < 3:
        return data
    name = arms[int(parts[1])] if parts[1].isdigit() and int(parts[1]) < len(arms) else parts[1]
    return data[data["arm"] == name]


def analyse(frame: pd.DataFrame, fields: list[str], metric: str = "final_test_accuracy", higher_is_better: bool = True,
            seed: int = 0, arms: list[str] | None = None) -> dict:
    data = frame[frame[metric].notna()].copy()
    arms = (arms or list(dict.fromkeys(data["arm"]))) if len(data) else []
    out = {"metric": metric, "higher_is_better": higher_is_better, "rows": int(len(data)), "fields": {}}
    if data.empty or not fields:
        return out
    per_arm = any(own_rows(data, f, arms) is not data for f in fields)
    # one model over every row is sound when all rows answer to every field (one arm, or no arm-specific field)
    adjusted = adjusted_means(data, fields, metric) if len(arms) == 1 or not per_arm else {}
    rng = np.random.default_rng(seed)
    for field in fields:
        rows = own_rows(data, field, arms)
        grouped = rows.groupby(levels(rows[field]))[metric]
        by_value = sorted(({"value": v, "mean": float(g.mean()), "std": float(g.std(ddof=1)) if len(g) > 1 else None,
                            "n": int(len(g)), **bootstrap_interval(g.to_numpy(dtype=float), rng),
                            "adjusted": adjusted.get(field, {}).get(v)} for v, g in grouped),
                          key=lambda row: value_order(row["value"]))
        numeric = pd.to_numeric(rows[field], errors="coerce")
        rho = p = None
        if numeric.notna().all() and numeric.nunique() > 1:
            result = stats.spearmanr(numeric, rows[metric])
            rho, p = float(result.statistic), float(result.pvalue)
        out["fields"][field] = {"by_value": by_value, "spearman": rho, "spearman_p": p}
    for field, value in importance(data, fields, metric, seed).items():
        out["fields"][field]["importance"] = value
    for method, found in optuna_importances(data, fields, metric, higher_is_better, seed).items():
        out.setdefault("importance_methods", []).append(method)
        for field in fields:
            out["fields"][field][method] = found.get(field)
    out["interaction"] = interaction(data, fields, out["fields"], metric)
    ranked = data.sort_values(metric, ascending=not higher_is_better)
    columns = ["trial", "arm", *fields, metric]
    out["top"] = ranked[columns].head(5).to_dict("records")
    out["bottom"] = ranked[columns].tail(5).iloc[::-1].to_dict("records")
    best = ranked.iloc[0]
    out["recommendation"] = {"trial": int(best["trial"]), "arm": best["arm"], metric: float(best[metric]),
                             **{f: best[f] for f in fields}}
    return out


def bootstrap_interval(values: np.ndarray, rng, confidence: float = 0.95) -> dict:
    if len(values) < 2:
        return {"ci_low": None, "ci_high": None}
    means = rng.choice(values, size=(2000, len(values)), replace=True).mean(axis=1)
    low, high = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return {"ci_low": float(low), "ci_high": float(high)}


def adjusted_means(data: pd.DataFrame, fields: list[str], metric: str) -> dict:
    """field -> {value: least-squares mean} from metric ~ intercept + sum of one-hot main effects
    (ordinary least squares); {} when the model has no spare degrees of freedom."""
    if len(fields) < 2:
        return {}
    groups = {f: levels(data[f]) for f in fields}
    names = {f: sorted(groups[f].unique(), key=value_order) for f in fields}
    columns = [np.ones(len(data))]
    index = {}
    for f in fields:
        for v in names[f][1:]:  # the first value of each field is the baseline
            index[(f, v)] = len(columns)
            columns.append((groups[f] == v).to_numpy(dtype=float))
    x, y = np.stack(columns, 1), data[metric].to_numpy(dtype=float)
    if len(y) <= x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        return {}
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    effect = {f: {v: coef[index[(f, v)]] if (f, v) in index else 0.0 for v in names[f]} for f in fields}
    average = {f: float(np.mean(list(effect[f].values()))) for f in fields}
    base = coef[0] + sum(average.values())
    return {f: {v: float(base - average[f] + effect[f][v]) for v in names[f]} for f in fields}


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


OPTUNA_METHODS = {"fanova": "FanovaImportanceEvaluator", "ped_anova": "PedAnovaImportanceEvaluator"}


def optuna_importances(data: pd.DataFrame, fields: list[str], metric: str, higher_is_better: bool,
                       seed: int) -> dict[str, dict]:
    """Optuna's fANOVA (variance of the metric explained by each field, from a random forest's
    functional ANOVA) and PED-ANOVA (how much each field's distribution in the best 10% of rows
    differs from all rows), normalised to sum to 1; {} without Optuna or with fewer than 8 rows.
    The rows become finished trials of an in-memory Optuna study, each field a distribution
    over its values (numbers as a range, anything else as categories)."""
    try:
        import optuna
    except ImportError:
        return {}
    swept = [f for f in fields if data[f].astype(str).nunique() > 1]
    if len(data) < 8 or not swept:
        return {}
    distributions = {}
    for field in swept:
        numeric = pd.to_numeric(data[field], errors="coerce")
        distributions[field] = (optuna.distributions.FloatDistribution(float(numeric.min()), float(numeric.max()))
                                if numeric.notna().all() else
                                optuna.distributions.CategoricalDistribution(sorted(data[field].astype(str).unique())))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if higher_is_better else "minimize")
    for _, row in data.iterrows():
        params = {f: float(row[f]) if isinstance(d, optuna.distributions.FloatDistribution) else str(row[f])
                  for f, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[metric])))
    found = {}
    for method, name in OPTUNA_METHODS.items():
        evaluator = getattr(optuna.importance, name, None)
        if evaluator is None:
            continue
        try:
            made = evaluator(seed=seed) if method == "fanova" else evaluator()
            found[method] = optuna.importance.get_param_importances(study, evaluator=made)
        except (ValueError, RuntimeError):  # too few distinct rows for the method: left out, not guessed
            continue
    return found
