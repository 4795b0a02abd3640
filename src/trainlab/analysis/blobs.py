"""Blob diagnostics on saved weights.

The blobs probe clusters the (W1[i, j], W2[j, i]) pairs while a run trains, with the settings
its spec names. Here the same pairs (same seeded sample) are read back from the run's
checkpoints and clustered again under several settings side by side, so a question such as
"is it the clustering or the training?" is answered on the same weights. The run's history is
also given in the layout of the original study's `results.json`
(`training_history[].diagnostics`).
"""

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine.trainer import derive_seed, load_weights
from ..errors import UserError
from ..probes import BlobsOptions, blob_metrics, dbscan_labels, pair_indices, weight_pairs
from ..study.store import StudyStore, read_json, read_jsonl

# The original study's DBSCAN: an absolute radius on the raw weights, 50 neighbours.
SEED_CLUSTERING = {"eps": 0.1, "min_samples": 50}
STEP_FOLDER = re.compile(r"step_(\d+)$")


def probe_options(spec: dict | None) -> dict:
    """The blobs probe's options in a spec (the probe's defaults where the spec has none)."""
    defaults = BlobsOptions().model_dump()
    probes = (spec or {}).get("probes")
    for probe in probes if isinstance(probes, list) else []:
        if isinstance(probe, dict) and probe.get("kind") == "blobs":
            return {**defaults, **{k: v for k, v in probe.items() if k in defaults}}
    return defaults


def describe(options: dict) -> str:
    if options.get("method") == "hdbscan":
        return f"HDBSCAN, min_cluster_size {options['min_cluster_size']}"
    eps = f"auto eps ({options['eps_scale']:g} x median)" if options["eps"] == "auto" else f"eps {options['eps']:g}"
    return f"{eps}, min_samples {options['min_samples']}"


def clusterings(probe: dict, extra: dict | None = None) -> dict[str, dict]:
    """The settings compared, by name: the run's own, the original study's DBSCAN, the scale-free
    DBSCAN and HDBSCAN at their defaults, and one given by hand."""
    defaults = BlobsOptions().model_dump()
    settings = {"run": probe, "seed": {**probe, "method": "dbscan", **SEED_CLUSTERING},
                "auto": {**probe, "method": "dbscan", "eps": "auto", "eps_scale": defaults["eps_scale"],
                         "min_samples": defaults["min_samples"]},
                "hdbscan": {**probe, "method": "hdbscan", "min_cluster_size": defaults["min_cluster_size"]}}
    if extra:
        settings["custom"] = {**probe, "method": "dbscan", **extra}
    unique = {}
    for name, options in settings.items():  # the same setting twice is one column
        if all(describe(options) != describe(seen) for seen in unique.values()):
            unique[name] = options
    return unique


def read_dict(path: Path) -> dict:
    """A JSON object from a trial's files, or {} when it is missing, torn or of another shape."""
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def trial_context(folder: Path) -> dict:
    """What the offline analysis needs from a trial folder: its spec, seed and epoch length
    (from its summary; for an unfinished trial of a whole number of epochs, from its plan)."""
    config, summary = read_dict(folder / "config.json"), read_dict(folder / "summary.json")
    spec = config.get("spec") if isinstance(config.get("spec"), dict) else None
    seed = config.get("seed") if isinstance(config.get("seed"), int) else 0
    per_epoch = summary.get("steps_per_epoch")
    plan = (spec or {}).get("plan") if isinstance((spec or {}).get("plan"), dict) else {}
    epochs, total = plan.get("epochs"), summary.get("total_steps")
    if not isinstance(per_epoch, int) and isinstance(epochs, (int, float)) and epochs > 0 and isinstance(total, int):
        per_epoch = round(total / epochs) if float(total / epochs).is_integer() else None
    return {"spec": spec, "seed": seed, "steps_per_epoch": per_epoch if isinstance(per_epoch, int) and per_epoch > 0
            else None}


