"""Plots in a terminal line: a sparkline of a series."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["sparkline"]

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 60, low: float | None = None, high: float | None = None) -> str:
    """``values`` as one line of block characters, averaged into at most ``width`` buckets."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    buckets = min(width, len(finite))
    means = []
    for b in range(buckets):
        chunk = finite[b * len(finite) // buckets : (b + 1) * len(finite) // buckets]
        means.append(sum(chunk) / len(chunk))
    lo = min(means) if low is None else low
    hi = max(means) if high is None else high
    span = hi - lo
    if span <= 0:
        return _BARS[0] * buckets
    return "".join(_BARS[min(len(_BARS) - 1, max(0, int((m - lo) / span * len(_BARS))))] for m in means)
