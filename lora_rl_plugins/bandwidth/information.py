"""Information carried by reward signals: pure functions, in bits.

Setting (docs/theory.md §1; references [Hernandez], [Li] listed there): on-policy
rollouts tau are independent of the unknown task variable S given the weights, and the update
g is a function of (tau, r). Every function here returns bits (log base 2).

Which numbers are bounds and which are exact is stated per function; see also
``lora_rl_plugins.metrics`` for how each reported metric is labelled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable

__all__ = [
    "binary_entropy",
    "empirical_entropy",
    "group_answer_bound",
    "group_empirical_bits",
    "group_uniform_prior_bits",
    "quantise",
    "rollout_bound",
    "token_level_bound",
]


def binary_entropy(p: float) -> float:
    """Binary entropy h(p) = -p log2 p - (1-p) log2 (1-p), with h(0) = h(1) = 0.

    One rollout of the symbol-emitting bandit with S uniform over V symbols carries exactly
    I = h(1/V) bits ([Hernandez], Figure 5).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"binary_entropy needs 0 <= p <= 1, got {p!r}")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def empirical_entropy(values: Iterable[Hashable]) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``values``; 0 for an empty input."""
    counts = Counter(values)
    n = sum(counts.values())
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def rollout_bound(levels: int) -> float:
    """Upper bound log2 L on the bits one rollout's reward carries when it takes L levels.

    I(g; S) <= H(r | tau) <= log2 L; for a binary reward, 1 bit; for a continuous reward after
    b-bit quantisation, b bits ([Li] §3.1; [Hernandez], "One-bit bound").
    """
    if levels < 1:
        raise ValueError(f"a reward has at least one level, got levels={levels!r}")
    return math.log2(levels)


def group_answer_bound(distinct_answers: int) -> float:
    """Upper bound log2(M+1) on the bits a group of binary-reward rollouts carries.

    M is the number of distinct final answers among the group's rollouts and exactly one answer
    is correct: the reward pattern can take at most M+1 values ([Hernandez], "Group bound"), so
    I(g; S) <= log2(M+1) <= log2(K+1).
    """
    if distinct_answers < 0:
        raise ValueError(f"distinct_answers must be >= 0, got {distinct_answers!r}")
    return math.log2(distinct_answers + 1)


def group_uniform_prior_bits(distinct_answers: int, answer_space_size: int) -> float:
    """Exact information of a binary-reward group when S is uniform over V answers.

    I = log2 V - ((V - M)/V) log2(V - M)  ([Hernandez], "Exact MI under a uniform prior", Figure 6),
    where M is the number of distinct final answers in the group. Always <= log2(M+1).
    """
    m, v = distinct_answers, answer_space_size
    if v < 1:
        raise ValueError(f"answer_space_size must be >= 1, got {v!r}")
    if not 0 <= m <= v:
        raise ValueError(
            f"a group cannot hold more distinct answers ({m}) than the answer space has ({v}); "
            "check answer_space_size or the answer_extractor"
        )
    rest = v - m
    return math.log2(v) - (rest / v) * math.log2(rest) if rest > 0 else math.log2(v)


def token_level_bound(alphabet_sizes: Iterable[int]) -> float:
    """Upper bound sum_t log2 A_t on the bits token-level rewards R_1..R_T carry.

    A_t is the number of values R_t can take ([Hernandez], "Token-level capacity"); tight at T bits
    for fair binary per-token rewards (its Figure 7).
    """
    total = 0.0
    for size in alphabet_sizes:
        total += rollout_bound(size)
    return total


def group_empirical_bits(rewards: Iterable[Hashable]) -> float:
    """Observable estimate of a group's bits: K * H(empirical distribution of its rewards).

    For binary rewards this is K * h(p_hat) with p_hat the group's success rate: 0 for a constant
    group (GRPO's group-normalised advantage is then zero), K bits at p_hat = 1/2. A design choice,
    not a theorem (docs/theory.md §1); callers cap it by the structural bounds.
    """
    values = list(rewards)
    return len(values) * empirical_entropy(values)


def quantise(value: float, levels: int, low: float, high: float) -> int:
    """Map ``value`` to one of ``levels`` evenly spaced levels over [low, high] (clipped).

    The b-bit quantisation Q(r) of [Hernandez] ("continuous rewards"): level
    round((value - low) / (high - low) * (levels - 1)), clipped to [0, levels - 1].
    """
    if levels < 2:
        raise ValueError(f"quantisation needs at least 2 levels, got {levels!r}")
    if not high > low:
        raise ValueError(f"reward_range must satisfy low < high, got ({low!r}, {high!r})")
    position = (value - low) / (high - low) * (levels - 1)
    return min(levels - 1, max(0, round(position)))
