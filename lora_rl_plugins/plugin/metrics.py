"""What every reported number means, and whether it is an exact value, a bound or an estimate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["MetricInfo", "MetricKind", "MetricReduce"]

MetricKind = Literal["exact", "bound", "estimate", "setting"]
#: How a logger should combine values between two logs: "mean" for per-step values (as TRL
#: averages its own per-step metrics over the logging window), "last" for running totals.
MetricReduce = Literal["mean", "last"]


@dataclass(frozen=True)
class MetricInfo:
    """One metric: its full name, its kind, its unit, a one-line definition and how it aggregates."""

    name: str
    kind: MetricKind
    unit: str
    definition: str
    reduce: MetricReduce = "last"
