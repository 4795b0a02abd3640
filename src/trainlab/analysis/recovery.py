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


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean, std and a t-interval; None where there are too few finite values."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if len(x) < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * std / math.sqrt(len(x)))
    return {"n": int(len(x)), "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def aggregate(results: list[dict]) -> dict:
    """Per arm over experiments: every metric's mean with its 95% interval, and divergence rate."""
    arms = list(results[0]["arms"]) if results else []
    table = {}
    for arm in arms:
        rows = [r["arms"][arm] for r in results]
        table[arm] = {m: mean_ci([row[m] for row in rows]) for m in METRICS}
        diverged = sum(bool(row["diverged"]) for row in rows)
        table[arm]["divergence_rate"] = diverged / len(rows)
        table[arm]["diverged"] = diverged
        table[arm]["experiments"] = len(rows)
    return table


def score(row: dict) -> float:
    """Final held-out accuracy, a diverged arm counting as the worst possible."""
    return -math.inf if row["diverged"] or row["accuracy_final"] is None else row["accuracy_final"]


def head_to_head(results: list[dict], seed: int = 0) -> list[dict]:
    """Every pair of arms: wins by final accuracy, win rate, and how sure we are about the
    difference in final accuracy (paired mean with a bootstrap interval, Wilcoxon p-value)."""
    arms = list(results[0]["arms"]) if results else []
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in combinations(arms, 2):
        sa = np.array([score(r["arms"][a]) for r in results])
        sb = np.array([score(r["arms"][b]) for r in results])
        wins_a, wins_b = int((sa > sb).sum()), int((sb > sa).sum())
        ties = len(results) - wins_a - wins_b
        both = np.isfinite(sa) & np.isfinite(sb)
        diff = sa[both] - sb[both]
        row = {"arm_a": a, "arm_b": b, "experiments": len(results), "wins_a": wins_a, "wins_b": wins_b, "ties": ties,
               "win_rate_a": (wins_a + 0.5 * ties) / len(results), "mean_diff": None, "ci_low": None, "ci_high": None,
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
        early = [r["arms"][arm]["total_recovery"] for r in results if r["injection"]["step"] <= median]
        late = [r["arms"][arm]["total_recovery"] for r in results if r["injection"]["step"] > median]
        out[arm] = {"early": mean_ci(early)["mean"], "late": mean_ci(late)["mean"]}
    return out
