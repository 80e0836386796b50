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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AGGREGATIONS",
    "SCALE_REWARDS",
    "TRL_EPSILON",
    "ZERO_TOLERANCE",
    "AdvantageSettings",
    "Advantages",
    "advantage_pattern",
    "grpo_advantages",
]

#: Values of ``scale_rewards`` (``True`` means "group", ``False`` "none", as GRPOConfig maps them).
SCALE_REWARDS = ("group", "batch", "none")
#: Values of ``multi_objective_aggregation``.
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
#: ε added to the std before dividing (TRL 1.16 grpo_trainer.py:2787, 2794, 2799).
TRL_EPSILON = 1e-4
#: An advantage is zero when |A| <= ZERO_TOLERANCE × max(1, the batch's largest |A|): float64 rounding.
ZERO_TOLERANCE = 1e-9


@dataclass(frozen=True)
class AdvantageSettings:
    """How the trainer turns rewards into advantages; the defaults are TRL's.

    Attributes:
        scale_rewards: "group" (divide by the group's std + ε), "batch" (by the batch's std + ε) or
            "none"; ``True``/``False`` are accepted and mean "group"/"none" (GRPOConfig's mapping).
        aggregation: "sum_then_normalize" or "normalize_then_sum" (GRPOConfig's
            ``multi_objective_aggregation``).
        epsilon: ε added to the std before dividing (TRL: 1e-4).

    Raises:
        ValueError: an unknown ``scale_rewards`` or ``aggregation``, or ε < 0 (the message lists the
            accepted values).
    """

    scale_rewards: str = "group"
    aggregation: str = "sum_then_normalize"
    epsilon: float = TRL_EPSILON

    def __post_init__(self) -> None:
        scale = self.scale_rewards
        if scale is True or scale is False:
            object.__setattr__(self, "scale_rewards", "group" if scale else "none")
        elif scale not in SCALE_REWARDS:
            raise ValueError(
                f"scale_rewards={scale!r} is not one GRPO knows: use one of {', '.join(SCALE_REWARDS)} "
                "(or True = 'group', False = 'none')"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"multi_objective_aggregation={self.aggregation!r} is not one GRPO knows: use one of "
                f"{', '.join(AGGREGATIONS)}"
            )
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon >= 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"advantage_epsilon must be a finite number >= 0, got {self.epsilon!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AdvantageSettings:
        """Settings from ``RunStarted.options``: keys ``scale_rewards``, ``multi_objective_aggregation``
        and ``advantage_epsilon``; a missing key or None keeps TRL's default.

        Raises:
            ValueError: a value GRPO does not know (see the class).
        """
        values: dict[str, Any] = {}
        for key, field_name in (
            ("scale_rewards", "scale_rewards"),
            ("multi_objective_aggregation", "aggregation"),
            ("advantage_epsilon", "epsilon"),
        ):
            if options.get(key) is not None:
                values[field_name] = options[key]
        return cls(**values)


@dataclass(frozen=True)
class Advantages:
    """The advantages of one generation batch (N rollouts, groups of K consecutive rollouts).

    Attributes:
        advantages: [N] the advantage of each rollout (0 where TRL's would be NaN).
        rewards: [N] the value that is normalised: the weighted ``nansum`` (sum_then_normalize) or the
            weighted sum of per-function z-scores (normalize_then_sum); NaN for an unscored rollout.
        std: [N] the std each advantage is divided by (or, with "none", the group std TRL logs with);
            NaN where fewer than 2 rollouts were scored.
        is_std_zero: [N] TRL's ``torch.isclose(std, 0)`` (|std| <= 1e-8; NaN is never close): the rows
            behind TRL's ``frac_reward_zero_std``.
        group_size: K.
    """

    advantages: list[float]
    rewards: list[float]
    std: list[float]
    is_std_zero: list[bool]
    group_size: int

    @property
    def frac_reward_zero_std(self) -> float:
        """What TRL logs as ``frac_reward_zero_std``: the mean of ``is_std_zero`` over rows (NaN if none)."""
        n = len(self.is_std_zero)
        return sum(self.is_std_zero) / n if n else math.nan

    @property
    def tolerance(self) -> float:
        """The absolute tolerance under which an advantage counts as zero (see ZERO_TOLERANCE)."""
        return ZERO_TOLERANCE * max([1.0, *(abs(a) for a in self.advantages)])

    def group(self, g: int) -> list[float]:
        """The advantages of group g (rollouts [g·K, (g+1)·K))."""
        k = self.group_size
        return self.advantages[g * k : (g + 1) * k]

    def zero_groups(self) -> list[bool]:
        """Per group: True when every advantage of the group is zero (within ``tolerance``), i.e. the
        group contributes nothing to the policy-gradient term."""
        tol = self.tolerance
        groups = len(self.advantages) // self.group_size if self.group_size else 0
        return [all(abs(a) <= tol for a in self.group(g)) for g in range(groups)]


def _nan(x: float) -> bool:
    return x != x


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not _nan(v)]
    if not finite:
        return math.nan  # torch.nanmean of all-NaN
    if all(v == finite[0] for v in finite):
        return finite[0]  # exact: the mean of equal values
    return math.fsum(finite) / len(finite)


def _nanstd(values: Sequence[float]) -> float:
    """``trl.trainer.utils.nanstd``: Bessel-corrected std over the non-NaN values; NaN with fewer than 2."""
    finite = [v for v in values if not _nan(v)]
    n = len(finite)
    if n < 2:
        return math.nan
    if all(v == finite[0] for v in finite):
        return 0.0
    mean = math.fsum(finite) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))


def _nansum(values: Sequence[float]) -> float:
    return math.fsum(v for v in values if not _nan(v))  # torch.nansum: NaN counts as 0


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
    rows = [[_as_number(v) for v in row] for row in rewards]
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
    unscored = [all(_nan(v) for v in row) for row in rows]

    def weighted(values: Sequence[float], i: int) -> float:
        return math.nan if unscored[i] else _nansum([values[j] * w[j] for j in range(f)])

    if settings.aggregation == "sum_then_normalize":
        combined = [weighted(rows[i], i) for i in range(n)]
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
    advantages = [0.0 if _nan(a) else a for a in advantages]  # TRL: torch.nan_to_num(advantages, nan=0.0)
    is_std_zero = [not _nan(s) and abs(s) <= 1e-8 for s in std]
    return Advantages(advantages, combined, std, is_std_zero, k)


def advantage_pattern(advantages: Sequence[float], tolerance: float = 0.0) -> list[int]:
    """Label each rollout with the class of equal advantages it falls in (values closer than
    ``tolerance`` form one class): the reward pattern the update tells apart.

    Returns [len(advantages)] class indices in order of first appearance.
    """
    order = sorted(range(len(advantages)), key=lambda i: advantages[i])
    labels = [0] * len(advantages)
    cluster, previous = -1, None
    for i in order:
        if previous is None or advantages[i] - previous > tolerance:
            cluster += 1
        labels[i] = cluster
        previous = advantages[i]
    first: dict[int, int] = {}
    return [first.setdefault(label, len(first)) for label in labels]
