"""What LoRA adapter a model carries: its adapted matrices, ranks and scalings (``summarize_adapter``).

The walk over the layers is ``lora_rl_plugins.lora.layers.lora_layers``; under an engine that shards
parameters the true sizes come from ``lora_rl_plugins.lora.sharding``.
"""

from __future__ import annotations

from typing import Any

from ..plugin.events import AdaptedMatrix, AdapterSummary
from .layers import LoraLayerView, active_adapter, adapter_base_rank, lora_layers, unwrap_fsdp1
from .sharding import is_sharded, lora_numels

__all__ = [
    "LoraLayerView",
    "NotALoraModelError",
    "active_adapter",
    "adapter_base_rank",
    "lora_layers",
    "summarize_adapter",
    "unwrap_fsdp1",
]


class NotALoraModelError(TypeError):
    """Raised where a LoRA adapter is required and the model carries none."""


def summarize_adapter(model: Any, adapter_name: str | None = None, engine_model: Any = None) -> AdapterSummary:
    """Summarise the LoRA adapter ``adapter_name`` (default: the active one) of ``model``.

    Works on a PEFT ``PeftModel`` and on a transformers model with LoRA layers injected. A model
    without LoRA layers gives a summary with ``is_lora == False``. Every matrix carries its own
    effective rank (``rank_pattern``, PEFT's doubled fused ``gate_up_proj``) and scaling
    (``alpha_pattern``); a fused-expert wrapper is one ``AdaptedMatrix`` with ``experts = E`` and
    the per-expert (d_in, d_out). Shapes come from A (r · d_in numbers) and B (d_out · r numbers),
    also for conv and embedding variants. ``trainable_params`` equals the numel of the adapter's
    LoRA factors (PEFT's own count without ``modules_to_save``/trainable tokens).
    Under an engine that shards parameters (FSDP, ZeRO-3) the shapes come from its metadata
    (``lora.sharding.lora_numels``; pass the engine's wrapper as ``engine_model`` for FSDP1), never
    from the local shard.
    """
    name = adapter_name or active_adapter(model)
    base = adapter_base_rank(model, name)
    numels = lora_numels(model, engine_model, name) if is_sharded(model, engine_model) else {}
    matrices = []
    for layer in lora_layers(model, name, per_expert=False):
        if layer.kind in ("experts", "parameter"):
            d_in, d_out = int(layer.module.in_features), int(layer.module.out_features)
            kind = "experts" if layer.kind == "experts" else "linear"
        else:
            n_a, n_b = numels.get(layer.name) or (int(layer.weight_a.numel()), int(layer.weight_b.numel()))
            d_in, d_out = n_a // layer.rank, n_b // layer.rank
            kind = layer.kind
        matrices.append(
            AdaptedMatrix(layer.name, d_in, d_out, layer.rank, layer.scaling, kind, layer.experts, base_rank=base)
        )
    return AdapterSummary(tuple(matrices), name)
