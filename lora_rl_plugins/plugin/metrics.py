"""What every reported number means, and whether it is an exact value, a bound or an estimate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["MetricInfo", "MetricKind", "MetricReduce", "format_percent", "metric_family", "window_mean"]


def format_percent(fraction: float, digits: int = 2) -> str:
    """``fraction`` as a percentage with ``digits`` significant digits: 1.8e-6 -> "0.00018%", 0.5 -> "50%".

    Values of 10 % and more are rounded to whole percents; 0 is "0%".
    """
    percent = 100.0 * fraction
    if percent == 0:
        return "0%"
    if abs(percent) >= 10:
        return f"{percent:,.0f}%"
    text = f"{percent:.{digits}g}"
    if "e" in text:  # below 1e-4 %: write it out in full
        exponent = -int(text.split("e")[1])
        text = f"{percent:.{exponent + digits - 1}f}"
    return text + "%"


MetricKind = Literal["exact", "bound", "estimate", "setting"]
#: How a logger should combine values between two logs: "mean" for per-step values (as TRL
#: averages its own per-step metrics over the logging window; a plugin returns the mean since its
#: previous ``collect_metrics``), "last" for running totals.
MetricReduce = Literal["mean", "last"]


def window_mean(values: Sequence[float]) -> float:
    """A ``reduce="mean"`` metric's value for the steps (or measurements) since the last collection: the mean of
    the non-NaN ``values`` as TRL averages a logging window (``sum(valid) / len(valid)``, the same floats), NaN
    when none is valid."""
    valid = [value for value in values if not math.isnan(value)]
    return sum(valid) / len(valid) if valid else math.nan


@dataclass(frozen=True)
class MetricInfo:
    """One metric: its full name, its kind, its unit, a one-line definition and how it aggregates.

    ``name`` may be a pattern whose ``<placeholder>`` segments stand for one path segment each
    (``kl_monitor/norms/<module>/<norm>``: ``<module>`` may itself contain dots, never ``/``).
    ``detail`` metrics (per-module values, timings) go to the run log and the report, not to the
    trainer's console and loggers, unless the user asks for them (``console_detail=True``).
    ``short`` is the metric's label in the progress bar's postfix (empty: not shown there); the
    run session shows each labelled metric as ``label value`` (fractions as percents, bits rounded).
    ``group`` names a measurement the metric belongs to (empty: none): the trainer's log line shows a
    latest-value metric when it changes, and all of a measurement's metrics whenever one of them does.
    """

    name: str
    kind: MetricKind
    unit: str
    definition: str
    reduce: MetricReduce = "last"
    detail: bool = False
    short: str = ""
    group: str = ""


def metric_family(prefix: str, *, group: str = "") -> Callable[..., MetricInfo]:
    """A maker of one plugin's ``MetricInfo`` entries, each named ``<prefix>/<name>``::

        _m = metric_family("bandwidth")
        _m("bits_total", "estimate", "bits", "signal summed over the run", short="signal")

    The maker's arguments are ``MetricInfo``'s after ``name``: kind, unit, definition, then
    ``reduce`` (default "last"), and ``detail``, ``short`` and ``group`` (default: the family's) by keyword.
    """

    prefix_group = group

    def make(
        name: str,
        kind: MetricKind,
        unit: str,
        definition: str,
        reduce: MetricReduce = "last",
        *,
        detail: bool = False,
        short: str = "",
        group: str | None = None,
    ) -> MetricInfo:
        return MetricInfo(
            f"{prefix}/{name}", kind, unit, definition, reduce, detail, short, prefix_group if group is None else group
        )

    return make
