"""Information-bandwidth accounting: bits each step delivers, over the run, against adapter capacity.

See ``lora_rl_plugins.bandwidth.accounting`` for the per-group bound and estimate, and the metric
table in ``BANDWIDTH_METRICS`` for what each reported number is.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ..lora.capacity import adapter_capacity_bits, smallest_rank
from ..plugin.base import SavedState, Stateful, WarnOnce, float_values
from ..plugin.events import AdapterReady, AdapterSummary, RolloutsScored, RunStarted, StepEnded
from ..plugin.hookspecs import hookimpl
from ..plugin.log import logger
from ..plugin.metrics import MetricInfo, format_percent, window_mean
from .accounting import GroupAccount, account_group, account_token_group
from .advantages import AdvantageSettings, batch_advantages
from .config import (
    BANDWIDTH_METRICS,
    BandwidthConfig,
    CapacityWarning,
    ContinuousRewardWarning,
    MissingRewardWarning,
    RewardLevelsWarning,
)
from .information import quantise
from .rewards import batch_combined_rewards, partly_missing, split_groups

__all__ = [
    "BANDWIDTH_METRICS",
    "BandwidthConfig",
    "BandwidthPlugin",
    "CapacityWarning",
    "ContinuousRewardWarning",
    "MissingRewardWarning",
    "RewardLevelsWarning",
]

#: Distinct reward values remembered when levels are inferred; past this the count is a lower bound.
MAX_TRACKED_LEVELS = 4096
#: Capacity fractions at which a one-time warning is given.
CAPACITY_THRESHOLDS = (0.5, 1.0)
#: Grid steps 1/m (m = 1 .. this) on which a reward function's values count as levels, not a continuous reward:
#: integers (m = 1, e.g. ``len(completion)``), halves, ..., values with two decimals (m = 100).
LEVEL_GRID_DENOMINATORS = 100
#: At most this many distinct rewards (or K, the group size, if larger) count as a few-valued reward.
FEW_LEVELS = 16


#: What the plugin keeps across a resume.
BANDWIDTH_STATE = SavedState(
    steps=int,
    bits_total=float,
    bound_total=float,
    rollouts_total=int,
    missing_total=int,
    small_groups_total=int,
    uniform_prior_total=float,
    seen_levels=lambda saved: {v if isinstance(v, str) else float(v) for v in saved},
    levels_saturated=bool,
    grids=lambda saved: {str(name): [int(m) for m in grid] for name, grid in saved.items()},
    warned=WarnOnce,
    last_step=float_values,
    step_window=lambda saved: {str(name): [float(v) for v in values] for name, values in saved.items()},
)


class BandwidthPlugin(Stateful):
    """Counts the bits each generation batch delivers and compares the run's total with capacity."""

    STATE = BANDWIDTH_STATE

    fail_fast = True  # a built-in: its faults are bugs to see, not plugins to disable

    def __init__(self, config: BandwidthConfig | None = None) -> None:
        self.config = config or BandwidthConfig()
        self.adapter: AdapterSummary | None = None
        self.total_steps: int | None = None
        self._warned_no_lora = False
        self.advantage_settings = AdvantageSettings()
        # Run state (everything in get_state).
        self.steps = 0
        self.bits_total = 0.0
        self.bound_total = 0.0
        self.rollouts_total = 0
        self.missing_total = 0
        self.small_groups_total = 0
        self.uniform_prior_total = 0.0
        self.seen_levels: set[float | str] = set()
        self.levels_saturated = False
        self.grids: dict[str, list[int]] = {}
        """Per reward function: the m <= LEVEL_GRID_DENOMINATORS whose grid (1/m)·ℤ holds every value it returned."""
        self.warned = WarnOnce()
        self.last_step: dict[str, float] = {}
        self._pending = self._empty_pending()
        self.step_window: dict[str, list[float]] = {}  # each per-step value since the last collection (their mean)

    # -- hooks ------------------------------------------------------------------------------
    @hookimpl
    def on_run_start(self, run: RunStarted) -> None:
        self.total_steps = run.total_steps
        self.advantage_settings = run.grpo.advantage

    @hookimpl
    def on_adapter_ready(self, adapter: AdapterReady) -> None:
        self.adapter = adapter.adapter
        if not self.adapter.is_lora and not self._warned_no_lora:
            # an info, not a warning: full fine-tuning is a healthy run; nothing here needs fixing
            self._warned_no_lora = True
            logger.info(
                "lora_rl_plugins: the model has no LoRA adapter, so adapter capacity "
                "(bandwidth/capacity_bits, capacity_used, rank_sufficient) is not reported; the bits "
                "delivered are. Pass peft_config= to the trainer (or wrap the model with peft.get_peft_model) "
                "to train a LoRA adapter."
            )

    @hookimpl
    def on_rollouts_scored(self, batch: RolloutsScored) -> None:
        for account in self.account(batch):
            self._add(account)

    @hookimpl
    def on_step_end(self, step: StepEnded) -> None:
        pending = self._pending
        self._pending = self._empty_pending()
        self.steps = step.step
        if step.total_steps:
            self.total_steps = step.total_steps
        self.bits_total += pending["bits"]
        self.bound_total += pending["bound"]
        self.rollouts_total += int(pending["rollouts"])
        self.uniform_prior_total += pending["uniform_prior"]
        self.last_step = {"bits_step": pending["bits"], "bound_step": pending["bound"]}
        if self.config.answer_space_size is not None:
            self.last_step["uniform_prior_step"] = pending["uniform_prior"]
        if pending["rollouts"]:
            self.last_step["bits_per_rollout"] = pending["bits"] / pending["rollouts"]
        if pending["groups"]:
            self.last_step["zero_info_frac"] = pending["zero_groups"] / pending["groups"]
        for name, value in self.last_step.items():
            self.step_window.setdefault(name, []).append(value)
        self._check_capacity()

    @hookimpl
    def collect_metrics(self) -> Mapping[str, float]:
        """The per-step values (``reduce="mean"``) as their mean over the steps since the last collection (as TRL
        averages a per-step metric over its logging window: ``plugin.metrics.window_mean``), and the totals."""
        window, self.step_window = self.step_window, {}
        values: dict[str, float] = {name: window_mean(steps) for name, steps in window.items()}
        values.update(
            bits_total=self.bits_total,
            bound_total=self.bound_total,
            missing_rewards=float(self.missing_total),
            small_groups=float(self.small_groups_total),
        )
        if self.config.answer_space_size is not None:
            values["uniform_prior_total"] = self.uniform_prior_total
        levels = self.reward_levels
        if levels is not None:
            values["reward_levels"] = float(levels)
            values["reward_levels_inferred"] = float(self.config.reward_levels is None)
        capacity = self.capacity_bits
        if capacity is not None:
            values["capacity_bits"] = capacity
            values["capacity_used"] = self.bits_total / capacity
            values["projected_bits"] = self.projected_bits
            values["rank_sufficient"] = float(self.rank_sufficient or 0)
            values["adapter_rank"] = float(self.adapter.max_rank)  # type: ignore[union-attr]
            values["params_per_rank"] = float(self.adapter.params_per_rank)  # type: ignore[union-attr]
        return {f"bandwidth/{name}": value for name, value in values.items()}

    @hookimpl
    def describe_metrics(self) -> Sequence[MetricInfo]:
        return BANDWIDTH_METRICS

    @hookimpl
    def summary_line(self) -> str | None:
        if not self.steps:
            return None
        line = f"signal {self.bits_total:,.0f} bits (bound {self.bound_total:,.0f})"
        if "continuous" in self.warned:
            line += " [continuous reward, no levels declared: K·log2 K per group]"
        capacity = self.capacity_bits
        if capacity:
            line += f", capacity used {format_percent(self.bits_total / capacity)}"
        return line

    def restored(self) -> None:
        self._pending = self._empty_pending()

    # -- accounting -------------------------------------------------------------------------
    def account(self, batch: RolloutsScored) -> list[GroupAccount]:
        """Account every group of ``batch`` (updates the inferred reward levels).

        Zero-information groups and the estimate follow the advantages the trainer computes with its
        settings (``RunStarted.grpo.advantage``); the bound counts reward levels
        separately: the quantised combined reward with ``reward_range``, the vector of reward-function
        values under ``normalize_then_sum``, else the combined reward.

        Raises:
            RewardValueError: a reward is ±inf or not a number.
            RolloutShapeError, ValueError: rewards, completions, answers or groups do not line up.
        """
        config = self.config
        combined = batch_combined_rewards(batch)
        for name, count in partly_missing(batch.rewards, batch.reward_names).items():
            # an info, not a warning: TRL documents None as "this function does not apply" (multi-task rewards)
            self.warned.inform(
                f"partly_missing:{name}",
                f"lora_rl_plugins: reward function {name!r} returned None/NaN for {count} of {len(combined)} "
                "rollouts that other reward functions scored; those rollouts are combined from the other functions "
                "alone (TRL sums with nansum). Return a number for every rollout if that is not intended.",
            )
        groups = split_groups(combined, batch.group_size)
        advantages = batch_advantages(batch, self.advantage_settings)
        keys = self._level_keys(batch, combined)
        self._observe_levels(key for key in keys if key is not None)
        levels = self.reward_levels or 1
        completions = self._per_group(batch.completions, batch.group_size, "completions", len(combined))
        answers = self._answers(batch, len(combined))
        answer_groups = self._per_group(answers, batch.group_size, "answers", len(combined))
        tokens = self._per_group(batch.token_rewards, batch.group_size, "token_rewards", len(combined))
        tolerance = advantages.tolerance
        accounts = []
        for g in range(len(groups)):
            group_completions = completions[g] if completions else None
            if tokens is not None:
                account = account_token_group(
                    tokens[g], alphabet_size=self._token_levels(tokens[g]), completions=group_completions
                )
            else:
                k = batch.group_size
                account = account_group(
                    combined[g * k : (g + 1) * k],
                    levels=levels,
                    advantages=advantages.group(g),
                    tolerance=tolerance,
                    completions=group_completions,
                    answers=answer_groups[g] if answer_groups else None,
                    answer_space_size=config.answer_space_size,
                )
            accounts.append(account)
        if tokens is None and config.reward_levels is None and "continuous" not in self.warned:
            self._observe_grids(batch)
            self._check_continuous(keys, accounts, batch.group_size)
        return accounts

    def _level_keys(self, batch: RolloutsScored, combined: Sequence[float]) -> list[float | str | None]:
        """What the bound counts as one reward level, per rollout (None: unscored)."""
        config = self.config
        if config.reward_range is not None and config.reward_levels is not None:
            low, high = config.reward_range
            return [None if math.isnan(r) else float(quantise(r, config.reward_levels, low, high)) for r in combined]
        weights = batch.reward_weights
        if self.advantage_settings.aggregation == "normalize_then_sum" and len(batch.reward_names) > 1:
            # each function is normalised on its own: the update depends on the whole vector of values
            used = [j for j, w in enumerate(weights) if w != 0]
            keys: list[float | str | None] = []
            for row, total in zip(batch.rewards, combined, strict=True):
                if math.isnan(total):
                    keys.append(None)
                    continue
                vector = tuple(None if row[j] is None or math.isnan(float(row[j])) else float(row[j]) for j in used)
                keys.append(repr(vector))
            return keys
        return [None if math.isnan(r) else r for r in combined]

    def _observe_grids(self, batch: RolloutsScored) -> None:
        """Narrow each reward function's grids (1/m)·ℤ, m = 1 .. LEVEL_GRID_DENOMINATORS, to those holding every
        value it returned in ``batch`` (a value v is on the grid when |v·m − round(v·m)| <= 1e-9·max(1, |v·m|))."""
        for f, name in enumerate(batch.reward_names):
            grid = self.grids.get(name)
            if grid is None:
                grid = self.grids[name] = list(range(1, LEVEL_GRID_DENOMINATORS + 1))
            if not grid:
                continue
            values = {float(row[f]) for row in batch.rewards if row[f] is not None}
            for value in values:
                if math.isnan(value) or value == round(value):
                    continue  # an integer lies on every grid
                grid[:] = [m for m in grid if abs(value * m - round(value * m)) <= 1e-9 * max(1.0, abs(value * m))]
                if not grid:
                    break

    def looks_continuous(self, keys: Sequence[Any], accounts: Sequence[GroupAccount], size: int) -> bool:
        """Whether the reward looks continuous at this batch (the rule in ``ContinuousRewardWarning``).

        ``keys`` are the batch's level keys per rollout (None: unscored), ``accounts`` its groups, ``size`` K.
        """
        if self.config.reward_levels is not None:
            return False
        if self.grids and all(self.grids.values()):
            return False  # every function's values lie on a grid: integer or few-decimal levels
        if len(self.seen_levels) <= max(size, FEW_LEVELS):
            return False  # a few-valued reward
        if max((a.scored for a in accounts), default=0) < 3:
            return False
        for g in range(len(accounts)):
            group = [key for key in keys[g * size : (g + 1) * size] if key is not None]
            if len(set(group)) < len(group):
                return False
        return True

    def _check_continuous(self, keys: Sequence[Any], accounts: Sequence[GroupAccount], size: int) -> None:
        """Warn once when no levels are declared and the reward looks continuous (docs/theory.md §1)."""
        if "continuous" in self.warned or not self.looks_continuous(keys, accounts, size):
            return
        self.warned.warn(
            "continuous",
            f"lora_rl_plugins: every group of this batch gave each rollout its own reward, and "
            f"{len(self.seen_levels)} distinct rewards have been seen: the reward looks continuous. With no "
            f"declared levels every distinct float is a level, so bandwidth/bits_step counts K·log2 K = "
            f"{size * math.log2(size):.1f} bits for a group of K={size} whatever the rewards, and the bound grows with "
            "every new value. Set reward_levels and reward_range (e.g. reward_levels=8, reward_range=(0, 1)) to "
            "count the reward at a resolution you choose.",
            ContinuousRewardWarning,
        )

    @property
    def reward_levels(self) -> int | None:
        """L: declared, or the distinct rewards seen so far (None before any reward)."""
        declared = self.config.reward_levels
        seen = len(self.seen_levels)
        if declared is None:
            return seen or None
        return max(declared, seen) if self.config.reward_range is None else declared

    @property
    def capacity_bits(self) -> float | None:
        """bits_per_param × the adapter's trainable LoRA parameters; None without LoRA."""
        if self.adapter is None or not self.adapter.is_lora:
            return None
        return adapter_capacity_bits(self.adapter.trainable_params, self.config.bits_per_param)

    @property
    def projected_bits(self) -> float:
        """bits_total extrapolated linearly to the planned number of steps (bits_total if unknown)."""
        if self.total_steps and self.steps:
            return self.bits_total * max(self.total_steps, self.steps) / self.steps
        return self.bits_total

    @property
    def rank_sufficient(self) -> int | None:
        """Smallest adapter rank r whose capacity holds ``projected_bits`` (matrices keep their rank ratio r_m/r,
        as PEFT's own rank patterns scale with r); None without LoRA."""
        if self.adapter is None or not self.adapter.is_lora:
            return None
        return smallest_rank(self.projected_bits, self.adapter.params_per_rank, self.config.bits_per_param)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _empty_pending() -> dict[str, float]:
        return {"bits": 0.0, "bound": 0.0, "rollouts": 0.0, "groups": 0.0, "zero_groups": 0.0, "uniform_prior": 0.0}

    def _add(self, account: GroupAccount) -> None:
        pending = self._pending
        pending["bits"] += account.estimate
        pending["bound"] += account.bound
        pending["rollouts"] += account.scored
        pending["groups"] += 1
        pending["zero_groups"] += account.zero_info
        pending["uniform_prior"] += account.uniform_prior or 0.0
        self.missing_total += account.missing
        self.small_groups_total += account.rule == "too_small"
        if account.rule == "too_small":
            self.warned.warn(
                "too_small",
                f"lora_rl_plugins: a group has {account.scored} scored rollout(s) of {account.size}: a group needs at "
                "least 2 rewards for a group-normalised advantage, so it delivers 0 bits (counted in "
                "bandwidth/small_groups). Check for reward functions returning None, or num_generations < 2.",
                MissingRewardWarning,
            )

    @staticmethod
    def _per_group(values: Sequence[Any] | None, size: int, what: str, expected: int) -> list[Sequence[Any]] | None:
        if values is None:
            return None
        if len(values) != expected:
            raise ValueError(f"{len(values)} {what} for {expected} rollouts: give exactly one per rollout")
        return split_groups(values, size)

    def _answers(self, batch: RolloutsScored, count: int) -> Sequence[Hashable | None] | None:
        if batch.answers is not None:
            return batch.answers
        extractor = self.config.answer_extractor
        if extractor is None or batch.completions is None:
            return None
        return [extractor(completion) for completion in batch.completions]

    def _observe_levels(self, values: Any) -> None:
        if self.levels_saturated:
            return
        new = set(values).difference(self.seen_levels)
        if not new:  # no level not seen before: nothing to count or warn about
            return
        for value in new:
            self.seen_levels.add(value)
            if len(self.seen_levels) >= MAX_TRACKED_LEVELS:
                self.levels_saturated = True
                self.warned.warn(
                    "levels_saturated",
                    f"lora_rl_plugins: {MAX_TRACKED_LEVELS} distinct reward values seen (integer or grid values: "
                    "levels, not a continuous reward); the count stops here, so L may undercount the levels. "
                    "Declare reward_levels (the number of values the reward can take), or quantise with reward_range."
                    if self.grids and all(self.grids.values())
                    else f"lora_rl_plugins: {MAX_TRACKED_LEVELS} distinct reward values seen; the reward looks "
                    "continuous, so every distinct float counts as a level and the bound is loose. Set "
                    "reward_levels and reward_range to quantise it (e.g. reward_levels=8, reward_range=(0, 1)).",
                    RewardLevelsWarning,
                )
                return
        declared = self.config.reward_levels
        if declared is not None and self.config.reward_range is None and len(self.seen_levels) > declared:
            self.warned.warn(
                "levels_exceeded",
                f"lora_rl_plugins: reward_levels={declared} was declared but {len(self.seen_levels)} distinct "
                "rewards were seen; the bounds use the observed count. Declare the right number of levels or "
                "quantise with reward_range.",
                RewardLevelsWarning,
            )

    def _token_levels(self, group: Sequence[Sequence[float]]) -> int:
        if self.config.token_reward_levels is not None:
            return self.config.token_reward_levels
        return max(2, len({r for seq in group if seq is not None for r in seq}))

    def _check_capacity(self) -> None:
        capacity = self.capacity_bits
        if not capacity:
            return
        used = self.bits_total / capacity
        if used < CAPACITY_THRESHOLDS[0]:  # the common case: below every threshold
            return
        for threshold in CAPACITY_THRESHOLDS:
            key = f"capacity_{threshold:g}"
            if used >= threshold and key not in self.warned:
                rank = self.adapter.max_rank if self.adapter else "?"
                self.warned.warn(
                    key,
                    f"lora_rl_plugins: the run has delivered an estimated {self.bits_total:,.0f} bits of signal, "
                    f"{used:.0%} of the adapter's capacity ({capacity:,.0f} bits at "
                    f"{self.config.bits_per_param:g} bits/parameter, rank {rank}). "
                    f"Projected over the run: {self.projected_bits:,.0f} bits; the smallest rank that holds them "
                    f"is r={self.rank_sufficient}.",
                    CapacityWarning,
                )
