"""Information bandwidth: what the reward stream can carry, per rollout, group, step and run.

``information`` (pure functions, bits), ``rewards`` (validating and combining reward-function
outputs), ``advantages`` (the trainer's GRPO advantages, framework-free), ``accounting`` (one group's
bound, estimate and zero-information flag) and ``plugin`` (the built-in plugin).
"""

from .advantages import AdvantageSettings, grpo_advantages
from .plugin import (
    BANDWIDTH_METRICS,
    BandwidthConfig,
    BandwidthPlugin,
    CapacityWarning,
    ContinuousRewardWarning,
    MissingRewardWarning,
)

__all__ = [
    "BANDWIDTH_METRICS",
    "AdvantageSettings",
    "BandwidthConfig",
    "BandwidthPlugin",
    "CapacityWarning",
    "ContinuousRewardWarning",
    "MissingRewardWarning",
    "grpo_advantages",
]
