"""Information bandwidth: what the reward stream can carry, per rollout, group, step and run.

``information`` (pure functions, bits), ``rewards`` (validating and combining reward-function
outputs), ``accounting`` (one group's bound and estimate) and ``plugin`` (the built-in plugin).
"""

from .plugin import BANDWIDTH_METRICS, BandwidthConfig, BandwidthPlugin, CapacityWarning, MissingRewardWarning

__all__ = ["BANDWIDTH_METRICS", "BandwidthConfig", "BandwidthPlugin", "CapacityWarning", "MissingRewardWarning"]
