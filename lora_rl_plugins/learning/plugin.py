"""The learning plugin: the per-prompt ledger and signal exhaustion, and the services built on the ledger
(informative prompt sampling, the after-generation filter; ``learning.services``). The probes
(``learning/absorbed_bits``) are their own plugin (``learning.probing``); options and metrics are in
``learning.config`` (docs/theory.md §1, §8).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..bandwidth.advantages import AdvantageSettings, advantage_pattern, batch_advantages
from ..bandwidth.information import group_empirical_bits
from ..bandwidth.rewards import batch_combined_rewards, split_groups
from ..plugin.base import WarnOnce
from ..plugin.events import RolloutsScored, RunStarted, StepEnded, StopTraining
from ..plugin.hookspecs import hookimpl
from ..plugin.log import logger
from ..plugin.metrics import MetricInfo
from ..plugin.services import BatchFilter, PromptSampler
from .config import (
    LEARNING_METRICS,
    PROBE_METRICS,
    LearningConfig,
    LedgerEvictionWarning,
    SignalExhaustedWarning,
)
from .ledger import PromptLedger, classify_group
from .services import GroupFiltering, InformativeSampling

__all__ = [
    "LEARNING_METRICS",
    "PROBE_METRICS",
    "LearningConfig",
    "LearningPlugin",
    "LedgerEvictionWarning",
    "SignalExhaustedWarning",
]


class LearningPlugin:
    """Keeps the per-prompt ledger, watches the signal run out, and offers the services built on the ledger:
    ``PromptSampler`` (``sampling="informative"``) and ``BatchFilter`` (``sampling="filter"``)."""

    fail_fast = True  # a built-in: its faults are bugs to see, not plugins to disable

    def __init__(self, config: LearningConfig | None = None) -> None:
        self.config = config or LearningConfig()
        self.ledger = PromptLedger(self.config.ledger_max_prompts)
        self.advantage_settings = AdvantageSettings()
        self.group_size = 0
        self.warned = WarnOnce()
        self.sampler = InformativeSampling(self.ledger, self.config)
        self.filter = GroupFiltering(self.config, self.warned, self.ledger)
        # run state (get_state)
        self.window: list[tuple[int, int]] = []
        """(informative groups, groups) of each of the last ``signal_window`` steps."""
        self.top = -math.inf
        self.bottom = math.inf
        self.exhausted = False
        self.seconds_per_rollout = 0.0
        self._pending = [0, 0]
        self._action: StopTraining | None = None

    @property
    def skipped_prompts(self) -> int:
        """Prompts informative sampling passed over, over the run."""
        return self.sampler.skipped_prompts

    # -- hooks ------------------------------------------------------------------------------
    @hookimpl
    def get_service(self, kind: type) -> Any:
        if kind is PromptSampler and self.config.sampling == "informative":
            return self.sampler
        if kind is BatchFilter and self.config.sampling == "filter":
            return self.filter
        return None

    @hookimpl
    def on_run_start(self, run: RunStarted) -> None:
        self.advantage_settings = self.filter.advantage_settings = run.grpo.advantage
        self.group_size = run.group_size or 0

    @hookimpl
    def on_rollouts_scored(self, batch: RolloutsScored) -> None:
        combined = batch_combined_rewards(batch)
        scored = [r for r in combined if r == r]  # r == r: not NaN
        if scored:
            self.top, self.bottom = max(self.top, *scored), min(self.bottom, *scored)
        top = self.config.solved_reward if self.config.solved_reward is not None else self.top
        groups = split_groups(combined, batch.group_size)
        # informative = the trainer's advantages are not all zero: the bandwidth plugin's zero_info, same settings
        advantages = batch_advantages(batch, self.advantage_settings)
        zero_groups = advantages.zero_groups()
        keys = batch.prompt_keys
        if keys is not None and len(keys) != len(combined):
            raise ValueError(f"{len(keys)} prompt keys for {len(combined)} rollouts: give exactly one per rollout")
        prompts = batch.prompts if batch.prompts is not None and len(batch.prompts) == len(combined) else None
        for g, rewards in enumerate(groups):
            outcome = classify_group(rewards, top, self.bottom, zero_info=zero_groups[g])
            self._pending[0] += outcome == "informative"
            self._pending[1] += 1
            if keys is None:
                continue
            values = [r for r in rewards if r == r]
            # the bandwidth estimate before its cap: n·H(pattern of the trainer's advantages), 0 when all are zero
            bits = 0.0
            if not zero_groups[g]:
                scored = [a for a, r in zip(advantages.group(g), rewards, strict=True) if r == r]
                bits = group_empirical_bits(advantage_pattern(scored, advantages.tolerance))
            mean = sum(values) / len(values) if values else float("nan")
            first = g * batch.group_size
            evicted = self.ledger.visit(
                keys[first],
                outcome=outcome,
                reward_mean=mean,
                bits=bits,
                step=batch.step,
                prompt=prompts[first] if prompts else None,
            )
            if evicted:
                self.warned.warn(
                    "evicted",
                    f"lora_rl_plugins: the per-prompt ledger holds ledger_max_prompts={self.ledger.max_prompts} "
                    "prompts; the least recently visited are evicted (their history is forgotten). Raise "
                    "ledger_max_prompts if the dataset is larger and memory allows.",
                    LedgerEvictionWarning,
                )
        if batch.generation_seconds is not None and combined:
            self.seconds_per_rollout = batch.generation_seconds / len(combined)

    @hookimpl
    def on_step_end(self, step: StepEnded) -> Sequence[StopTraining] | None:
        if self._pending[1]:
            self.window.append((self._pending[0], self._pending[1]))
            self.window = self.window[-self.config.signal_window :]
        self._pending = [0, 0]
        if self.config.informative_sampling and self.sampler.selector is None:
            self.warned.warn(
                "no_selector",
                "lora_rl_plugins: informative_sampling=True, but nothing draws prompts through it: TRL installs it "
                "on GRPOTrainer's sampler (map-style datasets only; an iterable dataset is streamed without one), "
                "Lightning through callback.informative_sampler(prompts) passed to your prompt stream.",
                UserWarning,
            )
        self._check_signal(step.step)
        action, self._action = self._action, None
        return [action] if action is not None else None

    @hookimpl
    def collect_metrics(self) -> Mapping[str, float]:
        values: dict[str, float] = {}
        if len(self.ledger):
            values["prompts_seen"] = float(len(self.ledger))
            values.update({f"{name}_frac": v for name, v in self.ledger.fractions().items()})
        if self.window:
            values["signal_window_frac"] = self.signal_fraction
        if self.config.informative_sampling:
            values["rollouts_skipped"] = float(self.skipped_prompts * self.group_size)
            values["generation_seconds_saved"] = self.skipped_prompts * self.group_size * self.seconds_per_rollout
        if self.config.sampling == "filter":
            values.update({f"filter_{name}": value for name, value in self.filter.totals.items()})
        return {f"learning/{name}": value for name, value in values.items()}

    @hookimpl
    def describe_metrics(self) -> Sequence[MetricInfo]:
        return LEARNING_METRICS

    @hookimpl
    def get_state(self) -> Mapping[str, Any]:
        return {
            "window": [list(w) for w in self.window],
            "top": self.top if math.isfinite(self.top) else None,
            "bottom": self.bottom if math.isfinite(self.bottom) else None,
            "exhausted": self.exhausted,
            "warned": sorted(self.warned),
            **self.sampler.get_state(),
            "filter_totals": dict(self.filter.totals),
            # not seconds_per_rollout: a wall-time measurement, re-measured at every batch, no resume could repeat it
            "ledger": self.ledger.get_state(),
        }

    @hookimpl
    def set_state(self, state: Mapping[str, Any]) -> None:
        self.window = [(int(a), int(b)) for a, b in state["window"]]
        self.top = -math.inf if state["top"] is None else float(state["top"])
        self.bottom = math.inf if state["bottom"] is None else float(state["bottom"])
        self.exhausted = bool(state["exhausted"])
        self.warned.clear()
        self.warned.update(state["warned"])  # the same set the filter warns through
        self.sampler.set_state(state)
        self.filter.totals.update({k: float(v) for k, v in state.get("filter_totals", {}).items()})
        self.ledger.set_state(state["ledger"])
        self._pending = [0, 0]

    # -- measurement ------------------------------------------------------------------------
    @property
    def signal_fraction(self) -> float:
        """Informative groups / groups over the window (NaN before any group)."""
        groups = sum(b for _, b in self.window)
        return sum(a for a, _ in self.window) / groups if groups else float("nan")

    def _check_signal(self, step: int) -> None:
        config = self.config
        if config.on_signal_exhausted == "off" or len(self.window) < config.signal_window:
            return
        fraction = self.signal_fraction
        if fraction >= config.signal_threshold:
            self.exhausted = False
            return
        if self.exhausted:
            return
        self.exhausted = True
        split = self.ledger.fractions()
        detail = (
            f"of the {len(self.ledger)} prompts seen, {split['solved']:.0%} are solved (every rollout at the top "
            f"reward) and {split['unsolved']:.0%} unsolved (every rollout at the bottom)"
            if split
            else "the integration passed no prompt keys, so the solved/unsolved split is unknown"
        )
        message = (
            f"lora_rl_plugins: the reward signal ran out at step {step}: only {fraction:.1%} of groups over the last "
            f"{config.signal_window} steps had advantages not all zero (signal_threshold={config.signal_threshold:g}); "
            f"{detail}. "
            "Mostly solved: the data is too easy (harder prompts or stop); mostly unsolved: too hard (easier prompts, "
            "more generations, a warm-up)"
        )
        if config.on_signal_exhausted == "warn":
            warnings.warn(message + ".", SignalExhaustedWarning, stacklevel=2)
        else:
            logger.warning("%s: stopping training (on_signal_exhausted='stop').", message)
            self._action = StopTraining(message)