def checkpoint_entry(path: Path) -> dict:
    """A checkpoint file saved by the checkpoint event: checkpoints/step_NNNNNN/<arm>.pt."""
    match = STEP_FOLDER.match(path.parent.name)
    in_trial = match is not None and path.parent.parent.name == "checkpoints"
    return {"path": path, "arm": path.stem, "step": int(match.group(1)) if match else None,
            "trial_dir": path.parent.parent.parent if in_trial else None}


def checkpoints_of(path: str | Path) -> list[dict]:
    """Every checkpoint under a checkpoint file, a trial directory or a study directory."""
    path = Path(path)
    if path.is_file():
        return [checkpoint_entry(path)]
    if (path / "study.json").is_file():
        folders = [folder for _, folder in StudyStore.open(path).trial_dirs()]
    elif path.is_dir():
        folders = [path]
    else:
        raise UserError(f"{str(path)!r} not found: give a checkpoint file, a trial directory or a study directory")
    entries = [checkpoint_entry(file) for folder in folders
               for file in sorted(folder.glob("checkpoints/step_*/*.pt")) if file.is_file() and not file.is_symlink()]
    if not entries:
        raise UserError(f"no checkpoints under {str(path)!r}: save them with "
                        "events: [{kind: checkpoint, every: epoch}] (or final: true)")
    return sorted(entries, key=lambda e: (str(e["trial_dir"]), e["arm"], e["step"] or 0))


def weights_of(state: dict, probe: dict, path: Path):
    """The encoder [h, d] and decoder [d, h] weights of a checkpoint, or a one-line refusal."""
    missing = [probe[f] for f in ("encoder", "decoder") if probe[f] not in state]
    if missing:
        raise UserError(f"checkpoint {str(path)!r} has no {missing[0]!r} (has: {', '.join(list(state)[:8])}); "
                        "name the weights with --encoder/--decoder")
    w1, w2 = state[probe["encoder"]], state[probe["decoder"]]
    if w1.ndim != 2 or tuple(w2.shape) != tuple(w1.shape)[::-1]:
        raise UserError(f"checkpoint {str(path)!r}: encoder {tuple(w1.shape)} and decoder {tuple(w2.shape)} must be "
                        "[h, d] and [d, h]")
    return w1, w2


