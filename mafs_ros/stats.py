"""Summary statistics of timing and skew samples (pure Python: no numpy, so the pairing layer can use them)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values`, interpolated linearly between the closest ranks like
    numpy.percentile's default; NaN when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q / 100 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Iterable[float]) -> dict[str, float | None]:
    """p50, p95, max and mean of `values` (None for each when there are none: strict JSON has no NaN)."""
    data = [float(v) for v in values]
    if not data:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    return {"p50": percentile(data, 50), "p95": percentile(data, 95), "max": max(data), "mean": sum(data) / len(data)}
