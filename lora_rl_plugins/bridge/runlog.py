"""The run log every integration writes: ``lora_rl_metrics.jsonl`` in the run's output directory.

One JSON object per metric and log, one per line, appended and flushed at each log on the main
process::

    {"step": 12, "name": "bandwidth/bits_total", "value": 41.5, "kind": "estimate", "unit": "bits",
     "source": "lora_rl_plugins"}

``kind`` and ``unit`` come from the metric's ``MetricInfo``; metrics the trainer itself logged
(``reward``, ``loss``, ...) carry ``"source": "trl"`` (or ``"lightning"``) and ``kind``/``unit``
null. A metric whose ``MetricInfo.reduce`` is "last" (a running total, a setting, the latest KL
measurement, a module's norm) is written when its value changes, so the file grows with what
happens, not with the number of logs; per-step metrics and the trainer's are written at every log.
After a described metric's first value (once per opening of the file) a description line follows::

    {"step": 1, "name": "lora_rl_plugins/description", "value": null, "kind": "estimate", "unit": "bits",
     "source": "lora_rl_plugins", "info": {"name": "bandwidth/bits_total", "reduce": "last",
     "detail": false, "short": "signal", "definition": "signal summed over the run: ..."}}

(``info.name`` is the ``MetricInfo``'s name or pattern), so a reader (the report) knows every
metric, a third-party plugin's included, from the file alone (``read_description``).
It needs no checkpoint and is complete while the run is still going, so ``lora-rl report``
reads it first. A resumed run first drops the lines after the restored step, then appends: no
step appears twice. Detail metrics (``MetricInfo.detail``: per-module norms, plugin timings) are
split off here so the integrations keep them out of the trainer's console unless asked.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..plugin.metrics import MetricInfo

__all__ = [
    "RUN_LOG_NAME",
    "MetricMatcher",
    "RunLogWriter",
    "describe_record",
    "match_metric",
    "read_description",
    "split_detail",
]

RUN_LOG_NAME = "lora_rl_metrics.jsonl"
SOURCE = "lora_rl_plugins"
#: One encoder for every line (``json.dumps`` with options builds a new one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False)
#: The ``name`` of a description line (no metric is named so).
DESCRIPTION = "lora_rl_plugins/description"


@functools.cache  # one compile per described pattern, not one per metric per step
def _pattern(name: str) -> re.Pattern[str]:
    parts = re.split(r"<[^<>/]+>", name)
    return re.compile("[^/]+".join(re.escape(part) for part in parts) + r"\Z")


def match_metric(name: str, infos: Mapping[str, MetricInfo]) -> MetricInfo | None:
    """The ``MetricInfo`` describing ``name``: an exact entry, or a pattern (``kl_monitor/norms/<module>/<norm>``).

    Args:
        name: a metric's full name.
        infos: name (or pattern) -> ``MetricInfo``, as ``PluginHost.describe_metrics()`` returns.

    Returns:
        The description, or None for a metric nobody described.
    """
    info = infos.get(name)
    if info is not None:
        return info
    for pattern, candidate in infos.items():
        if "<" in pattern and _pattern(pattern).match(name):
            return candidate
    return None


class MetricMatcher:
    """``match_metric`` over fixed ``infos``, each metric name resolved once (a run publishes the same names at
    every step: no pattern is tried again for them).

    Args:
        infos: name (or pattern) -> ``MetricInfo``; copied, so later changes to the mapping are not seen.
    """

    def __init__(self, infos: Mapping[str, MetricInfo]) -> None:
        self.infos = dict(infos)
        self._found: dict[str, MetricInfo | None] = {}

    def __call__(self, name: str) -> MetricInfo | None:
        """``match_metric(name, infos)``."""
        try:
            return self._found[name]
        except KeyError:
            info = self._found[name] = match_metric(name, self.infos)
            return info


def split_detail(
    metrics: Mapping[str, float], infos: Mapping[str, MetricInfo] | MetricMatcher
) -> tuple[dict[str, float], dict[str, float]]:
    """(console metrics, detail metrics): a metric is a detail when its ``MetricInfo.detail`` is set.
    ``infos``: the descriptions, or a ``MetricMatcher`` of them (names already seen are not matched again)."""
    match = infos if isinstance(infos, MetricMatcher) else MetricMatcher(infos)
    console: dict[str, float] = {}
    detail: dict[str, float] = {}
    for name, value in metrics.items():
        info = match(name)
        (detail if info is not None and info.detail else console)[name] = value
    return console, detail


def describe_record(info: MetricInfo, step: int) -> dict[str, Any]:
    """The run log's description line of ``info``, written at ``step`` after that step's values."""
    return {
        "step": step,
        "name": DESCRIPTION,
        "value": None,
        "kind": info.kind,
        "unit": info.unit,
        "source": SOURCE,
        "info": {
            "name": info.name,
            "reduce": info.reduce,
            "detail": info.detail,
            "short": info.short,
            "group": info.group,
            "definition": info.definition,
        },
    }


def read_description(record: Mapping[str, Any]) -> MetricInfo | None:
    """The ``MetricInfo`` a run-log line carries (None for a line without ``info``)."""
    info = record.get("info")
    if not isinstance(info, Mapping):
        return None
    return MetricInfo(
        str(info["name"]),
        record["kind"],
        str(record["unit"]),
        str(info.get("definition", "")),
        info.get("reduce", "last"),
        bool(info.get("detail", False)),
        str(info.get("short", "")),
        str(info.get("group", "")),
    )


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


#: Seconds between flushes of the run log while writing (``close`` and ``flush`` write the rest at once).
FLUSH_SECONDS = 1.0


class RunLogWriter:
    """Appends a run's metrics to ``DIRECTORY/lora_rl_metrics.jsonl`` (main process only).

    Lines reach the file at most ``FLUSH_SECONDS`` after they are written, and at once on ``flush`` (the
    session calls it at every checkpoint, so the log on disk holds every step a checkpoint holds) and
    ``close``.

    Args:
        directory: the run's output directory (TRL ``args.output_dir``; Lightning's log directory).
        infos: name (or pattern) -> ``MetricInfo`` for kind and unit.
        source: what wrote metrics nobody described (``"trl"``, ``"lightning"``).

    Raises:
        OSError: the directory cannot be created or written.
    """

    def __init__(self, directory: str | os.PathLike[str], infos: Mapping[str, MetricInfo], *, source: str) -> None:
        self.path = Path(directory) / RUN_LOG_NAME
        self.infos = dict(infos)
        self._match = MetricMatcher(self.infos)
        self.source = source
        self._handle: TextIO | None = None
        self._last_step: int | None = None
        self._written: dict[str, float | None] = {}  # last value written per running/latest-value metric
        self._described: set[str] = set()  # descriptions written since the file was opened
        self._tails: dict[str, tuple[tuple[str, str], MetricInfo | None]] = {}  # name -> (line parts, info)
        self._flushed = 0.0  # time.monotonic() of the last flush

    def open(self, resume_step: int = 0) -> None:
        """Start writing: keep the lines up to ``resume_step`` (0 for a fresh run), drop the rest, append after."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            with self.path.open() as handle:
                for line in handle:
                    step = _step_of(line)
                    if step is not None and 0 < step <= resume_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
            temporary = self.path.with_suffix(".jsonl.tmp")
            temporary.write_text("".join(kept))
            temporary.replace(self.path)
        self._handle = self.path.open("a")
        self._last_step = resume_step
        self._written, self._described = {}, set()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append every number (or scalar tensor) in ``metrics`` at ``step`` and flush; non-numbers are
        skipped, NaN/inf written as null."""
        if self._handle is None:
            if self._last_step is None:
                self.open()
            else:  # closed after a run: append
                self._handle = self.path.open("a")
        lines, described = [], []
        for name, value in metrics.items():
            if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # a scalar tensor a trainer logged
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or name in ("step",):
                continue
            number = float(value) if math.isfinite(value) else None
            fixed = self._tails.get(name)
            if fixed is None:
                fixed = self._tails[name] = self._line_parts(name)
            tail, info = fixed
            if info is not None and info.reduce == "last":  # a total, a setting, the latest KL measurement:
                if self._written.get(name, ()) == number:  # written again only when it changes
                    continue
                self._written[name] = number
            if info is not None and info.name not in self._described:
                self._described.add(info.name)
                described.append(describe_record(info, int(step)))
            # {"step", "name", "value", "kind", "unit", "source"}, as json.dumps writes it (float repr, null)
            value_text = "null" if number is None else repr(number)
            lines.append(f'{{"step": {int(step)}, "name": {tail[0]}, "value": {value_text}, {tail[1]}\n')
        lines += [_ENCODER.encode(record) + "\n" for record in described]
        if lines:
            self._handle.write("".join(lines))  # type: ignore[union-attr]
            now = time.monotonic()
            if now - self._flushed >= FLUSH_SECONDS:
                self._handle.flush()  # type: ignore[union-attr]
                self._flushed = now
        self._last_step = int(step)

    def _line_parts(self, name: str) -> tuple[tuple[str, str], MetricInfo | None]:
        """The fixed parts of ``name``'s lines (its name as JSON; kind, unit and source after the value), and its
        info."""
        info = self._match(name)
        rest = {"kind": info.kind if info else None, "unit": info.unit if info else None}
        rest["source"] = SOURCE if info else self.source
        return (_ENCODER.encode(name), _ENCODER.encode(rest)[1:]), info

    def flush(self) -> None:
        """Write every line so far to the file now."""
        if self._handle is not None:
            self._handle.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        """Flush and close the file (writing again reopens it, appending)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
