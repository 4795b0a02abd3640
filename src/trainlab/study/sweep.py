"""Expand a resolved spec into trials: the grid's Cartesian product times the seeds.

Every trial carries its own fully resolved spec and a key: a stable hash of that spec, so a
resumed study recognises finished trials even if it is re-expanded in another process.
"""

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass

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
    relevant = {k: v for k, v in spec.items() if k not in ("output", "sweep", "name")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def seeds_of(spec: dict) -> list[int]:
    sweep = spec["sweep"]
    return sweep["seeds"] or [spec["seed"] + i for i in range(sweep["repeats"])]


def override_sets(spec: dict) -> list[dict]:
    """Each explicit point (or none) combined with each grid combination."""
    grid = spec["sweep"]["grid"]
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [{**point, **combo} for point in (spec["sweep"]["points"] or [{}]) for combo in combos]


def expand(spec: dict) -> list[TrialPlan]:
    plans = []
    for overrides in override_sets(spec):
        base = copy.deepcopy(spec)
        for path, value in overrides.items():
            set_path(base, path, value)
        base["sweep"] = {"repeats": 1, "seeds": None, "grid": {}, "points": []}
        try:
            base = resolve(base)
        except SpecError as err:
            raise SpecError(f"sweep ({err.path})", err.message) from None
        for seed in seeds_of({**base, "sweep": spec["sweep"]}):
            trial = {**base, "seed": seed}
            plans.append(TrialPlan(len(plans), trial_key(trial), seed, overrides, trial))
    return plans
