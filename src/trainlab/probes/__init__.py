"""Probes: measurements with a cadence, recorded in the trial's metrics stream (plugins)."""

from .blobs import BlobsOptions, BlobsProbe, blob_metrics, dbscan_labels, pair_indices, weight_pairs
from ..engine.hooks import steps_every as probe_every
from .norms import NormsProbe

__all__ = ["BlobsOptions", "BlobsProbe", "NormsProbe", "blob_metrics", "dbscan_labels", "pair_indices", "probe_every",
           "weight_pairs"]
