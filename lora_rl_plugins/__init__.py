"""lora-rl-plugins: what an RL fine-tuning run with LoRA is learning, and whether its adapter fits.

The core (this package minus ``integrations``) needs only pluggy; torch is imported lazily by
the KL measurement, and each framework only by its integration:
``lora_rl_plugins.integrations.trl``, ``.lightning``, ``.unsloth``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .adapters import AdapterSummary, NotALoraModelError, summarize_adapter
from .builtin import BandwidthConfig, BandwidthPlugin
from .events import (
    AdapterReady,
    PolicySample,
    RolloutsScored,
    RunStarted,
    SetKLPenalty,
    StepEnded,
    StopTraining,
)
from .hookspecs import hookimpl, hookspec
from .metrics import MetricInfo
from .plugins import PluginHost, make_plugin_manager
from .rewards import RewardValueError, RolloutShapeError

__version__ = "0.1.0"

__all__ = [
    "AdapterReady",
    "AdapterSummary",
    "BandwidthConfig",
    "BandwidthPlugin",
    "MetricInfo",
    "NotALoraModelError",
    "PluginHost",
    "PolicySample",
    "RewardValueError",
    "RolloutShapeError",
    "RolloutsScored",
    "RunStarted",
    "SetKLPenalty",
    "StepEnded",
    "StopTraining",
    "__version__",
    "hookimpl",
    "hookspec",
    "make_plugin_manager",
    "summarize_adapter",
]

_LAZY: dict[str, str] = {}

if TYPE_CHECKING:  # pragma: no cover
    pass


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
