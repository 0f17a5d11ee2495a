"""pyspark for :mod:`dicomlake.spark`: imported on first use, with a clear error if missing."""

from __future__ import annotations

from dicomlake.engine.spark import require_pyspark, to_arrow, to_spark

__all__ = ["require_pyspark", "to_arrow", "to_spark"]
