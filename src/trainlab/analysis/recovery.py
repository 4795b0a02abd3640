"""Recovery after a fault, from held-out evaluations.

pre    the evaluation right before the injection step; post: right after the injected update
final  the last evaluation
accuracy_change   final - post        total_recovery   final - pre
degradation_rate  slope of held-out accuracy per step from the injection to the end
steps_to_recover  steps after the injection until accuracy is back within `tolerance` of pre
peak_loss_spike   highest held-out loss after the injection minus the loss before it
An arm that diverged has no post/final numbers; its divergence step says when it died.
"""

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

METRICS = ["accuracy_pre", "accuracy_post", "accuracy_final", "loss_pre", "loss_post", "loss_final",
           "accuracy_change", "total_recovery", "degradation_rate", "steps_to_recover", "peak_loss_spike"]


def _clean(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def recovery_metrics(evals: pd.DataFrame, inject_step: int, diverged_step: int | None, tolerance: float = 0.01) -> dict:
    """Metrics of one arm from its eval records (columns step, loss, accuracy)."""
    evals = evals.sort_values("step")
    before = evals[evals["step"] < inject_step]
    after = evals[evals["step"] >= inject_step]
    pre = before.iloc[-1] if len(before) else None
    post = after.iloc[0] if len(after) else None
    final = after.iloc[-1] if len(after) else None
    out = {"accuracy_pre": pre["accuracy"] if pre is not None else None,
           "loss_pre": pre["loss"] if pre is not None else None,
           "accuracy_post": post["accuracy"] if post is not None else None,
           "loss_post": post["loss"] if post is not None else None,
           "accuracy_final": final["accuracy"] if final is not None else None,
           "loss_final": final["loss"] if final is not None else None,
           "diverged": diverged_step is not None, "divergence_step": diverged_step}
    if diverged_step is not None:  # a dead arm has no final state: its last evals are not a result
        out["accuracy_final"] = out["loss_final"] = None
    have = lambda *keys: all(out[k] is not None for k in keys)  # noqa: E731
    out["accuracy_change"] = out["accuracy_final"] - out["accuracy_post"] if have("accuracy_final", "accuracy_post") else None
    out["total_recovery"] = out["accuracy_final"] - out["accuracy_pre"] if have("accuracy_final", "accuracy_pre") else None
    out["degradation_rate"] = (float(np.polyfit(after["step"], after["accuracy"], 1)[0])
                               if len(after) >= 2 and diverged_step is None else None)
    out["steps_to_recover"] = None
    if pre is not None:
        back = after[after["accuracy"] >= pre["accuracy"] - tolerance]
        if len(back):
            out["steps_to_recover"] = int(back["step"].iloc[0]) - inject_step
    out["peak_loss_spike"] = float(after["loss"].max() - pre["loss"]) if len(after) and pre is not None else None
    return {k: _clean(v) if isinstance(v, (float, np.floating)) else v for k, v in out.items()}


def mean_ci(values, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean, std and a bootstrap percentile interval of the mean (it stays within the values'
    own range: never below 0 for counts, never outside [0, 1] for accuracies); None where
    there are too few finite values."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if len(x) < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    boots = np.random.default_rng(seed).choice(x, size=(4000, len(x)), replace=True).mean(axis=1)
    low, high = np.quantile(boots, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return {"n": int(len(x)), "mean": mean, "std": float(x.std(ddof=1)), "ci_low": float(low), "ci_high": float(high)}


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | tuple[None, None]:
    """Wilson score interval of a proportion k / n (inside [0, 1], sensible at 0 and n)."""
    if n == 0:
        return None, None
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def aggregate(results: list[dict]) -> dict:
    """Per arm over the experiments in which the fault reached it: every metric's mean with its
    95% interval, and the divergence rate with its Wilson interval."""
    arms = list(results[0]["arms"]) if results else []
    table = {}
    for arm in arms:
        rows = [r["arms"][arm] for r in results if r.get("applied", {}).get(arm, True)]
        table[arm] = {m: mean_ci([row[m] for row in rows]) for m in METRICS}
        diverged = sum(bool(row["diverged"]) for row in rows)
        table[arm]["divergence_rate"] = diverged / len(rows) if rows else None
        table[arm]["divergence_interval"] = wilson(diverged, len(rows))
        table[arm]["diverged"] = diverged
        table[arm]["experiments"] = len(rows)
        table[arm]["not_reached"] = len(results) - len(rows)
    return table


def score(row: dict) -> float:
    """Final held-out accuracy, a diverged arm counting as the worst possible."""
    return -math.inf if row["diverged"] or row["accuracy_final"] is None else row["accuracy_final"]


def head_to_head(results: list[dict], seed: int = 0, arms: list[str] | None = None) -> list[dict]:
    """Every pair of `arms` (default: all): wins by final accuracy, win rate, and how sure we are
    about the difference in final accuracy (paired mean with a bootstrap interval, Wilcoxon
    signed-rank p-value), over the experiments in which the fault reached both."""
    arms = arms if arms is not None else (list(results[0]["arms"]) if results else [])
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in combinations(arms, 2):
        both_hit = [r for r in results if r.get("applied", {}).get(a, True) and r.get("applied", {}).get(b, True)]
        if not both_hit:
            continue
        sa = np.array([score(r["arms"][a]) for r in both_hit])
        sb = np.array([score(r["arms"][b]) for r in both_hit])
        wins_a, wins_b = int((sa > sb).sum()), int((sb > sa).sum())
        ties = len(both_hit) - wins_a - wins_b
        both = np.isfinite(sa) & np.isfinite(sb)
        diff = sa[both] - sb[both]
        row = {"arm_a": a, "arm_b": b, "experiments": len(both_hit), "wins_a": wins_a, "wins_b": wins_b, "ties": ties,
               "win_rate_a": (wins_a + 0.5 * ties) / len(both_hit), "mean_diff": None, "ci_low": None, "ci_high": None,
               "p_value": None}
        if len(diff):
            row["mean_diff"] = float(diff.mean())
            boots = rng.choice(diff, size=(2000, len(diff)), replace=True).mean(axis=1)
            row["ci_low"], row["ci_high"] = (float(q) for q in np.quantile(boots, [0.025, 0.975]))
            if len(diff) >= 2 and np.any(diff != 0):
                row["p_value"] = float(stats.wilcoxon(diff).pvalue)
        rows.append(row)
    return rows


def win_matrix(results: list[dict]) -> pd.DataFrame:
    """Fraction of experiments in which the row arm beat the column arm (ties count half)."""
    arms = list(results[0]["arms"]) if results else []
    matrix = pd.DataFrame(np.nan, index=arms, columns=arms)
    for row in head_to_head(results):
        matrix.loc[row["arm_a"], row["arm_b"]] = row["win_rate_a"]
        matrix.loc[row["arm_b"], row["arm_a"]] = 1 - row["win_rate_a"]
    return matrix


def early_vs_late(results: list[dict]) -> dict:
    """Mean total recovery per arm for injections before and after the median injection step."""
    if not results:
        return {}
    steps = np.array([r["injection"]["step"] for r in results])
    median = float(np.median(steps))
    out = {"median_step": median}
    for arm in results[0]["arms"]:
        hit = [r for r in results if r.get("applied", {}).get(arm, True)]
        early = [r["arms"][arm]["total_recovery"] for r in hit if r["injection"]["step"] <= median]
        late = [r["arms"][arm]["total_recovery"] for r in hit if r["injection"]["step"] > median]
        out[arm] = {"early": mean_ci(early)["mean"], "late": mean_ci(late)["mean"]}
    return out


def near_chance(accuracy: float | None, chance: float | None) -> bool:
    """An accuracy that does not show the model learned anything: within 0.1 of the majority-class
    rate (or of 1 / classes), scaled to the room above it."""
    if accuracy is None or chance is None:
        return False
    return accuracy <= chance + 0.1 * (1 - chance)


def best_arm(table: dict, pairs: list[dict], arms: list[str], alpha: float = 0.05) -> tuple[str | None, str]:
    """The arm with the highest mean final accuracy, named only if it beats every other of `arms`
    in paired experiments (Wilcoxon signed-rank p < alpha, positive mean difference); else None
    and why."""
    ranked = sorted((a for a in arms if table[a]["accuracy_final"]["mean"] is not None),
                    key=lambda a: table[a]["accuracy_final"]["mean"], reverse=True)
    if len(ranked) < 2:
        return None, "fewer than two arms to compare"
    top = ranked[0]
    if table[top]["accuracy_final"]["mean"] == table[ranked[1]]["accuracy_final"]["mean"]:
        return None, f"{top} and {ranked[1]} tie on mean final accuracy"
    for other in ranked[1:]:
        pair = next((p for p in pairs if {p["arm_a"], p["arm_b"]} == {top, other}), None)
        if pair is None or pair["p_value"] is None or pair["p_value"] >= alpha:
            p = "no p-value" if pair is None or pair["p_value"] is None else f"p = {pair['p_value']:.2g}"
            return None, (f"{top} does not beat {other} significantly (Wilcoxon signed-rank test on paired final "
                          f"accuracies, {p}, alpha {alpha})")
        diff = pair["mean_diff"] if pair["arm_a"] == top else -pair["mean_diff"]
        if diff is None or diff <= 0:
            return None, f"{top} is not ahead of {other} in paired experiments"
    return top, f"it beats every other arm (Wilcoxon signed-rank test on paired final accuracies, p < {alpha})"
