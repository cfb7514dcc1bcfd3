"""Pure metric functions on arrays (no I/O, no torch)."""

from invguard.metrics.stats import bootstrap_metric, proportion_metric
from invguard.metrics.utility import exposure_utility

__all__ = ["bootstrap_metric", "exposure_utility", "proportion_metric"]
