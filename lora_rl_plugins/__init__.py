"""lora-rl-plugins: what an RL fine-tuning run with LoRA is learning, and whether its adapter fits.

The core (this package minus ``integrations``) needs only pluggy; torch is imported lazily by
the KL measurement, and each framework only by its integration:
``lora_rl_plugins.integrations.trl``, ``.lightning``, ``.unsloth``.
"""

from __future__ import annotations

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
from .options import PluginOptions
from .plugins import PluginHost, make_plugin_manager
from .rank_selection import RankChoice, RunPlan, select_rank
from .rewards import RewardValueError, RolloutShapeError
from .vllm_rules import (
    VLLMLoRAError,
    VLLMProblem,
    check_vllm_lora,
    smallest_legal_max_lora_rank,
    validate_vllm_lora,
    vllm_lora_memory_bytes,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterReady",
    "AdapterSummary",
    "BandwidthConfig",
    "BandwidthPlugin",
    "MetricInfo",
    "NotALoraModelError",
    "PluginHost",
    "PluginOptions",
    "PolicySample",
    "RankChoice",
    "RewardValueError",
    "RolloutShapeError",
    "RolloutsScored",
    "RunPlan",
    "RunStarted",
    "SetKLPenalty",
    "StepEnded",
    "StopTraining",
    "VLLMLoRAError",
    "VLLMProblem",
    "__version__",
    "check_vllm_lora",
    "hookimpl",
    "hookspec",
    "make_plugin_manager",
    "select_rank",
    "smallest_legal_max_lora_rank",
    "summarize_adapter",
    "validate_vllm_lora",
    "vllm_lora_memory_bytes",
]