def diagnose(path: str | Path, extra: dict | None = None, encoder: str | None = None,
             decoder: str | None = None, keep_pairs: bool = False, pairs: int | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """One row per checkpoint and clustering: clusters, noise, largest cluster's share,
    silhouette, correlation. `pairs` replaces the probe's sample size (0 = every pair). With
    keep_pairs, also the last checkpoint of each trial and arm
    with its pairs and labels under each clustering (for the scatter figure)."""
    rows, last = [], {}
    contexts: dict = {}
    for entry in checkpoints_of(path):
        folder = entry["trial_dir"]
        if folder not in contexts:
            contexts[folder] = trial_context(folder) if folder else {"spec": None, "seed": 0, "steps_per_epoch": None}
        context = contexts[folder]
        probe = {**probe_options(context["spec"]), "gmm": False}  # the GMM count is the probe's, not re-fitted here
        probe.update({k: v for k, v in (("encoder", encoder), ("decoder", decoder)) if v})
        probe.update({} if pairs is None else {"pairs": pairs})
        w1, w2 = weights_of(load_weights(entry["path"]), probe, entry["path"])
        x = weight_pairs(w1, w2, *pair_indices(*w1.shape, probe["pairs"], derive_seed(context["seed"], "blobs")))
        step, per_epoch = entry["step"], context["steps_per_epoch"]
        where = {"trial": str(folder) if folder else str(entry["path"]), "arm": entry["arm"], "step": step,
                 "epoch": step / per_epoch if per_epoch and step is not None else None}
        for name, options in clusterings(probe, extra).items():
            if not np.isfinite(x).all():  # a diverged arm's weights: nothing to cluster, said so
                rows.append({**where, "clustering": name, "setting": describe(options), "clusters": None,
                             "noise": None, "largest_share": None, "silhouette": None, "correlation": None,
                             "eps": None, "cluster_sizes": [], "non_finite": int((~np.isfinite(x)).any(1).sum())})
                continue
            metrics = blob_metrics(x, options, derive_seed(context["seed"], "blobs-metrics"))
            sizes = metrics["cluster_sizes"]
            rows.append({**where, "clustering": name, "setting": describe(options), "clusters": metrics["clusters"],
                         "noise": metrics["noise"], "largest_share": sizes[0] / len(x) if sizes else 0.0,
                         "silhouette": metrics["silhouette"], "correlation": metrics["correlation"],
                         "eps": metrics["eps"], "cluster_sizes": sizes, "non_finite": 0})
            if keep_pairs:
                last[(rows[-1]["trial"], entry["arm"], name)] = {
                    "trial": rows[-1]["trial"], "arm": entry["arm"], "step": step, "clustering": name,
                    "setting": describe(options), "pairs": x, "labels": dbscan_labels(x, options)[2]}
    return pd.DataFrame(rows), list(last.values())


def finite_or_none(value):
    """A number JSON can hold (NaN and inf are not JSON), or None. Compared, not np.isfinite:
    an int past the float range (a damaged record) is not a number numpy takes."""
    return value if isinstance(value, (int, float)) and abs(value) <= sys.float_info.max else None


def results_json(folder: Path, arm: str) -> dict:
    """One arm of a trial in the original study's layout: config, then per epoch (or, where the
    epoch length is unknown, at each blobs measurement) the train and held-out loss and the
    blob diagnostics measured there."""
    context = trial_context(folder)
    records = [r for r in read_jsonl(folder / "metrics.jsonl") if isinstance(r, dict) and r.get("arm") == arm
               and isinstance(r.get("kind"), str) and isinstance(r.get("step"), int)]
    per_epoch = context["steps_per_epoch"]
    by_step: dict[int, dict] = {}
    for record in records:
        kind = "blobs" if record["kind"] == "probe" and record.get("probe") == "blobs" else record["kind"]
        if (per_epoch and record["step"] % per_epoch == 0) or (not per_epoch and kind == "blobs"):
            by_step.setdefault(record["step"], {})[kind] = record
    train = {r["step"]: r.get("loss") for r in records if r["kind"] == "train"}
    history = []
    for step in sorted(by_step):
        got = by_step[step]
        probe = got.get("blobs")
        window = range(step - per_epoch + 1, step + 1) if per_epoch else [step]
        losses = [train[s] for s in window if finite_or_none(train.get(s)) is not None]
        history.append({
            "epoch": step // per_epoch if per_epoch else None, "step": step,
            "train_loss": float(np.mean(losses)) if losses else None,  # the epoch's mean, as an epoch loop reports it
            "val_loss": finite_or_none(got.get("eval", {}).get("loss")),
            "val_accuracy": finite_or_none(got.get("eval", {}).get("accuracy")),
            "diagnostics": None if probe is None else {
                "n_clusters": probe.get("clusters"), "silhouette": finite_or_none(probe.get("silhouette")),
                "correlation": finite_or_none(probe.get("correlation")), "cluster_sizes": probe.get("cluster_sizes"),
                "cluster_centers": probe.get("centres"), "noise_points": probe.get("noise"),
                "eps": finite_or_none(probe.get("eps")), "mean_w1": finite_or_none(probe.get("mean_encoder")),
                "mean_w2": finite_or_none(probe.get("mean_decoder")), "std_w1": finite_or_none(probe.get("std_encoder")),
                "std_w2": finite_or_none(probe.get("std_decoder"))}})
    return {"config": context["spec"], "arm": arm, "seed": context["seed"], "steps_per_epoch": per_epoch,
            "training_history": history}
