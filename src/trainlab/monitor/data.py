"""What the monitor shows, read from a study (or one trial) directory while it is written.

Every record kind can feed a panel: a metric name is looked up in probe records (e.g.
`silhouette`, `clusters`, `correlation` from the blobs probe) and in train/eval records
(`loss`, `accuracy`: one line for training, one for held-out). Half-written lines are
skipped; files are re-read only when they changed.
"""

import os
import time
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
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(path)
    if cached is None or cached[0] != key:
        cached = (key, read_jsonl(path))
        _cache[path] = cached
    return cached[1]


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
    """{'metrics': [...], 'runs': [{'name', 'status', 'series': {metric: {line: [[step, value], ...]}}}]}"""
    metrics = metrics or DEFAULT_METRICS
    trials = trial_dirs(root)
    runs = []
    for label, folder in trials:
        records = records_of(folder / "metrics.jsonl")
        arms = list(dict.fromkeys(r["arm"] for r in records if isinstance(r.get("arm"), str)))
        for arm in arms:
            mine = [r for r in records if r.get("arm") == arm]
            series = {m: lines_for(mine, m) for m in metrics}
            name = arm if len(trials) == 1 else f"{label} / {arm}"
            runs.append({"name": name, "status": status_of(folder, records, arm, stale_after), "series": series})
    return {"metrics": metrics, "runs": runs, "updated": time.time(),
            "points": sum(len(points) for run in runs for lines in run["series"].values() for points in lines.values())}


def lines_for(records: list[dict], metric: str) -> dict[str, list]:
    lines: dict[str, list] = {}
    for r in records:
        value = r.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(r.get("step"), int):
            continue
        if value != value or value in (float("inf"), float("-inf")):  # NaN/Inf cannot be drawn
            continue
        kind = r.get("kind")
        line = {"train": "train", "eval": "held-out"}.get(kind, r.get("probe", kind))
        lines.setdefault(line, []).append([r["step"], value])
    return lines
