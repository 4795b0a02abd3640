"""matplotlib, imported when a figure is drawn (not when trainlab starts), on the Agg backend,
and figures written like every other file of a study: whole or not at all."""

import os
from pathlib import Path

from ..io import Anchor, temporary_beside


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Write `fig` as PNG to a temporary file beside `path`, then rename it over `path`: a kill
    mid-write leaves the old figure (or none), never a truncated one. `path` is an io.Anchor
    for a figure of a study (its folders checked from the study root: a `figures` that is a
    link is refused), or a plain path outside any study (a user's --output)."""
    if isinstance(path, Anchor):
        return path.save_figure(fig, dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, dpi=dpi, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
