"""Bits one group of rollouts delivers: a structural bound and an observable estimate.

For a group of K rollouts of one prompt with rewards r_1..r_K (NaN = missing, excluded):

* bound  = D · log2 L, with D distinct completions (K when completions are unknown) and L reward
  levels ([Li] §3.1, [Hernandez] "One-bit bound", summed over the distinct rollouts);
  tightened to log2(M+1) for binary rewards when final answers are known, M the number of
  distinct answers ([Hernandez], "Group bound"); and to the exact uniform-prior value
  log2 V − ((V−M)/V) log2(V−M) when the answer space size V is known ([Hernandez], Figure 6).
* estimate = min(K · H(empirical distribution of the group's rewards), bound): 0 for a constant
  group, K bits for a binary group at success rate 1/2 (docs/theory.md §1; a design choice).

Token-level rewards R_1..R_T (alphabet A each): bound Σ over distinct rollouts of T_i · log2 A
([Hernandez], "Token-level capacity"); estimate Σ_t K_t · H(rewards at position t), capped.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

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
    """The information one group delivered."""

    size: int
    """K: rollouts in the group."""
    scored: int
    """Rollouts with a reward (not NaN)."""
    bound: float
    """Upper bound on the bits (exact under a uniform prior when rule == "uniform_prior")."""
    estimate: float
    """Observable estimate, <= bound."""
    rule: str
    """Which bound applied: "levels", "answers", "uniform_prior", "tokens" or "too_small"."""
    constant: bool
    """True when the group's rewards are all equal (or fewer than 2 were scored): zero information."""

    @property
    def missing(self) -> int:
        """Rollouts of the group without a reward (size − scored)."""
        return self.size - self.scored


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a completion (text, token ids, or chat messages)."""
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
    return len({freeze(items[i]) for i in keep})


def account_group(
    rewards: Sequence[float],
    *,
    levels: int,
    completions: Sequence[Any] | None = None,
    answers: Sequence[Hashable | None] | None = None,
    answer_space_size: int | None = None,
) -> GroupAccount:
    """Bound and estimate for one group; ``rewards`` are already combined (and quantised)."""
    keep = _scored(rewards)
    if len(keep) < 2:
        return GroupAccount(len(rewards), len(keep), 0.0, 0.0, "too_small", True)
    values = [rewards[i] for i in keep]
    bound, rule = _distinct(completions, keep) * rollout_bound(max(levels, 1)), "levels"
    if answers is not None and levels <= 2:
        # A rollout without a parseable answer (None) is wrong whatever S is: it adds no pattern.
        distinct_answers = len({answers[i] for i in keep if answers[i] is not None})
        if answer_space_size is not None:
            answer_bound, rule = (
                group_uniform_prior_bits(distinct_answers, answer_space_size),
                "uniform_prior",
            )
        else:
            answer_bound, rule = group_answer_bound(distinct_answers), "answers"
        bound = min(bound, answer_bound)
    estimate = min(group_empirical_bits(values), bound)
    return GroupAccount(len(rewards), len(keep), bound, estimate, rule, len(set(values)) == 1)


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
