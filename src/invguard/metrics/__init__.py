"""Pure metric functions on arrays (no I/O, no torch)."""

from invguard.metrics.stats import bootstrap_metric, proportion_metric

__all__ = ["bootstrap_metric", "proportion_metric"]
