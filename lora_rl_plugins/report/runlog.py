"""Read a run's logged metrics: first the run log every integration writes
(``lora_rl_metrics.jsonl``, ``lora_rl_plugins.bridge.runlog``: no checkpoint needed, complete while
the run is going), else what the frameworks wrote: TRL ``trainer_state.json``, Lightning
``metrics.csv``, or TensorBoard event files."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..bridge.runlog import RUN_LOG_NAME, read_description
from ..plugin.metrics import MetricInfo

__all__ = ["RUN_DIRECTORY_HINT", "RunLog", "builtin_metric_infos", "load_run", "trl_history"]

#: What ``load_run`` (``lora-rl report``) expects, and how to make one: said when it finds no run.
RUN_DIRECTORY_HINT = (
    f"give a run directory holding {RUN_LOG_NAME}, the run log lora-rl-plugins writes while training (into "
    "TRL's output_dir, or Lightning's log directory). To make one: lora-rl demo --output-dir runs/demo, then "
    "lora-rl report runs/demo; or add LoraRLCallback to your trainer (lora_rl_plugins.integrations.trl or "
    ".lightning) and give its output directory"
)


@dataclass
class RunLog:
    """Metric series of one run: name -> [(step, value)], in step order."""

    source: Path
    kind: str
    """"run log", "trl", "lightning-csv" or "tensorboard"."""
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    infos: dict[str, MetricInfo] = field(default_factory=dict)
    """name (or pattern) -> description, as the run log carries them (empty for a framework log)."""

    def add(self, name: str, step: int, value: float) -> None:
        """Append (step, value) to series ``name``; None and NaN are skipped."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        self.series.setdefault(name, []).append((int(step), float(value)))

    def steps(self, name: str) -> list[int]:
        """The steps of series ``name`` (empty when absent)."""
        return [s for s, _ in self.series.get(name, [])]

    def values(self, name: str) -> list[float]:
        """The values of series ``name`` (empty when absent)."""
        return [v for _, v in self.series.get(name, [])]

    def last(self, name: str) -> float | None:
        """The latest value of series ``name``, or None."""
        points = self.series.get(name)
        return points[-1][1] if points else None

    @property
    def last_step(self) -> int:
        """The run's last logged step, over every series (0 when nothing was logged)."""
        return max((s for points in self.series.values() for s, _ in points), default=0)

    def through_end(self, name: str) -> tuple[list[int], list[float]]:
        """Series ``name`` carried to ``last_step``: the run log writes a running total only when it
        changes, so an unchanged total holds its last value to the end."""
        steps, values = self.steps(name), self.values(name)
        if steps and steps[-1] < self.last_step:
            steps, values = [*steps, self.last_step], [*values, values[-1]]
        return steps, values

    def aligned(self, names: list[str]) -> tuple[list[int], list[list[float]]]:
        """Series ``names`` on one step axis: every step any of them was written at, through
        ``last_step``, each carrying its last written value forward (the run log writes a value only
        when it changes). Steps before a series' first value are left out."""
        start = max((self.steps(name)[0] for name in names if self.series.get(name)), default=0)
        axis = sorted({s for name in names for s in self.steps(name) if s >= start} | {self.last_step})
        columns = []
        for name in names:
            points, current, column = dict(self.series.get(name, [])), None, []
            earlier = [v for s, v in self.series.get(name, []) if s <= start]
            current = earlier[-1] if earlier else None
            for step in axis:
                current = points.get(step, current)
                column.append(float("nan") if current is None else current)
            columns.append(column)
        return axis, columns

    def finish(self) -> RunLog:
        """Keep one value per step (the last written) and sort each series by step."""
        for name, points in self.series.items():
            merged = dict(sorted(points))  # one value per step, the last one written
            self.series[name] = sorted(merged.items())
        return self


def builtin_metric_infos() -> dict[str, MetricInfo]:
    """The built-in plugins' metric descriptions (for a framework log, which carries none)."""
    from ..bandwidth.plugin import BANDWIDTH_METRICS
    from ..kl.monitor import KL_METRICS
    from ..learning.config import LEARNING_METRICS, PROBE_METRICS

    return {info.name: info for info in (*BANDWIDTH_METRICS, *KL_METRICS, *PROBE_METRICS, *LEARNING_METRICS)}


def _newest(paths: list[Path], key) -> Path | None:
    return max(paths, key=key) if paths else None


