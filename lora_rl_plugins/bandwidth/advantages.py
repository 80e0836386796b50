"""GRPO advantages as the trainer computes them, framework-free (docs/theory.md §1).

Which groups carry zero information is decided by the advantages the trainer actually computes, not
by the rewards alone: quantisation, ``multi_objective_aggregation`` and ``scale_rewards`` all change
which rollouts the update tells apart. ``grpo_advantages`` reproduces TRL 1.16's computation
(``GRPOTrainer._generate_and_score_completions``, trl/trainer/grpo_trainer.py:2759-2810, with
``trl.trainer.utils.nanstd``) for every setting ``GRPOConfig`` offers:

* ``sum_then_normalize`` (default): r_i = Σ_f w_f·r_{i,f} over the functions that scored rollout i
  (``nansum``; NaN when none did); A_i = r_i − mean_group(r), divided by (std + ε) unless
  ``scale_rewards="none"``; std is the group's (``"group"``) or the whole batch's (``"batch"``)
  Bessel-corrected std over scored rollouts, NaN with fewer than 2;
* ``normalize_then_sum`` (GDPO): z_{i,f} = (r_{i,f} − mean_group(r_f)) / (std_group(r_f) + ε) per
  function, r_i = Σ_f w_f·z_{i,f} (``nansum``), A_i = (r_i − mean_batch(r)) / (std_batch(r) + ε);
  ``scale_rewards`` is not read;
* every NaN advantage becomes 0 (unscored rollouts, groups with fewer than 2 scored rollouts).

Arithmetic is float64 with one exactness rule: the mean of equal values is that value and their std is
0, so a group of equal rewards gets advantages exactly 0. TRL computes in float32, where equal
non-dyadic rewards (0.1, 1/3, ...) leave a std of ~5e-8 and advantages of ~1e-4 (rounding noise; see
docs/theory.md §1 for every place where the two differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..plugin.grpo import AGGREGATIONS, SCALE_REWARDS, TRL_EPSILON, ZERO_TOLERANCE, Advantages, AdvantageSettings

__all__ = [
    "AGGREGATIONS",
    "SCALE_REWARDS",
    "TRL_EPSILON",
    "ZERO_TOLERANCE",
    "AdvantageSettings",
    "Advantages",
    "advantage_pattern",
    "batch_advantages",
    "grpo_advantages",
]


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]  # v == v: not NaN
    if not finite:
        return math.nan  # torch.nanmean of all-NaN
    if all(v == finite[0] for v in finite):
        return finite[0]  # exact: the mean of equal values
    return math.fsum(finite) / len(finite)


def _nanstd(values: Sequence[float]) -> float:
    """``trl.trainer.utils.nanstd``: Bessel-corrected std over the non-NaN values; NaN with fewer than 2."""
    finite = [v for v in values if v == v]
    n = len(finite)
    if n < 2:
        return math.nan
    if all(v == finite[0] for v in finite):
        return 0.0
    mean = math.fsum(finite) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))


def _nansum(values: Sequence[float]) -> float:
    return math.fsum([v for v in values if v == v])  # torch.nansum: NaN counts as 0


def _as_number(value: Any) -> float:
    return math.nan if value is None else float(value)


def grpo_advantages(
    rewards: Sequence[Sequence[float | None]],
    group_size: int,
    weights: Sequence[float] | None = None,
    settings: AdvantageSettings | None = None,
) -> Advantages:
    """The trainer's advantages for one gathered generation batch (module docstring; docs/theory.md §1).

    Args:
        rewards: [N][F] each reward function's value per rollout, None/NaN where it gave none; rows in
            global order, groups of ``group_size`` consecutive rows.
        group_size: K, rollouts per prompt (``num_generations``).
        weights: [F] reward weights (default 1 each; zero and negative weights are allowed).
        settings: ``AdvantageSettings`` (default: TRL's defaults).

    Returns:
        ``Advantages`` (per-rollout lists of length N).

    Raises:
        ValueError: K < 1, N not a multiple of K, rows of different lengths, or F ≠ len(weights).
    """
    settings = settings or AdvantageSettings()
    if group_size < 1:
        raise ValueError(f"group size must be >= 1, got {group_size}")
    rows = [[v if type(v) is float else _as_number(v) for v in row] for row in rewards]
    n = len(rows)
    if n % group_size:
        raise ValueError(f"{n} rollouts do not split into groups of {group_size}")
    f = len(rows[0]) if rows else len(weights or ())
    if any(len(row) != f for row in rows):
        raise ValueError("every rollout needs one value (or None) per reward function")
    w = [1.0] * f if weights is None else [float(x) for x in weights]
    if len(w) != f:
        raise ValueError(f"{f} reward functions but {len(w)} reward weights")
    k = group_size
    groups = [range(start, start + k) for start in range(0, n, k)]
    unscored = [all(v != v for v in row) for row in rows]  # v != v: NaN

    def weighted(values: Sequence[float], i: int) -> float:
        return math.nan if unscored[i] else _nansum([values[j] * w[j] for j in range(f)])

    if settings.aggregation == "sum_then_normalize":
        # one function: the nansum of one value is that value (NaN: unscored)
        combined = [row[0] * w[0] for row in rows] if f == 1 else [weighted(rows[i], i) for i in range(n)]
        advantages, std = [0.0] * n, [0.0] * n
        batch_std = (_nanstd(combined) if n > 1 else 0.0) if settings.scale_rewards == "batch" else None
        for idx in groups:
            values = [combined[i] for i in idx]
            mean = _nanmean(values)
            spread = batch_std if batch_std is not None else (_nanstd(values) if k > 1 else 0.0)
            for i in idx:
                advantage = combined[i] - mean
                if settings.scale_rewards != "none":
                    advantage = advantage / (spread + settings.epsilon)
                advantages[i], std[i] = advantage, spread
    else:
        z = [[math.nan] * f for _ in range(n)]
        for idx in groups:
            for j in range(f):
                column = [rows[i][j] for i in idx]
                mean = _nanmean(column)
                spread = _nanstd(column) if k > 1 else 0.0
                for i in idx:
                    z[i][j] = (rows[i][j] - mean) / (spread + settings.epsilon)
        combined = [weighted(z[i], i) for i in range(n)]
        spread = _nanstd(combined) if n > 1 else 0.0
        mean = _nanmean(combined)
        advantages = [(combined[i] - mean) / (spread + settings.epsilon) for i in range(n)]
        std = [spread] * n
    advantages = [a if a == a else 0.0 for a in advantages]  # TRL: torch.nan_to_num(advantages, nan=0.0)
    is_std_zero = [s == s and abs(s) <= 1e-8 for s in std]  # s == s: not NaN
    return Advantages(advantages, combined, std, is_std_zero, k)


def batch_advantages(batch: Any, settings: AdvantageSettings | None = None) -> Advantages:
    """The advantages of a ``RolloutsScored`` batch: the ones it carries (computed once where the batch was
    built, ``lora_rl_plugins.bridge.session``), else computed here from its rewards with ``settings`` (an
    event built by hand, in tests)."""
    carried = getattr(batch, "advantages", None)
    if carried is not None:
        return carried
    return grpo_advantages(batch.rewards, batch.group_size, batch.reward_weights, settings)


def advantage_pattern(advantages: Sequence[float], tolerance: float = 0.0) -> list[int]:
    """Label each rollout with the class of equal advantages it falls in (values closer than
    ``tolerance`` form one class): the reward pattern the update tells apart.

    Returns [len(advantages)] class indices in order of first appearance.
    """
    order = sorted(range(len(advantages)), key=advantages.__getitem__)
    labels = [0] * len(advantages)
    cluster, previous = -1, None
    for i in order:
        if previous is None or advantages[i] - previous > tolerance:
            cluster += 1
        labels[i] = cluster
        previous = advantages[i]
    first: dict[int, int] = {}
    return [first.setdefault(label, len(first)) for label in labels]
