"""Probes: measurements with a cadence, recorded in the trial's metrics stream."""

from .blobs import BlobsProbe, blob_metrics
from .norms import NormsProbe
from .registry import PROBES, ProbeDef, probe_every

__all__ = ["BlobsProbe", "NormsProbe", "PROBES", "ProbeDef", "blob_metrics", "probe_every"]
