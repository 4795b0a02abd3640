"""Blob diagnostics in reports and `trainlab diagnose`: the 4-panel history (clusters, largest
cluster's share, silhouette, correlation), the weight pairs coloured by cluster, a table, and
each trial's history in the original study's results.json layout."""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.blobs import diagnose, results_json
from ..errors import UserError
from ..io import Anchor
from ..study.store import StudyStore
from .plotting import pyplot, save_figure
from .text import fmt, markdown_table

PANELS = [("clusters", "clusters (noise excluded)"), ("largest_share", "largest cluster's share of pairs"),
          ("silhouette", "silhouette (needs 2+ clusters)"), ("correlation", "correlation of W1[i,j] and W2[j,i]")]


def history_figure(frame: pd.DataFrame, path: Path) -> Path:
    """One line per trial, arm and clustering setting; a silhouette that is undefined is a gap."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    x = "epoch" if frame["epoch"].notna().all() else "step"
    groups = list(frame.groupby(["trial", "arm", "setting"], sort=False))
    colours = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
    several_trials = frame["trial"].nunique() > 1
    for i, ((trial, arm, setting), rows) in enumerate(groups):
        rows = rows.sort_values("step")
        label = f"{arm}, {setting}" + (f" ({trial})" if several_trials else "")
        for ax, (column, _) in zip(axes.flat, PANELS):
            values = pd.to_numeric(rows[column], errors="coerce")
            ax.plot(rows[x], values, marker="o", ms=3, color=colours[i % len(colours)], label=label)
    for ax, (_, title) in zip(axes.flat, PANELS):
        ax.set(title=title, xlabel=x)
        ax.grid(alpha=0.3)
    axes.flat[0].yaxis.get_major_locator().set_params(integer=True)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def pairs_figure(panels: list[dict], path: Path) -> Path:
    """The sampled (W1[i,j], W2[j,i]) pairs of each last checkpoint, coloured by cluster
    (grey = DBSCAN noise), one panel per clustering setting."""
    plt = pyplot()
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        x, labels = panel["pairs"], panel["labels"]
        noise = labels < 0
        ax.scatter(x[noise, 0], x[noise, 1], s=2, color="0.75", label=f"noise ({int(noise.sum())})")
        for k, cluster in enumerate(sorted(set(labels[~noise].tolist()), key=lambda c: -(labels == c).sum())[:10]):
            members = labels == cluster
            ax.scatter(x[members, 0], x[members, 1], s=2, color=plt.get_cmap("tab10")(k),
                       label=f"cluster {k + 1} ({int(members.sum())})")
        ax.set(title=f"{panel['arm']} step {panel['step']}: {panel['setting']}", xlabel="W1[i, j] (encoder)",
               ylabel="W2[j, i] (decoder)")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6, markerscale=4)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


MAX_PAIR_PANELS = 12  # the last checkpoint of the first trials and arms; `trainlab diagnose TRIAL` for any other


def final_table(frame: pd.DataFrame) -> list[list]:
    """The last measurement of each trial, arm and setting (numbers the data cannot give as '-')."""
    last = frame.sort_values("step").groupby(["trial", "arm", "setting"], sort=False).tail(1)
    number = lambda value, digits=3: fmt(float(value), digits) if pd.notna(value) else "-"  # noqa: E731
    return [[r["trial"], r["arm"], r["step"], r["setting"], number(r["clusters"]), number(r["noise"]),
             number(r["largest_share"]), number(r["silhouette"]), number(r["correlation"])] for _, r in last.iterrows()]


TABLE_HEADERS = ["trial", "arm", "step", "clustering", "clusters", "noise", "largest share", "silhouette",
                 "correlation"]


def probe_frame(metrics: pd.DataFrame, names: dict) -> pd.DataFrame:
    """The blobs probe's own records as a diagnose() frame (the run's clustering, as run);
    values a damaged record cannot give are missing."""
    if "probe" not in metrics.columns:
        return pd.DataFrame()
    rows = metrics[(metrics["kind"] == "probe") & (metrics["probe"] == "blobs")].copy()
    if rows.empty:
        return rows
    for column in ("clusters", "noise", "silhouette", "correlation", "pairs"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce") if column in rows.columns else np.nan
    sizes = rows["cluster_sizes"] if "cluster_sizes" in rows.columns else pd.Series([None] * len(rows), index=rows.index)
    rows["largest_share"] = [s[0] / n if isinstance(s, list) and s and isinstance(s[0], (int, float)) and n > 0
                             else np.nan for s, n in zip(sizes, rows["pairs"])]
    rows["setting"], rows["epoch"] = "as run", np.nan
    rows["trial"] = rows["trial"].map(lambda index: names.get(index, str(index)))
    return rows


def diagnostics_section(store: StudyStore, metrics: pd.DataFrame) -> list[str]:
    """The report's blob diagnostics: each trial that saved checkpoints recomputed on them under
    several clusterings, each other trial as its probe measured it while it trained."""
    names = {index: str(folder.relative_to(store.root)) for index, folder in store.trial_dirs()}
    measured = probe_frame(metrics, names)
    if measured.empty:
        return []
    figures = store.place("figures")
    frames, last = [], []
    for index, folder in store.trial_dirs():
        if any(folder.glob("checkpoints/step_*/*.pt")):
            frame, pairs = diagnose(folder, keep_pairs=True)
            frames.append(frame.assign(trial=names[index]))
            last += [{**panel, "trial": names[index]} for panel in pairs]
        else:
            frames.append(measured[measured["trial"] == names[index]])
    frame = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    lines = ["## Blob diagnostics", ""]
    if last:
        lines += ["Trials that saved checkpoints are recomputed on them with the probe's own pair sample, side by "
                  "side under the run's clustering, the original study's DBSCAN (eps 0.1 on the raw weights, "
                  "min_samples 50), and the scale-free DBSCAN and HDBSCAN at their defaults (`trainlab diagnose` for "
                  "more); other trials show what the probe measured as they trained.", ""]
    else:
        lines += ["As measured by the blobs probe while the run trained (save checkpoints to compare clusterings "
                  "offline with `trainlab diagnose`).", ""]
    history_figure(frame, figures / "blobs.png")
    lines += [markdown_table(TABLE_HEADERS, final_table(frame)), "", "![blob diagnostics](figures/blobs.png)", ""]
    if last:
        pairs_figure(last[:MAX_PAIR_PANELS], figures / "blob_pairs.png")
        lines += ["![weight pairs by cluster](figures/blob_pairs.png)", ""]
    for path in write_results(store):
        lines.append(f"- history in the original study's layout: `{path.relative_to(store.root)}`")
    return lines + [""]


def write_results(store: StudyStore) -> list[Path]:
    """results.json per trial (results-<arm>.json when a trial has several arms), inside the study."""
    written = []
    arms = [a["name"] for a in store.spec.get("arms", [])]
    for index, folder in store.trial_dirs():
        if not (folder / "metrics.jsonl").is_file():
            continue
        for arm in arms:
            name = "results.json" if len(arms) == 1 else f"results-{arm}.json"
            written.append((store.trial_place(index) / name).write_json(results_json(folder, arm)))
    return written


def diagnose_outputs(path: str | Path, output: str | Path | None, extra: dict | None, encoder: str | None,
                     decoder: str | None, pairs: int | None = None) -> tuple[Path, pd.DataFrame]:
    """`trainlab diagnose`: the table, figures and CSV for every checkpoint under `path`, in
    --output or beside what was analysed (<trial>/diagnostics, <study>/diagnostics)."""
    frame, last = diagnose(path, extra, encoder, decoder, keep_pairs=True, pairs=pairs)
    path = Path(path)
    if output is None:  # beside what was analysed, often a study: a `diagnostics` there that is a link is refused
        output = Anchor(path.parent.parent.parent if path.is_file() and path.parent.parent.name == "checkpoints"
                        else path.parent if path.is_file() else path) / "diagnostics"
    else:
        output = Anchor(Path(output))
    root = Path(path if path.is_dir() else path.parent).resolve()

    def label(trial: str) -> str:  # trials/trial_0003 under a study; a trial's own name otherwise
        relative = os.path.relpath(Path(trial).resolve(), root)
        return Path(trial).name if relative.startswith(".") else relative

    shown = frame.assign(trial=frame["trial"].map(label))
    try:
        output.mkdir()
        table = frame.drop(columns=["cluster_sizes"]).assign(cluster_sizes=frame["cluster_sizes"].map(
            lambda sizes: " ".join(map(str, sizes))))
        (output / "blobs.csv").write_text(table.to_csv(index=False))
        history_figure(shown, output / "blobs.png")
        if last:
            pairs_figure(last[:MAX_PAIR_PANELS], output / "blob_pairs.png")
        (output / "blobs.md").write_text(markdown_table(TABLE_HEADERS, final_table(shown)) + "\n")
    except OSError as exc:
        raise UserError(f"--output: cannot write in {str(output)!r} ({exc.strerror or exc})") from None
    return output.path, shown
