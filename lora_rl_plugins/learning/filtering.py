"""The after-generation filter (the peers' dynamic sampling: verl DAPO ``filter_groups``, OpenRLHF
``dynamic_filtering_range``): generate, drop the groups that carry no information, refill, so batches
stay full (docs/theory.md §8).

A group carries no information when the advantages the trainer computes for it are all zero
(``bandwidth.advantages.Advantages.zero_groups``, the definition the bandwidth and learning plugins use).
The filter works on *slots*: one slot per group of the generation batch. Round 0 fills the slots the
trainer generated; each further round regenerates the same batch (the same prompts: the integration
refills by resampling the dropped prompts) and fills every still-empty slot whose new group is
informative. After ``max_rounds`` extra rounds the slots still empty keep their round-0 group (a
zero-information group: the batch stays full, ``filter/unfilled_groups`` counts them). Every decision
depends only on the gathered rewards, so every process takes the same decisions and makes the same
collective calls.

Refilling stops early when no empty slot can become informative (``hopeless_groups``): a slot is
*hopeless* when its group had no scored rollout (every reward function returned None/NaN for all K:
the reward functions do not score this prompt, and regenerating the same prompt asks them again), or
when its prompt has never varied over its visits (the per-prompt ledger: at least ``min_visits``
visits, refills included, and no signal at any of them: a prompt every rollout of which gets the same
reward, visit after visit). The empty slots' causes are counted (``GroupFilter.causes``) so the
warning states them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..bandwidth.advantages import AdvantageSettings, grpo_advantages

__all__ = ["HOPELESS_CAUSES", "GroupFilter", "check_filterable", "hopeless_groups", "zero_information_groups"]

#: Why an empty slot cannot become informative (``hopeless_groups``); None: it still may.
HOPELESS_CAUSES = ("unscored", "never_varied")


def zero_information_groups(
    rewards: Sequence[Sequence[float | None]],
    group_size: int,
    weights: Sequence[float] | None = None,
    settings: AdvantageSettings | None = None,
) -> list[bool]:
    """Per group: True when the trainer's advantages of the group are all zero (no information).

    Args:
        rewards: [N][F] each reward function's value per rollout (gathered, global order, groups of
            ``group_size`` consecutive rows).
        group_size: K, rollouts per prompt.
        weights: [F] reward weights.
        settings: how the trainer computes advantages (TRL's defaults when None).

    Returns:
        [N // K] booleans (``grpo_advantages(...).zero_groups()``, docs/theory.md §1).

    Raises:
        ValueError: as ``grpo_advantages`` (N not a multiple of K, mismatched weights).
    """
    return grpo_advantages(rewards, group_size, weights, settings).zero_groups()


def hopeless_groups(
    rewards: Sequence[Sequence[float | None]],
    group_size: int,
    never_varied: Sequence[bool] | None = None,
) -> list[str | None]:
    """Per group: why regenerating its prompt cannot make it informative, or None when it may.

    Args:
        rewards: [N][F] each reward function's value per rollout (gathered, groups of ``group_size`` rows).
        group_size: K.
        never_varied: [N // K] per group, whether its prompt has had no signal at any of at least ``min_visits``
            visits (the ledger's judgement; None: unknown, no group is judged so).

    Returns:
        [N // K]: "unscored" (no rollout of the group has a reward: every function returned None/NaN),
        "never_varied", or None.

    Raises:
        ValueError: N not a multiple of K, or ``never_varied`` of the wrong length.
    """
    if group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rollouts do not split into groups of {group_size}")
    groups = len(rewards) // group_size
    if never_varied is not None and len(never_varied) != groups:
        raise ValueError(f"{len(never_varied)} never_varied flags for {groups} groups")

    def scored(row: Sequence[float | None]) -> bool:
        return any(value is not None and value == value for value in row)  # NaN != NaN

    causes: list[str | None] = []
    for g in range(groups):
        rows = rewards[g * group_size : (g + 1) * group_size]
        if not any(scored(row) for row in rows):
            causes.append("unscored")
        elif never_varied is not None and never_varied[g]:
            causes.append("never_varied")
        else:
            causes.append(None)
    return causes


def check_filterable(settings: AdvantageSettings) -> None:
    """Refuse the filter where a group's advantages depend on the other groups of its batch.

    Merging groups generated in different rounds keeps each group's advantages only when they are
    computed within the group: ``scale_rewards`` "group" or "none" with ``sum_then_normalize``.

    Raises:
        ValueError: ``scale_rewards="batch"`` or ``multi_objective_aggregation="normalize_then_sum"``
            (the message says what to change).
    """
    if settings.aggregation != "sum_then_normalize":
        raise ValueError(
            "sampling filter (filter_groups=True) merges groups generated in different rounds, but "
            f"multi_objective_aggregation={settings.aggregation!r} normalizes advantages over the whole batch: "
            "use multi_objective_aggregation='sum_then_normalize' or turn filter_groups off"
        )
    if settings.scale_rewards == "batch":
        raise ValueError(
            "sampling filter (filter_groups=True) merges groups generated in different rounds, but "
            "scale_rewards='batch' divides advantages by the whole batch's std: use scale_rewards='group' or "
            "'none', or turn filter_groups off"
        )


@dataclass
class GroupFilter:
    """One generation batch's slots and which round fills each (module docstring).

    Args:
        max_rounds: extra generation rounds allowed (0: drop nothing, only count).

    Attributes:
        rounds: the round that fills each slot (None: still empty), [G].
        extra_rounds: extra rounds offered so far.
    """

    max_rounds: int
    rounds: list[int | None] = field(default_factory=list)
    offered: int = 0
    """Rounds offered so far (round 0 included)."""
    zero_generated: int = 0
    """Zero-information groups generated over all rounds."""
    hopeless: list[str | None] = field(default_factory=list)
    """Per slot, from the latest round: why it cannot become informative (``hopeless_groups``), or None."""

    def __post_init__(self) -> None:
        if self.max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {self.max_rounds}")

    @property
    def extra_rounds(self) -> int:
        """Rounds generated after the first."""
        return max(0, self.offered - 1)

    def offer(self, zero_info: Sequence[bool], hopeless: Sequence[str | None] | None = None) -> None:
        """The next round: the zero-information flags of a freshly generated batch (same slots, same order), and
        per slot why it cannot become informative (``hopeless_groups``; None: no slot is judged hopeless).

        Raises:
            ValueError: a later round with a different number of groups than round 0, or ``hopeless`` of
                another length than ``zero_info``.
        """
        if self.offered and len(zero_info) != len(self.rounds):
            raise ValueError(f"a round with {len(zero_info)} groups, the batch has {len(self.rounds)}")
        if hopeless is not None and len(hopeless) != len(zero_info):
            raise ValueError(f"{len(hopeless)} hopeless flags for {len(zero_info)} groups")
        if not self.offered:
            self.rounds = [None] * len(zero_info)
        for g, zero in enumerate(zero_info):
            if not zero and self.rounds[g] is None:
                self.rounds[g] = self.offered
        self.hopeless = list(hopeless) if hopeless is not None else [None] * len(zero_info)
        self.zero_generated += sum(bool(z) for z in zero_info)
        self.offered += 1

    @property
    def empty(self) -> int:
        """Slots no informative group has filled yet."""
        return sum(r is None for r in self.rounds)

    def causes(self) -> dict[str, int]:
        """The empty slots by cause: ``HOPELESS_CAUSES`` (from the latest round) and "capped" (could still have
        become informative: the rounds ran out). Only non-zero counts."""
        counts: dict[str, int] = {}
        for g, round_ in enumerate(self.rounds):
            if round_ is None:
                cause = self.hopeless[g] if g < len(self.hopeless) and self.hopeless[g] else "capped"
                counts[cause] = counts.get(cause, 0) + 1
        return counts

    def needs_refill(self) -> bool:
        """Whether another round should be generated: rounds left and an empty slot that is not hopeless."""
        if self.extra_rounds >= self.max_rounds:
            return False
        return any(r is None and not (g < len(self.hopeless) and self.hopeless[g]) for g, r in enumerate(self.rounds))

    def row_rounds(self, first_row: int, rows: int, group_size: int) -> list[int]:
        """The round each of a process's rows comes from: rows ``first_row`` .. ``first_row + rows - 1`` of
        the global batch (TRL: ``process_index × local rows``), slot = row // K; empty slots take round 0.

        Raises:
            ValueError: the rows reach past the batch.
        """
        if first_row < 0 or (first_row + rows) > len(self.rounds) * group_size:
            raise ValueError(
                f"rows {first_row}..{first_row + rows - 1} outside a batch of {len(self.rounds)} groups × {group_size}"
            )
        return [self.rounds[(first_row + i) // group_size] or 0 for i in range(rows)]

    def metrics(self, group_size: int) -> dict[str, float]:
        """This batch's counts: zero-information groups dropped (generated, not in the batch), extra rounds,
        extra rollouts (every extra round regenerates the whole batch) and slots left without an informative
        group (kept with their round-0 group)."""
        return {
            "groups_dropped": float(self.zero_generated - self.empty),
            "extra_rounds": float(self.extra_rounds),
            "extra_rollouts": float(self.extra_rounds * len(self.rounds) * group_size),
            "unfilled_groups": float(self.empty),
        }
