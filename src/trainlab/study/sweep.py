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


def override_sets(spec: dict) -> list[dict]:
    """Each explicit point or random draw (or none) combined with each grid combination; with
    max_trials, a seeded random subset of them in their original order (never the first N)."""
    sweep = spec["sweep"]
    grid = sweep["grid"]
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    seed = spec["seed"] if sweep.get("subset_seed") is None else sweep["subset_seed"]
    points = sweep["points"] + random_draws(sweep.get("random"), seed)
    sets = [{**point, **combo} for point in (points or [{}]) for combo in combos]
    limit = sweep.get("max_trials")
    if limit is not None and limit < len(sets):
        keep = np.random.default_rng([seed, 7919]).choice(len(sets), size=limit, replace=False)
        sets = [sets[i] for i in sorted(keep)]
    return sets


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
