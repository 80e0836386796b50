"""What LoRA adapter a model carries: adapted matrices, ranks, scalings, trainable parameters.

Reads a PEFT model by its public layer attributes (``LoraLayer.r``, ``lora_A``, ``lora_B``,
``scaling``, ``use_rslora``) without importing PEFT, so the core stays framework-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .capacity import DEFAULT_BITS_PER_PARAM, adapter_capacity_bits, smallest_rank

__all__ = ["AdaptedMatrix", "AdapterSummary", "NotALoraModelError", "summarize_adapter"]


class NotALoraModelError(TypeError):
    """Raised where a LoRA adapter is required and the model carries none."""


@dataclass(frozen=True)
class AdaptedMatrix:
    """One matrix W (d_out x d_in) adapted as W + scaling · B A with B: d_out x r, A: r x d_in."""

    name: str
    d_in: int
    d_out: int
    rank: int
    scaling: float
    kind: str = "linear"  # "linear" or "embedding"

    @property
    def params(self) -> int:
        """Trainable LoRA parameters r · (d_in + d_out)."""
        return self.rank * (self.d_in + self.d_out)


@dataclass(frozen=True)
class AdapterSummary:
    """The adapter a run trains; ``is_lora`` is False for a model without LoRA layers."""

    matrices: tuple[AdaptedMatrix, ...] = ()
    adapter_name: str = "default"
    use_rslora: bool = False
    use_dora: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_lora(self) -> bool:
        return bool(self.matrices)

    @property
    def trainable_params(self) -> int:
        """Σ_m r_m · (d_in,m + d_out,m) (exact)."""
        return sum(m.params for m in self.matrices)

    @property
    def params_per_rank(self) -> int:
        """Σ_m (d_in,m + d_out,m): parameters added per unit of rank when every rank moves together."""
        return sum(m.d_in + m.d_out for m in self.matrices)

    @property
    def max_rank(self) -> int:
        return max((m.rank for m in self.matrices), default=0)

    def capacity_bits(self, bits_per_param: float = DEFAULT_BITS_PER_PARAM) -> float:
        """bits_per_param · trainable LoRA parameters (THEORY.md §2)."""
        return adapter_capacity_bits(self.trainable_params, bits_per_param)

    def rank_for(self, bits: float, bits_per_param: float = DEFAULT_BITS_PER_PARAM) -> int:
        """Smallest uniform rank whose capacity over these matrices holds ``bits``."""
        return smallest_rank(bits, self.params_per_rank, bits_per_param)


def _lora_layers(model: Any) -> Iterable[tuple[str, Any]]:
    named_modules = getattr(model, "named_modules", None)
    if named_modules is None:
        return []
    return (
        (name, module)
        for name, module in named_modules()
        if isinstance(getattr(module, "r", None), dict) and hasattr(module, "lora_A")
    )


def _active_adapter(model: Any) -> str:
    active = getattr(model, "active_adapter", None)
    if isinstance(active, str):
        return active
    if isinstance(active, (list, tuple)) and active:
        return str(active[0])
    return "default"


def summarize_adapter(model: Any, adapter_name: str | None = None) -> AdapterSummary:
    """Summarise the LoRA adapter ``adapter_name`` (default: the active one) of ``model``.

    Works on a PEFT ``PeftModel`` and on a transformers model with LoRA layers injected. A model
    without LoRA layers gives a summary with ``is_lora == False``.
    """
    name = adapter_name or _active_adapter(model)
    matrices: list[AdaptedMatrix] = []
    rslora = dora = False
    for module_name, layer in _lora_layers(model):
        if name not in layer.r:
            continue
        rank = int(layer.r[name])
        if name in layer.lora_A:
            weight_a, weight_b, kind = layer.lora_A[name].weight, layer.lora_B[name].weight, "linear"
        elif name in getattr(layer, "lora_embedding_A", {}):
            weight_a, weight_b = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
            kind = "embedding"
        else:
            continue
        # A holds r·d_in numbers and B d_out·r (also for conv and embedding variants).
        d_in, d_out = int(weight_a.numel()) // rank, int(weight_b.numel()) // rank
        matrices.append(AdaptedMatrix(module_name, d_in, d_out, rank, float(layer.scaling[name]), kind))
        rslora = rslora or bool(getattr(layer, "use_rslora", {}).get(name, False))
        dora = dora or bool(getattr(layer, "use_dora", {}).get(name, False))
    return AdapterSummary(tuple(matrices), name, rslora, dora)