def _trl(path: Path) -> RunLog:
    return trl_history(json.loads(path.read_text()).get("log_history", []), path)


def trl_history(entries: list[dict], source: str | Path = "log_history") -> RunLog:
    """A ``RunLog`` of TRL's ``trainer.state.log_history`` (the list ``trainer_state.json`` saves); the
    end-of-training summary entry (``train_runtime``) is left out. A plugin metric that only changes
    (``reduce="last"``) is logged there only when it changed (the quiet log line), so each log carries its
    latest value forward, as the run log's reader does."""
    from ..bridge.runlog import match_metric

    infos = builtin_metric_infos()
    run = RunLog(Path(source), "trl")
    latest: dict[str, float] = {}
    for entry in entries:
        step = entry.get("step")
        if step is None or "train_runtime" in entry:
            continue
        values = {**latest, **{k: v for k, v in entry.items() if isinstance(v, (int, float))}}
        for name, value in values.items():
            if name not in ("step", "epoch"):
                run.add(name, step, value)
                info = match_metric(name, infos)
                if info is not None and info.reduce == "last":
                    latest[name] = value
    return run.finish()


def _jsonl(path: Path) -> RunLog:
    run = RunLog(path, "run log")
    with path.open() as handle:
        for line in handle:
            try:
                record = json.loads(line)
                info = read_description(record)
                if info is not None:
                    run.infos[info.name] = info
                    continue
                run.add(record["name"], int(record["step"]), record["value"])
            except (ValueError, KeyError, TypeError):
                continue  # a line being written by a run still in progress
    return run.finish()


def _csv(path: Path) -> RunLog:
    run = RunLog(path, "lightning-csv")
    with path.open() as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if not step:
                continue
            for name, value in row.items():
                if name in ("step", "epoch") or value in ("", None):
                    continue
                try:
                    run.add(name, int(float(step)), float(value))
                except ValueError:
                    continue
    return run.finish()


def _tensorboard(directory: Path) -> RunLog:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunLog(directory, "tensorboard")
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    for tag in accumulator.Tags().get("scalars", []):
        name = tag.removeprefix("train/")
        for event in accumulator.Scalars(tag):
            run.add(name, event.step, event.value)
    return run.finish()


def load_run(run_dir: str | Path) -> RunLog:
    """The run's metrics: the newest run log ``lora_rl_metrics.jsonl`` under ``run_dir``, else the newest
    framework log (TRL state, final or latest checkpoint; Lightning CSV; TensorBoard).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist or holds no lora-rl-plugins metrics.
    """
    root = Path(run_dir)
    if not root.exists():
        raise FileNotFoundError(f"no run at {root}: {RUN_DIRECTORY_HINT}")
    logs = [root] if root.name == RUN_LOG_NAME else list(root.rglob(RUN_LOG_NAME))
    if newest_log := _newest(logs, key=lambda p: p.stat().st_mtime_ns):
        run = _jsonl(newest_log)
        if any(name.startswith("bandwidth/") for name in run.series):
            return run
    candidates: list[RunLog] = []
    states = [root] if root.name == "trainer_state.json" else list(root.rglob("trainer_state.json"))
    if states:  # the one with the longest history is the most recent
        candidates.append(
            max((_trl(p) for p in states), key=lambda r: (max(r.steps("loss"), default=0), len(r.series)))
        )
    tables = [root] if root.suffix == ".csv" else list(root.rglob("metrics.csv"))
    if table := _newest(tables, key=lambda p: p.stat().st_mtime_ns):
        candidates.append(_csv(table))
    events = list(root.rglob("events.out.tfevents.*"))
    if events and not candidates:
        newest = _newest(events, key=lambda p: p.stat().st_mtime_ns)
        candidates.append(_tensorboard(newest.parent))  # type: ignore[union-attr]
    candidates = [c for c in candidates if any(name.startswith("bandwidth/") for name in c.series)]
    if not candidates:
        raise FileNotFoundError(
            f"no lora-rl-plugins metrics under {root}: looked for the run log {RUN_LOG_NAME}, TRL "
            "trainer_state.json, Lightning metrics.csv and TensorBoard event files with bandwidth/* metrics. "
            + RUN_DIRECTORY_HINT
        )
    return max(candidates, key=lambda r: max((s for pts in r.series.values() for s, _ in pts), default=0))
