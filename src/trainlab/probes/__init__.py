"""Probes: measurements with a cadence, recorded in the trial's metrics stream (plugins)."""

from .blobs import BlobsProbe, blob_metrics
from .cadence import probe_every
from .norms import NormsProbe

__all__ = ["BlobsProbe", "NormsProbe", "blob_metrics", "probe_every"]
