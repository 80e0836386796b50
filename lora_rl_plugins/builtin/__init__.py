"""The built-in plugins, registered by ``make_plugin_manager`` under these names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .bandwidth import BandwidthConfig, BandwidthPlugin
from .kl_monitor import KLMonitorConfig, KLMonitorPlugin
from .vllm_serving import VLLMServing, VLLMServingCheck

__all__ = [
    "BUILTIN_NAMES",
    "BandwidthConfig",
    "BandwidthPlugin",
    "KLMonitorConfig",
    "KLMonitorPlugin",
    "VLLMServing",
    "VLLMServingCheck",
    "default_builtins",
]

BUILTIN_NAMES = ("bandwidth", "kl_monitor", "vllm_serving")


def default_builtins(
    bandwidth: BandwidthConfig | None = None,
    vllm_serving: VLLMServing | Mapping[str, Any] | None = None,
    kl_monitor: KLMonitorConfig | None = None,
    *,
    kl_required: bool = False,
) -> dict[str, object]:
    """Fresh built-in plugin instances for one run.

    ``kl_required``: the user asked for the KL monitor (a budget, KL-free mode), so a model without
    LoRA is an error rather than a warning.
    """
    return {
        "bandwidth": BandwidthPlugin(bandwidth),
        "kl_monitor": KLMonitorPlugin(kl_monitor, required=kl_required),
        "vllm_serving": VLLMServingCheck(vllm_serving),
    }
