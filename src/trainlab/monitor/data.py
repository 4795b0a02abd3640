"""What the monitor shows, read from a study (or one trial) directory while it is written.

Every record kind can feed a panel: a metric name is looked up in probe records (e.g.
`silhouette`, `clusters`, `correlation` from the blobs probe) and in train/eval records
(`loss`, `accuracy`: one line for training, one for held-out). Half-written lines are
skipped; files are re-read only when they changed.

Both renderers (the live page and `--static`) draw what `collect` decides: a value a record
has but cannot give (a silhouette with one cluster, a non-finite loss) is a gap, never a line
across it; every panel shares the study's step range; a panel whose values span more than
three decades is drawn on a log axis (symlog when they cross zero); and the trials that differ
only in their seed become one band per arm (mean and mean +- std over the seeds).
"""

import json
import math
import os
import time
from collections import Counter
from pathlib import Path

from ..errors import UserError
from ..study.store import StudyStore, read_jsonl

DEFAULT_METRICS = ["silhouette", "clusters", "correlation", "loss"]
_cache: dict[Path, tuple[tuple, list]] = {}


def trial_dirs(root: Path) -> list[tuple[str, Path]]:
    """(label, folder) of each trial under a study directory, or the folder itself for one trial."""
    root = Path(root)
    if (root / "metrics.jsonl").exists() or (root / "config.json").exists():
        return [(root.name, root)]
    if not (root / "study.json").exists():
        raise UserError(f"{str(root)!r} is neither a study directory (study.json) nor a trial directory (metrics.jsonl)")
    try:
        return [(f"trial {index}", folder) for index, folder in StudyStore.open(root).trial_dirs()]
    except (UserError, KeyError):  # a damaged study.json: still show whatever streams are there
        return [(p.parent.name, p.parent) for p in sorted(root.glob("**/metrics.jsonl"))]


def records_of(path: Path) -> list[dict]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return read_jsonl(path)  # a trial folder that is a file: the reader names it, in one line
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(path)
    if cached is None or cached[0] != key:
        cached = (key, read_jsonl(path))
        _cache[path] = cached
    return cached[1]


def recorded_metrics(root: str | Path) -> list[str]:
    """The names a panel can draw: each numeric field of the arms' records written so far."""
    names = set()
    for _, folder in trial_dirs(root):
        for r in records_of(folder / "metrics.jsonl"):
            if isinstance(r.get("arm"), str) and isinstance(r.get("step"), int) and not isinstance(r["step"], bool):
                names.update(k for k, v in r.items() if k != "step" and is_number(v))
    return sorted(names)


def is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def check_metrics(root: str | Path, metrics: list[str] | None) -> None:
    """Each `--metrics` name must be one the study records, else its panel stays empty. Until
    a trial has finished, a name not seen yet may still come (a probe's first record), so
    only a study with a finished trial is checked."""
    if not metrics or not any((folder / "summary.json").exists() for _, folder in trial_dirs(root)):
        return
    recorded = recorded_metrics(root)
    for name in metrics:
        if name not in recorded:
            raise UserError(f"--metrics: {name!r} is not recorded by this study (recorded: {', '.join(recorded) or 'none'})")


def status_of(folder: Path, records: list[dict], arm: str, stale_after: float) -> str:
    if any(r.get("event") == "diverged" and r.get("arm") == arm for r in records):
        return "diverged"
    if (folder / "summary.json").exists():
        return "finished"
    try:
        age = time.time() - os.path.getmtime(folder / "metrics.jsonl")
    except OSError:
        return "waiting"
    return "live" if age <= stale_after else "stalled"


