"""lora-rl-plugins: what an RL fine-tuning run with LoRA is learning, and whether its adapter fits.

The rooms of the package:

* ``plugin``: hook specifications, events, the typed plugin host, metric descriptions (the ground floor);
* ``lora``: the adapter a model carries, the matrices a config would adapt, capacity in bits;
* ``bandwidth``: the information the reward stream carries, and its plugin;
* ``kl``: the exact KL to the reference, its bounds, KL-free checks, and the monitor plugin;
* ``serving``: vLLM's and Unsloth's LoRA rules, and the serving check plugin;
* ``planning``: choosing a rank before training;
* ``learning``: information absorbed on a probe set, the per-prompt ledger, informative sampling;
* ``bridge``: what the integrations share (options, built-in set, translation into events);
* ``integrations``: ``lora_rl_plugins.integrations.trl``, ``.lightning``, ``.unsloth``;
* ``report``, ``demo``, ``cli``: the faces.

The core needs only pluggy; torch is imported inside the functions that measure, and each
framework only by its integration.
"""

from __future__ import annotations

from .bandwidth.plugin import BandwidthConfig, BandwidthPlugin
from .bandwidth.rewards import RewardValueError, RolloutShapeError
from .bridge.builtin import make_plugin_manager
from .bridge.options import PluginOptions
from .kl.monitor import KLMonitorConfig, KLMonitorPlugin
from .learning.plugin import LearningConfig, LearningPlugin, SignalExhaustedWarning
from .lora.adapters import NotALoraModelError, summarize_adapter
from .planning.rank import RankChoice, RunPlan, select_rank
from .plugin.events import (
    AdaptedMatrix,
    AdapterReady,
    AdapterSummary,
    PolicySample,
    RolloutsScored,
    RunStarted,
    SetKLPenalty,
    StepEnded,
    StopTraining,
)
from .plugin.hookspecs import hookimpl, hookspec
from .plugin.host import PluginHost, PluginRegistrationError
from .plugin.metrics import MetricInfo
from .serving.vllm import (
    VLLMLoRAError,
    VLLMProblem,
    check_vllm_lora,
    smallest_legal_max_lora_rank,
    validate_vllm_lora,
    vllm_lora_memory_bytes,
)

__version__ = "0.2.0"

__all__ = [
    "AdaptedMatrix",
    "AdapterReady",
    "AdapterSummary",
    "BandwidthConfig",
    "BandwidthPlugin",
    "KLMonitorConfig",
    "KLMonitorPlugin",
    "LearningConfig",
    "LearningPlugin",
    "MetricInfo",
    "NotALoraModelError",
    "PluginHost",
    "PluginOptions",
    "PluginRegistrationError",
    "PolicySample",
    "RankChoice",
    "RewardValueError",
    "RolloutShapeError",
    "RolloutsScored",
    "RunPlan",
    "RunStarted",
    "SetKLPenalty",
    "SignalExhaustedWarning",
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
