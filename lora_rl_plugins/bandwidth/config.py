"""The bandwidth plugin's options (``BandwidthConfig``), metrics (``BANDWIDTH_METRICS``: what each reported
number is, and whether it is exact, a bound or an estimate) and warnings."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..lora.capacity import DEFAULT_BITS_PER_PARAM
from ..plugin.config import option
from ..plugin.metrics import MetricInfo, metric_family

__all__ = [
    "BANDWIDTH_METRICS",
    "BandwidthConfig",
    "CapacityWarning",
    "ContinuousRewardWarning",
    "MissingRewardWarning",
    "RewardLevelsWarning",
]


class CapacityWarning(UserWarning):
    """The run's signal estimate approaches or exceeds the adapter's capacity."""


class RewardLevelsWarning(UserWarning):
    """The reward levels declared or inferred look wrong for the rewards seen."""


class MissingRewardWarning(UserWarning):
    """Some rollouts or whole groups have no reward."""


class ContinuousRewardWarning(UserWarning):
    """The reward looks continuous and no levels are declared: every group's estimate is K·log2 K
    whatever the rewards, and the bound grows with every new value (declare reward_levels and
    reward_range)."""


_m = metric_family("bandwidth")


BANDWIDTH_METRICS: tuple[MetricInfo, ...] = (
    _m(
        "bits_step",
        "estimate",
        "bits",
        "signal rate: Σ over this step's groups with non-zero advantages of min(n·H(pattern of the trainer's "
        "advantages), group bound), what the rewards could distinguish this step; not information the policy "
        "absorbed (that is learning/absorbed_bits); with a continuous reward and no declared levels every rollout "
        "is its own class, so each group scores K·log2 K whatever the rewards (ContinuousRewardWarning)",
        "mean",
    ),
    _m(
        "bound_step",
        "bound",
        "bits",
        "Σ over this step's groups of the group bound: D·log2 L, or log2(M+1) for binary rewards with answers",
        "mean",
    ),
    _m(
        "bits_total",
        "estimate",
        "bits",
        "signal summed over the run: a lesson repeated at every step is counted at every step, so it can exceed "
        "what there was to learn; not task information",
        short="signal",
    ),
    _m(
        "bound_total",
        "bound",
        "bits",
        "bound_step summed over the run (a bound: later episodes may repeat earlier information)",
    ),
    _m("bits_per_rollout", "estimate", "bits", "bits_step / rollouts scored this step", "mean"),
    _m(
        "uniform_prior_step",
        "estimate",
        "bits",
        "with answer_space_size: Σ over this step's groups of log2 V − ((V−M)/V)·log2(V−M), each group's "
        "information if the policy's prior over the V answers were uniform; exact only under that prior, not a "
        "bound (after learning the true information can exceed it)",
        "mean",
    ),
    _m("uniform_prior_total", "estimate", "bits", "uniform_prior_step summed over the run"),
    _m(
        "zero_info_frac",
        "exact",
        "fraction",
        "groups whose advantages, computed with the trainer's settings from its rewards, are all zero (this "
        "includes groups with < 2 scored rollouts) / groups this step; differs from TRL's frac_reward_zero_std "
        "where docs/theory.md §1 says",
        "mean",
    ),
    _m(
        "missing_rewards",
        "exact",
        "rollouts",
        "rollouts with no reward (every function returned None/NaN), excluded, over the run",
    ),
    _m("small_groups", "exact", "groups", "groups with fewer than 2 scored rollouts (0 bits), over the run"),
    _m(
        "reward_levels",
        "setting",
        "levels",
        "L used in the bounds: declared, or inferred as the distinct reward values seen so far",
    ),
    _m(
        "reward_levels_inferred",
        "setting",
        "flag",
        "1 when reward_levels was inferred from the rewards, 0 when declared",
    ),
    _m(
        "capacity_bits",
        "bound",
        "bits",
        "bits_per_param × trainable LoRA parameters Σ_m E_m·r_m·(d_in,m+d_out,m) (each matrix at its own rank r_m, "
        "E_m experts)",
    ),
    _m("capacity_used", "estimate", "fraction", "bits_total / capacity_bits", short="capacity"),
    _m("projected_bits", "estimate", "bits", "bits_total / steps done × planned steps"),
    _m(
        "rank_sufficient",
        "estimate",
        "rank",
        "smallest adapter rank r with bits_per_param·r·params_per_rank >= projected_bits (every matrix keeping "
        "its rank ratio r_m/r)",
    ),
    _m("adapter_rank", "setting", "rank", "the largest LoRA rank among the adapted matrices"),
    _m(
        "params_per_rank",
        "exact",
        "parameters",
        "Σ_m E_m·(d_in,m+d_out,m)·r_m/r over the adapted matrices (r the adapter's configured rank, r_m each "
        "matrix's own, E_m its experts) = trainable LoRA parameters / r",
    ),
)


@dataclass
class BandwidthConfig:
    """Options of the bandwidth plugin (all optional); each field's ``doc`` is its documentation."""

    reward_levels: int | None = option(
        doc="L, the number of values the combined reward takes (with multi_objective_aggregation="
        '"normalize_then_sum": the vector of reward-function values). Unset: inferred as the distinct values seen so '
        "far (the metrics say so); without quantisation every distinct float of a continuous reward counts as a "
        "level, which makes the bound loose and the estimate K·log2 K per group"
    )
    reward_range: tuple[float, float] | None = option(
        doc="(low, high): quantise the combined reward to `reward_levels` evenly spaced levels over the range "
        "before counting levels for the bound (b-bit quantisation); zero-information groups and the estimate still "
        "follow the trainer's advantages of the raw rewards"
    )
    answer_extractor: Callable[[Any], Hashable | None] | None = option(
        doc="completion -> final answer (or None); with binary rewards the group bound tightens to log2(M+1), "
        "M the distinct answers in the group"
    )
    answer_space_size: int | None = option(
        doc="V, with `answer_extractor`: also report the uniform-prior group value log2 V − ((V−M)/V)·log2(V−M) "
        "(bandwidth/uniform_prior_*; exact only under a uniform prior, not a bound)"
    )
    token_reward_levels: int | None = option(doc="A, for per-token rewards: the alphabet size in Σ_t log2 A")
    bits_per_param: float = option(
        DEFAULT_BITS_PER_PARAM,
        doc="capacity convention: 32 (FP32 storage, the seed rule 64·r·d) or 2 (knowledge capacity)",
    )

    def __post_init__(self) -> None:
        if self.reward_levels is not None and self.reward_levels < 1:
            raise ValueError(f"reward_levels must be >= 1, got {self.reward_levels}")
        if self.reward_range is not None:
            if self.reward_levels is None or self.reward_levels < 2:
                raise ValueError("reward_range quantises the reward: also set reward_levels >= 2")
            low, high = self.reward_range
            if not high > low:
                raise ValueError(f"reward_range must be (low, high) with low < high, got {self.reward_range}")
        if self.answer_space_size is not None and self.answer_space_size < 1:
            raise ValueError(f"answer_space_size must be >= 1, got {self.answer_space_size}")
        if self.bits_per_param <= 0:
            raise ValueError(f"bits_per_param must be positive, got {self.bits_per_param}")