def collect(root: str | Path, metrics: list[str] | None = None, stale_after: float = 30.0) -> dict:
    """{'metrics', 'runs': [{'name', 'status', 'group', 'series': {metric: {line: [[step, value or None]]}}}],
    'bands': {metric: [{'name', 'line', 'seeds', 'points': [[step, mean, std]]}]}, 'x_range', 'scales'}"""
    metrics = metrics or DEFAULT_METRICS
    trials = trial_dirs(root)
    groups = seed_groups(root)
    runs = []
    for label, folder in trials:
        records = records_of(folder / "metrics.jsonl")
        arms = list(dict.fromkeys(r["arm"] for r in records if isinstance(r.get("arm"), str)))
        for arm in arms:
            mine = [r for r in records if r.get("arm") == arm]
            series = {m: lines_for(mine, m) for m in metrics}
            name = arm if len(trials) == 1 else f"{label} / {arm}"
            group = (f"{groups[label]} / {arm}" if groups[label] else arm) if label in groups else None
            runs.append({"name": name, "status": status_of(folder, records, arm, stale_after), "series": series,
                         "group": group})
    values = [p for run in runs for lines in run["series"].values() for points in lines.values() for p in points]
    steps = [p[0] for p in values]
    return {"metrics": metrics, "runs": runs, "updated": time.time(), "points": len(values),
            "bands": {m: bands(runs, m) for m in metrics},
            "x_range": [min(steps), max(steps)] if steps else [0, 1],
            "scales": {m: scale_of([p[1] for run in runs for pts in run["series"][m].values() for p in pts])
                       for m in metrics}}


# Past this a value is a loss that blew up, not a point to read off: matplotlib's axis margins
# around it (on a log axis, decades of them) overflow the float range and the figure fails.
LARGEST_DRAWN = 1e200


def lines_for(records: list[dict], metric: str) -> dict[str, list]:
    """[step, value] per line; a record that has the metric but no drawable value (None, NaN,
    infinity) gives [step, None]: a gap."""
    lines: dict[str, list] = {}
    for r in records:
        if metric not in r or not is_step(r.get("step")):
            continue
        value = r[metric]
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            continue
        drawable = value is not None and abs(value) <= LARGEST_DRAWN  # NaN and inf compare false; a big int stays exact
        kind = r.get("kind")
        line = {"train": "train", "eval": "held-out"}.get(kind, r.get("probe", kind))
        lines.setdefault(str(line), []).append([r["step"], value if drawable else None])
    return lines


def is_step(step) -> bool:
    """A step a figure can place: a count below 2**63 (a longer int would not convert to float)."""
    return isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 2**63


def seed_groups(root: str | Path) -> dict[str, str]:
    """Trial label -> its configuration (the trial's overrides, seed left out) when several
    trials share it: those trials are seeds of one configuration."""
    root = Path(root)
    if not (root / "study.json").exists():
        return {}
    try:
        trials = StudyStore.open(root).meta.get("trials", [])
    except (UserError, KeyError):
        return {}
    config = {f"trial {t['index']}": json.dumps(t.get("overrides") or {}, sort_keys=True, default=str) for t in trials}
    shared = Counter(config.values())
    names = {key: f"config {i}" if key != "{}" else "" for i, key in enumerate(dict.fromkeys(config.values()))}
    return {label: names[key] for label, key in config.items() if shared[key] > 1}


def bands(runs: list[dict], metric: str) -> list[dict]:
    """Mean and std over the seeds of each (configuration, arm, line), at the steps every seed
    has a value for (a gap in any seed is a gap in the band)."""
    out = []
    grouped: dict[tuple, list] = {}
    for run in runs:
        if run["group"] is not None:
            for line, points in run["series"][metric].items():
                grouped.setdefault((run["group"], line), []).append(dict(map(tuple, points)))
    for (group, line), members in grouped.items():
        if len(members) < 2:
            continue
        points = []
        for step in sorted(set.intersection(*(set(m) for m in members))):
            values = [m[step] for m in members]
            points.append([step, *mean_std(values)])
        out.append({"name": group, "line": line, "seeds": len(members), "points": points})
    return out


def mean_std(values: list) -> tuple:
    """Mean and sample std of the seeds' values; (None, None), a gap, when a seed has none or
    they are too large to add up (near the float maximum: a loss that blew up)."""
    if any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    spread = sum((v - mean) * (v - mean) for v in values)  # `**` would raise OverflowError, `*` gives inf
    std = math.sqrt(spread / (len(values) - 1))
    return (mean, std) if math.isfinite(mean) and math.isfinite(std) else (None, None)


def scale_of(values: list) -> str:
    """'log' when the positive values span more than three decades, 'symlog' when such values
    also cross zero, else 'linear'."""
    finite = [abs(v) for v in values if v is not None]
    nonzero = [v for v in finite if v > 0]
    if not nonzero or max(nonzero) / min(nonzero) <= 1e3:
        return "linear"
    return "log" if all(v is not None and v > 0 for v in values if v is not None) else "symlog"
