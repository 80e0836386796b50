"""Bits one group of rollouts delivers: a structural bound and an observable estimate.

For a group of K rollouts of one prompt with rewards r_1..r_K (NaN = missing, excluded) and the
advantages A_1..A_K the trainer computes from them (``lora_rl_plugins.bandwidth.advantages``):

* zero information: every A_i is zero (the group adds nothing to the policy-gradient term). This is
  decided by the advantages, not by the rewards as counted for the bound: a quantised reward can sit
  in one level while the trainer's advantages, computed from the raw rewards, are not zero.
* bound = D · log2 L, with D distinct completions (K when completions are unknown) and L reward
  levels ([Li] §3.1, [Hernandez] "One-bit bound", summed over the distinct rollouts);
  tightened to log2(M+1) for binary rewards when final answers are known, M the number of
  distinct answers ([Hernandez], "Group bound").
* uniform_prior = log2 V − ((V−M)/V) log2(V−M) when the answer space size V is known
  ([Hernandez], Figure 6): the group's information *if* the policy's prior over the V answers is
  uniform. It is exact only under that prior and is neither a bound nor the information a trained
  policy receives (after learning the true value can exceed it), so it is reported on its own.
* estimate = 0 for a zero-information group, else min(n · H(pattern of the trainer's advantages over
  the n scored rollouts), bound): the entropy of which rollouts the update tells apart, capped by
  the bound from the declared or inferred levels (docs/theory.md §1; a design choice). For one
  reward function under TRL's defaults the pattern is the reward pattern: 0 for a constant group,
  K bits for a binary group at success rate 1/2. With a continuous reward every rollout is its own
  class, so the estimate is K·log2 K whatever the rewards.

Token-level rewards R_1..R_T (alphabet A each): bound Σ over distinct rollouts of T_i · log2 A
([Hernandez], "Token-level capacity"); estimate Σ_t K_t · H(rewards at position t), capped.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from .advantages import ZERO_TOLERANCE, advantage_pattern, grpo_advantages
from .information import (
    empirical_entropy,
    group_answer_bound,
    group_empirical_bits,
    group_uniform_prior_bits,
    rollout_bound,
)

__all__ = ["GroupAccount", "account_group", "account_token_group", "freeze"]


@dataclass(frozen=True)
class GroupAccount:
    """The information one group delivered (bits)."""

    size: int
    """K: rollouts in the group."""
    scored: int
    """Rollouts with a reward (not NaN)."""
    bound: float
    """Upper bound on the bits: D·log2 L, or log2(M+1) for binary rewards with answers (rule)."""
    estimate: float
    """Observable estimate, <= bound: 0 for a zero-information group, else n·H(advantage pattern), capped."""
    rule: str
    """Which bound applied: "levels", "answers", "tokens" or "too_small" (< 2 scored rollouts)."""
    zero_info: bool
    """True when the trainer's advantages for the group are all zero (this includes groups with fewer
    than 2 scored rollouts): the group adds nothing to the policy-gradient term."""
    uniform_prior: float | None = None
    """log2 V − ((V−M)/V)·log2(V−M) when the answer space size V is known (binary rewards with
    answers): the group's information under a uniform prior over the answers. Exact only under that
    prior; not a bound (a trained policy's group can carry more). None otherwise."""

    @property
    def missing(self) -> int:
        """Rollouts of the group without a reward (size − scored)."""
        return self.size - self.scored


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a completion (text, token ids, or chat messages)."""
    if type(value) is str:  # the common case, first
        return value
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if hasattr(value, "tolist"):
        return freeze(value.tolist())
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _scored(rewards: Sequence[float]) -> list[int]:
    return [i for i, r in enumerate(rewards) if not math.isnan(r)]


def _distinct(items: Sequence[Any] | None, keep: list[int]) -> int:
    if items is None:
        return len(keep)
    return len({item if type(item) is str else freeze(item) for item in (items[i] for i in keep)})


def account_group(
    rewards: Sequence[float],
    *,
    levels: int,
    advantages: Sequence[float] | None = None,
    tolerance: float | None = None,
    completions: Sequence[Any] | None = None,
    answers: Sequence[Hashable | None] | None = None,
    answer_space_size: int | None = None,
) -> GroupAccount:
    """Bound, estimate and zero-information flag for one group (module docstring; docs/theory.md §1).

    Args:
        rewards: [K] the group's combined rewards; NaN marks an unscored rollout. They give the
            scored set, and the advantages when ``advantages`` is None.
        levels: L, the number of values the reward takes (declared or inferred).
        advantages: [K] the trainer's advantages for the group
            (``lora_rl_plugins.bandwidth.advantages.grpo_advantages``); None: TRL's default
            group-normalised advantages of ``rewards``.
        tolerance: advantages within this of zero count as zero, and within this of each other as
            one class (float rounding); None: ZERO_TOLERANCE × max(1, the group's largest |A|).
        completions, answers: [K] each, optional: distinct completions cap the bound; with binary
            rewards the distinct parseable answers M give log2(M+1).
        answer_space_size: V, with answers: also report the uniform-prior value.

    Raises:
        ValueError: ``advantages`` is not [K]; M > V.
    """
    keep = _scored(rewards)
    if advantages is None:
        advantages = grpo_advantages([[r] for r in rewards], max(len(rewards), 1)).advantages if rewards else []
    if len(advantages) != len(rewards):
        raise ValueError(f"{len(advantages)} advantages for a group of {len(rewards)} rollouts: give one per rollout")
    if tolerance is None:
        tolerance = ZERO_TOLERANCE * max([1.0, *(abs(a) for a in advantages)])
    zero_info = all(abs(a) <= tolerance for a in advantages)
    if len(keep) < 2:
        return GroupAccount(len(rewards), len(keep), 0.0, 0.0, "too_small", zero_info)
    bound, rule, uniform_prior = _distinct(completions, keep) * rollout_bound(max(levels, 1)), "levels", None
    if answers is not None and levels <= 2:
        # A rollout without a parseable answer (None) is wrong whatever S is: it adds no pattern.
        distinct_answers = len({answers[i] for i in keep if answers[i] is not None})
        bound, rule = min(bound, group_answer_bound(distinct_answers)), "answers"
        if answer_space_size is not None:
            uniform_prior = group_uniform_prior_bits(distinct_answers, answer_space_size)
    if zero_info:  # all advantages zero: one class, no information
        estimate = 0.0
    else:
        estimate = min(group_empirical_bits(advantage_pattern([advantages[i] for i in keep], tolerance)), bound)
    return GroupAccount(len(rewards), len(keep), bound, estimate, rule, zero_info, uniform_prior)


def account_token_group(
    token_rewards: Sequence[Sequence[float]],
    *,
    alphabet_size: int,
    completions: Sequence[Any] | None = None,
) -> GroupAccount:
    """Bound and estimate for one group with per-token rewards (one reward sequence per rollout)."""
    keep = [i for i, seq in enumerate(token_rewards) if seq is not None and not any(math.isnan(r) for r in seq)]
    if len(keep) < 2:
        return GroupAccount(len(token_rewards), len(keep), 0.0, 0.0, "too_small", True)
    per_token = rollout_bound(max(alphabet_size, 1))
    if completions is None:
        bound = sum(len(token_rewards[i]) for i in keep) * per_token
    else:
        lengths = {freeze(completions[i]): len(token_rewards[i]) for i in keep}
        bound = sum(lengths.values()) * per_token
    longest = max(len(token_rewards[i]) for i in keep)
    estimate, constant = 0.0, True
    for t in range(longest):
        column = [token_rewards[i][t] for i in keep if len(token_rewards[i]) > t]
        estimate += len(column) * empirical_entropy(column)
        constant = constant and len(set(column)) <= 1
    return GroupAccount(len(token_rewards), len(keep), bound, min(estimate, bound), "tokens", constant)
