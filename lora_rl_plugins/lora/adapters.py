"""What LoRA adapter a model carries: its adapted matrices, ranks and scalings, read from PEFT's layers.

Reads a PEFT model by its public layer attributes (``LoraLayer.r``, ``lora_A``, ``lora_B``,
``lora_embedding_A``/``_B``, ``scaling``) without importing PEFT, so the core stays framework-free.
``lora_layers`` is the one walk over a model's LoRA layers; the adapter summary and the KL
monitor's update norms both use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..plugin.events import AdaptedMatrix, AdapterSummary

__all__ = ["LoraLayerView", "NotALoraModelError", "active_adapter", "lora_layers", "summarize_adapter"]


class NotALoraModelError(TypeError):
    """Raised where a LoRA adapter is required and the model carries none."""


@dataclass(frozen=True)
class LoraLayerView:
    """One LoRA layer's matrices for one adapter: ``weight_b`` [d_out, r] and ``weight_a`` [r, d_in]
    (as stored: possibly sharded or flattened by a distributed engine), the scaling γ and the rank."""

    name: str
    """Module name without PEFT's ``base_model.model.`` prefix."""
    module: Any
    weight_a: Any
    weight_b: Any
    scaling: float
    rank: int
    kind: str
    """"linear" or "embedding"."""


def active_adapter(model: Any) -> str:
    """The name of the model's active adapter ("default" when it does not say)."""
    active = getattr(model, "active_adapter", None)
    if isinstance(active, str):
        return active
    if isinstance(active, (list, tuple)) and active:
        return str(active[0])
    return "default"


def lora_layers(model: Any, adapter_name: str | None = None) -> Iterator[LoraLayerView]:
    """Every LoRA layer of ``model`` that carries ``adapter_name`` (default: the active adapter)."""
    name = adapter_name or active_adapter(model)
    named_modules = getattr(model, "named_modules", None)
    if named_modules is None:
        return
    for module_name, layer in named_modules():
        ranks = getattr(layer, "r", None)
        if not isinstance(ranks, dict) or not hasattr(layer, "lora_A") or name not in ranks:
            continue
        if name in layer.lora_A:
            weight_a, weight_b, kind = layer.lora_A[name].weight, layer.lora_B[name].weight, "linear"
        elif name in getattr(layer, "lora_embedding_A", {}):
            # PEFT stores the embedding pair transposed: A [r, vocab] (d_in = vocab), B [dim, r].
            weight_a, weight_b, kind = layer.lora_embedding_A[name], layer.lora_embedding_B[name], "embedding"
        else:
            continue
        short = module_name.replace("_fsdp_wrapped_module.", "").removeprefix("base_model.model.")
        yield LoraLayerView(short, layer, weight_a, weight_b, float(layer.scaling[name]), int(ranks[name]), kind)


def summarize_adapter(model: Any, adapter_name: str | None = None, engine_model: Any = None) -> AdapterSummary:
    """Summarise the LoRA adapter ``adapter_name`` (default: the active one) of ``model``.

    Works on a PEFT ``PeftModel`` and on a transformers model with LoRA layers injected. A model
    without LoRA layers gives a summary with ``is_lora == False``. Shapes come from A (r · d_in
    numbers) and B (d_out · r numbers), also for conv and embedding variants; under an engine that
    shards parameters (FSDP, ZeRO-3) from its metadata (``lora.sharding.lora_numels``; pass the
    engine's wrapper as ``engine_model`` for FSDP1), never from the local shard.
    """
    from .sharding import is_sharded, lora_numels

    name = adapter_name or active_adapter(model)
    numels = lora_numels(model, engine_model, name) if is_sharded(model, engine_model) else {}
    matrices = []
    for layer in lora_layers(model, name):
        n_a, n_b = numels.get(layer.name) or (int(layer.weight_a.numel()), int(layer.weight_b.numel()))
        d_in, d_out = n_a // layer.rank, n_b // layer.rank
        matrices.append(AdaptedMatrix(layer.name, d_in, d_out, layer.rank, layer.scaling, layer.kind))
    return AdapterSummary(tuple(matrices), name)
