"""Validating and combining reward-function outputs, and splitting rollouts into groups."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "RewardValueError",
    "RolloutShapeError",
    "batch_combined_rewards",
    "combine_rewards",
    "partly_missing",
    "split_groups",
]


class RewardValueError(ValueError):
    """A reward function returned a value no accounting can use (±inf, a non-number)."""


class RolloutShapeError(ValueError):
    """Rewards, completions or groups do not line up."""


def _as_float(value: Any, name: str, row: int) -> float:
    if value is None:
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RewardValueError(
            f"reward function {name!r} returned {value!r} for rollout {row}, which is not a number. "
            "Return a float, or None when the completion cannot be scored."
        ) from None
    if math.isinf(number):
        raise RewardValueError(
            f"reward function {name!r} returned {number} for rollout {row}. Infinite rewards break the "
            "group-normalised advantage and every information count; clip the reward to a finite range "
            "or return None when the completion cannot be scored."
        )
    return number


def combine_rewards(
    rewards: Sequence[Sequence[Any]], names: Sequence[str], weights: Sequence[float] | None = None
) -> list[float]:
    """Combined reward per rollout, as TRL's GRPOTrainer combines it.

    r_i = Σ_f w_f · r_{i,f} over the functions f that scored rollout i (None/NaN are skipped, as
    ``nansum`` skips them); NaN where no function scored it. ``rewards`` is [rollouts][functions].
    """
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    if len(weights) != len(names):
        raise RolloutShapeError(f"{len(names)} reward functions but {len(weights)} reward weights")
    combined: list[float] = []
    for row, values in enumerate(rewards):
        if len(values) == 1 == len(names):  # one function (the common case): no loop over functions
            value = values[0]
            number = value if type(value) is float and value - value == 0.0 else _as_float(value, names[0], row)
            combined.append(0.0 + weights[0] * number if number == number else math.nan)
            continue
        if len(values) != len(names):
            raise RolloutShapeError(
                f"rollout {row} has {len(values)} reward values but there are {len(names)} reward "
                f"functions ({', '.join(names)}); every rollout needs one value (or None) per function"
            )
        total, scored = 0.0, False
        for name, weight, value in zip(names, weights, values, strict=True):
            # a finite float as it is (x - x is 0.0 only for finite x); anything else checked by _as_float
            number = value if type(value) is float and value - value == 0.0 else _as_float(value, name, row)
            if number == number:  # not NaN
                total += weight * number
                scored = True
        combined.append(total if scored else math.nan)
    return combined


def batch_combined_rewards(batch: Any) -> Sequence[float]:
    """A ``RolloutsScored`` batch's combined rewards (``combine_rewards``): the ones it carries (computed once
    where the batch was built, ``lora_rl_plugins.bridge.session``), else computed here (an event built by hand).

    Raises:
        RewardValueError, RolloutShapeError: as ``combine_rewards``.
    """
    carried = getattr(batch, "combined_rewards", None)
    if carried is not None:
        return carried
    return combine_rewards(batch.rewards, batch.reward_names, batch.reward_weights)


def split_groups(values: Sequence[Any], group_size: int) -> list[Sequence[Any]]:
    """Split rollouts into consecutive groups of ``group_size`` (the generations of one prompt)."""
    if group_size < 1:
        raise RolloutShapeError(f"group size must be >= 1, got {group_size}")
    if len(values) % group_size:
        raise RolloutShapeError(
            f"{len(values)} rollouts do not split into groups of {group_size} generations: the batch must "
            f"hold whole groups (a multiple of num_generations={group_size})"
        )
    return [values[start : start + group_size] for start in range(0, len(values), group_size)]


def partly_missing(rewards: Sequence[Sequence[Any]], names: Sequence[str]) -> dict[str, int]:
    """Per reward function: rollouts it left unscored (None/NaN) while another function scored them."""
    if len(names) < 2:  # one function: a rollout is scored or not, never partly
        return {}
    counts = dict.fromkeys(names, 0)
    for values in rewards:
        missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
        if any(missing) and not all(missing):
            for name, gap in zip(names, missing, strict=True):
                counts[name] += gap
    return {name: count for name, count in counts.items() if count}
