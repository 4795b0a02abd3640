"""Follow a run or study while it trains: a local web page, or the same panels as a PNG."""

from .data import DEFAULT_METRICS, collect
from .server import serve
from .static import static_plot

__all__ = ["DEFAULT_METRICS", "collect", "serve", "static_plot"]
