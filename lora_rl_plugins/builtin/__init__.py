"""The built-in plugins, registered by ``make_plugin_manager`` under these names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .bandwidth import BandwidthConfig, BandwidthPlugin
from .vllm_serving import VLLMServing, VLLMServingCheck

__all__ = [
    "BUILTIN_NAMES",
    "BandwidthConfig",
    "BandwidthPlugin",
    "VLLMServing",
    "VLLMServingCheck",
    "default_builtins",
]

BUILTIN_NAMES = ("bandwidth", "kl_monitor", "vllm_serving")


def default_builtins(
    bandwidth: BandwidthConfig | None = None,
    vllm_serving: VLLMServing | Mapping[str, Any] | None = None,
) -> dict[str, object]:
    """Fresh built-in plugin instances for one run."""
    return {"bandwidth": BandwidthPlugin(bandwidth), "vllm_serving": VLLMServingCheck(vllm_serving)}
