"""One training run, framework-free: what every integration used to repeat, written once.

A ``RunSession`` owns the plugin host, the run log, the split of detail metrics, the state saved in
checkpoints and the per-step decisions (stop, KL penalty, which metrics to publish). An integration
keeps only what touches its framework: it turns the trainer's events into calls on the session and
the session's answers into the trainer's actions. A new trainer's adapter is this, in order::

    session = RunSession(PluginOptions(**options), source="mytrainer")   # at construction
    # training starts (after a resume: session.restore(saved) first)
    session.start(RunStarted(...grpo=GRPOSettings(...)), model, log_dir=..., resume_step=..., main_process=...)
    # per generation batch
    batch = session.rollouts_scored(collective, step=..., rewards=..., ...)   # advantages computed here, once
    session.policy_sampled(step=..., model=..., prompt_ids=..., ...)          # only if a plugin measures
    beta = session.take_kl_beta()        # before the next generation batch: a penalty a plugin turned on
    # per optimizer step
    decision = session.step_ended(step, total_steps, collect=...)  # -> StepDecision: stop?, console metrics
                                         # collect: the trainer logs after this step (False: skip collecting)
    # at the trainer's log
    session.log(step, trainer_logs)      # the run log: the trainer's values and the detail metrics
    postfix = session.postfix()          # the short progress-bar text
    # checkpoints
    saved = session.state()              # JSON-serialisable; session.restore(saved) on resume
    session.end()

Services the integration may install (each None when its option is off or no plugin offers it),
found by type, never by a plugin's name: ``session.service(PromptSampler)`` (draws the prompts of
the next batch) and ``session.service(BatchFilter)`` (keeps groups with information); see
``lora_rl_plugins.plugin.services``.

The console stays quiet: a per-step metric (``MetricInfo.reduce == "mean"``) is published at every
step; any other (a running total, a setting, the latest measurement) only when its value changed
since it was last published, so a constant appears once, at the start (and in the run log); the
metrics of one measurement (``MetricInfo.group``) are published together whenever one of them changes.
Detail metrics go to the run log only, unless ``console_detail=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..bandwidth.advantages import grpo_advantages
from ..bandwidth.rewards import combine_rewards
from ..plugin.collective import Collective
from ..plugin.events import AdapterSummary, RolloutsScored, RunStarted, StepEnded
from ..plugin.host import PluginHost
from ..plugin.metrics import MetricInfo, format_percent
from .options import PluginOptions
from .runlog import MetricMatcher, RunLogWriter, split_detail
from .translate import policy_sample, rollouts_scored, start_run

__all__ = ["TRAINING_SUMMARY_KEYS", "RunSession", "StepDecision", "format_postfix"]

T = TypeVar("T")

#: Keys of an end-of-training summary log (transformers' ``train_runtime``, ...): run totals, not step metrics.
TRAINING_SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}
)


@dataclass(frozen=True)
class StepDecision:
    """What the trainer does after an optimizer step.

    Attributes:
        stop: the reason a plugin asked to stop training (None: go on).
        console: name -> value to publish in the trainer's log now (quiet: see the module docstring).
        averaged: the names in ``console`` a trainer averages over its logging window (per-step
            metrics); the others replace the previous value.
        metrics: every metric the plugins reported this step (console and detail).
    """

    stop: str | None
    console: dict[str, float] = field(default_factory=dict)
    averaged: frozenset[str] = frozenset()
    metrics: dict[str, float] = field(default_factory=dict)


def _format_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit == "fraction":
        return format_percent(value)
    if unit == "bits":
        return f"{value:,.0f} bits"
    return f"{value:.3g}"


def format_postfix(metrics: Mapping[str, float], infos: Mapping[str, MetricInfo]) -> str:
    """``label value`` for each metric whose ``MetricInfo.short`` is set, in the order of ``infos``, joined by
    " | " (e.g. "signal 38 bits | capacity 0.27% | KL 9.1e-06")."""
    parts = []
    for name, info in infos.items():
        if info.short and name in metrics:
            parts.append(f"{info.short} {_format_value(metrics[name], info.unit)}")
    return " | ".join(parts)


class RunSession:
    """The run lifecycle every integration shares (see the module docstring for the call order).

    Args:
        options: the validated options (``PluginOptions``); builds the plugin host.
        source: the trainer's name, written as the ``source`` of metrics the trainer logged itself.

    Attributes:
        host: the plugin host (plugins, hooks, ``requests``); integrations call the session, not the host.
        options: the options.
        infos: name (or pattern) -> ``MetricInfo`` of every metric the plugins describe (refreshed at ``start``).
    """

    def __init__(self, options: PluginOptions, *, source: str) -> None:
        self.options = options
        self.source = source
        self.host: PluginHost = options.build_host()
        self.infos: dict[str, MetricInfo] = self.host.describe_metrics()
        self.run: RunStarted | None = None
        self._run_log: RunLogWriter | None = None
        self._detail: dict[str, float] = {}  # detail metrics since the last log: for the run log only
        self._published: dict[str, float] = {}  # the last value published to the console, per "last" metric
        self._latest: dict[str, float] = {}  # every metric's latest value: the postfix
        self._match: MetricMatcher | None = None  # match_metric over self.infos (the object _match_of), cached
        self._match_of: object = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(
        self,
        run: RunStarted,
        model: Any,
        *,
        engine_model: Any = None,
        tokenizer: Any = None,
        log_dir: str | None = None,
        resume_step: int = 0,
        main_process: bool = True,
    ) -> AdapterSummary:
        """``on_run_start`` then ``on_adapter_ready``; opens the run log in ``log_dir`` on the main process.

        ``resume_step`` is the step training resumes after (0: a fresh run): the run log keeps the lines up
        to it. Returns the adapter's summary (computed once here; plugins read it from ``AdapterReady``).

        Raises:
            whatever a fail-fast plugin raises on these hooks (invalid settings, an adapter vLLM would refuse).
        """
        self.run = run
        adapter = start_run(self.host, run, model, engine_model, tokenizer=tokenizer)
        self.infos = self.host.describe_metrics()
        self._published, self._detail = {}, {}
        if self.options.host.run_log and main_process and log_dir is not None:
            self._run_log = RunLogWriter(log_dir, self.infos, source=self.source)
            self._run_log.open(resume_step=resume_step)
        return adapter

    def end(self) -> None:
        """``on_run_end``; closes the run log."""
        self.host.on_run_end()
        if self._run_log is not None:
            self._run_log.close()

    # -- per generation batch ----------------------------------------------------------------
    def rollouts_scored(self, collective: Collective, **fields: Any) -> RolloutsScored:
        """Build the batch's event from ``fields`` (those of ``bridge.translate.rollouts_scored``: ``step``,
        ``rewards``, ``reward_names``, ``reward_weights``, ``group_size``, optional per-rollout lists, gathered over
        the processes there), compute its advantages once with the run's ``grpo.advantage`` settings, and call
        ``on_rollouts_scored``.

        Returns:
            The event, ``advantages`` included (the group filter reads them).

        Raises:
            RewardValueError: a reward that is not a number, or infinite (the message names the function and
                rollout); RolloutShapeError: rows that do not match the reward functions (``combine_rewards``).
            ValueError: rewards that do not split into groups of ``group_size`` (``grpo_advantages``).
        """
        batch = rollouts_scored(collective, **fields)
        combined = combine_rewards(batch.rewards, batch.reward_names, batch.reward_weights)  # checks every value
        settings = self.run.grpo.advantage if self.run is not None else None
        advantages = grpo_advantages(batch.rewards, batch.group_size, batch.reward_weights, settings)
        object.__setattr__(batch, "combined_rewards", combined)  # the frozen event, completed before anyone sees it
        object.__setattr__(batch, "advantages", advantages)
        self.host.on_rollouts_scored(batch)
        return batch

    def policy_sampled(self, **sample: Any) -> None:
        """``on_policy_sampled`` with ``bridge.translate.policy_sample(**sample)``, built only when a plugin
        implements the hook (the tensors are concatenated only then)."""
        if self.host.implements("on_policy_sampled"):
            self.host.on_policy_sampled(policy_sample(**sample))

    def take_kl_beta(self) -> float | None:
        """The KL penalty a plugin turned on, once, for the trainer to apply before its next generation batch
        (None: nothing changed). Also pending again after ``restore`` of a run that had one."""
        return self.host.requests.take_kl_beta()

    @property
    def kl_beta(self) -> float | None:
        """The active KL penalty a plugin turned on (None: none)."""
        return self.host.requests.kl_beta

    def service(self, kind: type[T]) -> T | None:
        """The object a plugin offers as ``kind`` (``plugin.services``), or None when none does."""
        return self.host.service(kind)

    # -- per optimizer step ------------------------------------------------------------------
    def step_ended(self, step: int, total_steps: int | None = None, *, collect: bool = True) -> StepDecision:
        """``on_step_end``, then ``collect_metrics``: whether to stop, and what to publish in the console now.

        ``collect=False`` (the trainer will not log after this step) skips the collection: the decision then
        carries only ``stop``; a step where a plugin asks to stop is collected all the same. Collecting at the
        trainer's logging steps only gives the same log lines (a plugin's per-step metrics are means since its
        last collection, ``hookspecs.collect_metrics``) at a tenth of the cost under TRL's default
        ``logging_steps=10``. Detail metrics are kept for the next ``log`` (the run log) unless
        ``console_detail=True``.
        """
        self.host.on_step_end(StepEnded(step, total_steps))
        stop = self.host.requests.take_stop()
        if not collect and stop is None:
            return StepDecision(None)
        metrics = self.host.collect_metrics()
        self._latest.update(metrics)
        console = metrics
        if self._match is None or self._match_of is not self.infos:  # names resolved once per description set
            self._match, self._match_of = MetricMatcher(self.infos), self.infos
        if not self.options.host.console_detail:  # per-module norms, timings: the run log only
            console, detail = split_detail(metrics, self._match)
            self._detail.update(detail)
        infos = {name: self._match(name) for name in console}
        averaged = {name for name, info in infos.items() if info is not None and info.reduce == "mean"}
        changed = {name for name, value in console.items() if self._published.get(name) != value} - averaged
        groups = {name: info.group for name, info in infos.items() if info is not None and info.group}
        measured = {groups[name] for name in changed if name in groups}  # a measurement's values go together
        quiet: dict[str, float] = {}
        for name, value in console.items():
            if name in averaged or name in changed or groups.get(name) in measured:
                quiet[name] = self._published[name] = value
        return StepDecision(stop, quiet, frozenset(averaged), metrics)

    def log(self, step: int, trainer_logs: Mapping[str, Any]) -> None:
        """Write the trainer's logged values (end-of-training summaries left out) and the detail metrics since
        the last log to the run log (main process; nothing when the run log is off)."""
        if self._run_log is None:
            return
        values = {name: value for name, value in trainer_logs.items() if name not in TRAINING_SUMMARY_KEYS}
        self._run_log.write(step, {**values, **self._detail})
        self._detail = {}

    def postfix(self) -> str:
        """The progress bar's short text: the latest value of each metric with a ``MetricInfo.short`` label."""
        return format_postfix(self._latest, self.infos)

    def progress(self) -> dict[str, float]:
        """The labelled metrics' latest values for a progress bar that takes numbers (Lightning): ``label`` ->
        value, fractions as percents under ``label_%``."""
        shown = {}
        for name, info in self.infos.items():
            if info.short and name in self._latest:
                value = self._latest[name]
                shown[f"{info.short}_%" if info.unit == "fraction" else info.short] = (
                    100.0 * value if info.unit == "fraction" else value
                )
        return shown

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Every plugin's state and the trainer requests (``PluginHost.get_state``): JSON-serialisable. Asked
        at every checkpoint: the run log is flushed then, so the file holds every step the checkpoint holds."""
        if self._run_log is not None:
            self._run_log.flush()
        return self.host.get_state()

    def restore(self, state: Mapping[str, Any]) -> None:
        """Restore ``state()`` from a checkpoint (before ``start``); an active KL penalty is pending again."""
        if state:
            self.host.set_state(state)
