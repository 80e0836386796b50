"""The run's events in words: the one list the console summary (``lora-rl demo``) prints and the report
(``lora-rl report``) opens with, read from the logged metrics alone."""

from __future__ import annotations

from dataclasses import dataclass

from .runlog import RunLog

__all__ = ["EOS_DRIFT_RATIO", "RunEvent", "run_events"]

#: TRL's ``completions/clipped_ratio`` above which the run is said to have lost its ``<eos>``: more than
#: half the completions were cut at the length limit.
EOS_DRIFT_RATIO = 0.5


@dataclass(frozen=True)
class RunEvent:
    """One thing that happened in a run: ``kind`` ("kl_budget", "kl_penalty", "eos_drift",
    "signal_exhausted", "filter"), the step it happened at (None for run totals) and a sentence."""

    kind: str
    step: int | None
    text: str
    value: float | None = None
    """The measured value the event is about (the KL at the crossing, the clipped ratio, ...)."""


def _first(run: RunLog, name: str, above: float) -> tuple[int, float] | None:
    """(step, value) of the first logged value of ``name`` above ``above``."""
    return next(((s, v) for s, v in run.series.get(name, []) if v > above), None)


def run_events(run: RunLog, *, kl_budget: float | None = None, signal_threshold: float | None = None) -> list[RunEvent]:
    """The run's events, in step order (run totals last).

    - the KL budget crossed: the first ``kl_monitor/kl_mean`` (exact) above the budget (``kl_budget``, else
      the logged ``kl_monitor/budget``), at the step it was measured (``kl_monitor/measured_step``);
    - a KL penalty turned on (``kl_monitor/penalty_beta`` > 0: ``on_budget="penalize"``);
    - ``<eos>`` drift: TRL's ``completions/clipped_ratio`` above ``EOS_DRIFT_RATIO``;
    - the signal exhausted: ``learning/signal_window_frac`` below ``signal_threshold`` (default: the
      ``LearningConfig`` default);
    - the after-generation filter's totals (``learning/filter_*``), when it dropped or refilled anything.
    """
    from ..learning.plugin import LearningConfig

    events: list[RunEvent] = []
    budget = kl_budget if kl_budget is not None else run.last("kl_monitor/budget")
    if budget is not None and (crossed := _first(run, "kl_monitor/kl_mean", budget)) is not None:
        step, kl = crossed
        measured = dict(run.series.get("kl_monitor/measured_step", [])).get(step)
        step = int(measured) if measured else step
        events.append(
            RunEvent(
                "kl_budget",
                step,
                f"KL budget crossed at step {step}: KL(policy || reference) {kl:.2f} > budget {budget:g} nats/token "
                "(exact, the mean per measured token)",
                kl,
            )
        )
    if (penalty := _first(run, "kl_monitor/penalty_beta", 0.0)) is not None:
        events.append(
            RunEvent(
                "kl_penalty",
                penalty[0],
                f"KL penalty on from step {penalty[0]}: beta {penalty[1]:g} (on_budget='penalize')",
            )
        )
    if (clipped := _first(run, "completions/clipped_ratio", EOS_DRIFT_RATIO)) is not None:
        last = run.last("completions/clipped_ratio")
        events.append(
            RunEvent(
                "eos_drift",
                clipped[0],
                f"<eos> drift from step {clipped[0]}: TRL's completions/clipped_ratio {clipped[1]:.2f} (at the end "
                f"{last:.2f}), the share of completions cut at the length limit without <eos>: the policy stopped "
                "ending its answers",
                clipped[1],
            )
        )
    threshold = LearningConfig().signal_threshold if signal_threshold is None else signal_threshold
    window = run.series.get("learning/signal_window_frac", [])
    if (low := next(((s, v) for s, v in window if v < threshold), None)) is not None:
        events.append(
            RunEvent(
                "signal_exhausted",
                low[0],
                f"prompts exhausted at step {low[0]}: {low[1]:.0%} of groups over the signal window carried a signal "
                f"(below {threshold:g}): the prompts are solved or unsolved, they no longer teach",
            )
        )
    events.sort(key=lambda event: event.step or 0)
    dropped, rounds = run.last("learning/filter_groups_dropped") or 0, run.last("learning/filter_extra_rounds") or 0
    unfilled = run.last("learning/filter_unfilled_groups") or 0
    if dropped or rounds or unfilled:
        rollouts, seconds = run.last("learning/filter_extra_rollouts") or 0, run.last("learning/filter_seconds") or 0
        events.append(
            RunEvent(
                "filter",
                None,
                f"filter: {dropped:,.0f} zero-information groups dropped, {rounds:,.0f} refill rounds "
                f"({rollouts:,.0f} rollouts, {seconds:,.0f} s), {unfilled:,.0f} groups kept without information "
                "(filter_max_rounds ran out)",
            )
        )
    return events
