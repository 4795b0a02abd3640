"""Expand a resolved spec into trials: the grid's Cartesian product times the seeds.

Every trial carries its own fully resolved spec and a key: a stable hash of that spec, so a
resumed study recognises finished trials even if it is re-expanded in another process.
"""

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from ..spec import resolve, set_path


@dataclass(frozen=True)
class TrialPlan:
    index: int
    key: str
    seed: int
    overrides: dict
    spec: dict

    def describe(self) -> dict:
        return {"index": self.index, "key": self.key, "seed": self.seed, "overrides": self.overrides}


def trial_key(spec: dict) -> str:
    relevant = {k: v for k, v in spec.items() if k not in ("output", "sweep", "name", "plugin_path", "recipe")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def seeds_of(spec: dict) -> list[int]:
    sweep = spec["sweep"]
    return sweep["seeds"] or [spec["seed"] + i for i in range(sweep["repeats"])]


MAX_TRIALS = 20_000  # a sweep that would expand to more trials is refused (use sweep.max_trials)


def override_sets(spec: dict) -> list[dict]:
    """Each explicit point or random draw (or none) combined with each grid combination. With
    max_trials, a seeded *balanced* subset in their original order: every value of every field
    appears as evenly as the subset's size allows (each at least floor(N / values) times), drawn
    without ever listing the whole grid, so a grid of 10^8 points costs only the N drawn."""
    sweep = spec["sweep"]
    seed = spec["seed"] if sweep.get("subset_seed") is None else sweep["subset_seed"]
    random = sweep.get("random")
    n_points = len(sweep["points"]) + (random["n"] if random else 0)
    axes = list(sweep["grid"].values())
    sizes = ([n_points] if n_points else []) + [len(values) for values in axes]
    total = math.prod(sizes)
    limit = sweep.get("max_trials")
    seeds = len(seeds_of(spec))
    if min(total, limit or total) * seeds > MAX_TRIALS:
        raise SpecError("sweep", f"{total:,} override set(s) x {seeds} seed(s) is more than {MAX_TRIALS:,} trials; "
                                 "run a subset with sweep.max_trials (--max-experiments) or fewer seeds")
    points = sweep["points"] + random_draws(random, seed)
    if limit is not None and limit < total:
        rows = balanced_rows(sizes, limit, np.random.default_rng([seed, 7919]))
    else:
        rows = itertools.product(*(range(k) for k in sizes))
    return [combine(row, points, sweep["grid"]) for row in rows]


def combine(row, points: list[dict], grid: dict) -> dict:
    """The override set at `row`, a tuple of indices (into the points, when there are any, then
    into each grid field's values)."""
    row = list(row)
    point = points[row.pop(0)] if points else {}
    return {**point, **{path: values[i] for (path, values), i in zip(grid.items(), row)}}


def balanced_rows(sizes: list[int], n: int, rng) -> list[tuple]:
    """n distinct index tuples, each column's values as evenly spread as n allows (a Latin-
    hypercube-like draw); duplicates are repaired by swapping one column between two rows,
    which keeps every column's counts. Sorted in the grid's own order."""
    columns = []
    for k in sizes:
        counts = np.full(k, n // k)
        counts[rng.choice(k, n % k, replace=False)] += 1
        column = np.repeat(np.arange(k), counts)
        rng.shuffle(column)
        columns.append(column)
    rows = np.stack(columns, 1) if columns else np.zeros((n, 0), dtype=int)
    for _ in range(200 * n):
        seen, duplicate = {}, None
        for i, row in enumerate(map(tuple, rows)):
            if row in seen:
                duplicate = i
                break
            seen[row] = i
        if duplicate is None:
            break
        other, column = int(rng.integers(n)), int(rng.integers(len(sizes)))
        rows[[duplicate, other], column] = rows[[other, duplicate], column]
    unique = sorted(set(map(tuple, rows.tolist())))
    while len(unique) < n:  # a crowded grid the swaps could not untangle: fill with distinct random rows
        row = tuple(int(rng.integers(k)) for k in sizes)
        if row not in unique:
            unique = sorted([*unique, row])
    return unique


def random_draws(random: dict | None, seed: int) -> list[dict]:
    if not random:
        return []
    rng = np.random.default_rng([seed, 104729])
    draws = []
    for _ in range(random["n"]):
        draw = {}
        for path, p in random["params"].items():
            if p["values"] is not None:
                value = p["values"][int(rng.integers(len(p["values"])))]
            elif p["log"]:
                value = float(math.exp(rng.uniform(math.log(p["low"]), math.log(p["high"]))))
            else:
                value = float(rng.uniform(p["low"], p["high"]))
            draw[path] = int(round(value)) if p["integer"] and not p["values"] else value
        draws.append(draw)
    return draws


def expand(spec: dict) -> list[TrialPlan]:
    """Every trial of a spec whose sweep is fixed up front (an Optuna search adds its own as it goes)."""
    if spec["sweep"].get("optuna"):
        return []
    return plans_for(spec, override_sets(spec))


FIXED = {"repeats": 1, "seeds": None, "grid": {}, "points": [], "random": None, "max_trials": None,
         "subset_seed": None, "optuna": None}


def plans_for(spec: dict, override_list: list[dict], start: int = 0) -> list[TrialPlan]:
    """One trial per override set and seed, numbered from `start`."""
    plans = []
    for overrides in override_list:
        base = copy.deepcopy(spec)
        for path, value in overrides.items():
            set_path(base, path, value)
        base["sweep"] = dict(FIXED)
        try:
            base = resolve(base)
        except SpecError as err:
            raise SpecError(f"sweep ({err.path})", err.message) from None
        for seed in seeds_of({**base, "sweep": spec["sweep"]}):
            trial = {**base, "seed": seed}
            plans.append(TrialPlan(start + len(plans), trial_key(trial), seed, overrides, trial))
    return plans
