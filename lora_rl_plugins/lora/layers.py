"""The one walk over a model's LoRA layers (PEFT's ``LoraLayer`` and ``ParamWrapper``), without PEFT.

Reads a PEFT model by its public layer attributes (``LoraLayer.r``, ``lora_A``, ``lora_B``,
``lora_embedding_A``/``_B``, ``scaling``; for ``lora.ParamWrapper``, PEFT's wrapper of a
``target_parameters`` entry, also ``parameter_name``, ``num_experts``, ``in_features``,
``out_features``), so the core stays framework-free. The adapter summary (``adapters``), the
engine helpers (``sharding``) and the KL monitor's update norms all walk through ``lora_layers``.

Fused experts (docs/theory.md §2): PEFT 0.21's ``ParamWrapper`` on a 3-D expert parameter
[E, ·, ·] gives every expert e its own rank-r pair, stacked as A [r·E, d_in] and B [d_out, r·E];
expert e uses the rows ``A[e*r:(e+1)*r]`` and the columns ``B[:, e::E]``, and
ΔW_e = scaling · B_e A_e (``peft/tuners/lora/layer.py`` ``ParamWrapper.get_delta_weight``,
which reshapes A to (E, r, in) and B to (out, r, E)).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "LoraLayerView",
    "active_adapter",
    "adapter_base_rank",
    "lora_layers",
    "per_adapter_set",
    "unwrap_fsdp1",
]

T = TypeVar("T")

#: Per model: per finder, (the adapter set it was found for, what it found).
_FOUND: weakref.WeakKeyDictionary[Any, dict[Callable[[Any], Any], tuple[Any, Any]]] = weakref.WeakKeyDictionary()


def per_adapter_set(model: Any, find: Callable[[Any], T]) -> T:
    """``find(model)``, remembered per model and found again when its adapter set changes (``peft_config``'s
    adapter names or the active adapter): a walk over the model's modules done once, not at every measurement.
    The model's modules are taken as fixed while its adapter set is (training adds none)."""
    key = (tuple(getattr(model, "peft_config", {}) or {}), repr(getattr(model, "active_adapter", None)))
    cache = _FOUND.get(model)
    if cache is None:
        cache = _FOUND[model] = {}
    found = cache.get(find)
    if found is None or found[0] != key:
        found = cache[find] = (key, find(model))
    return found[1]


@dataclass(frozen=True)
class LoraLayerView:
    """One adapted matrix for one adapter: ``weight_b`` [d_out, r] and ``weight_a`` [r, d_in]
    (as stored: possibly sharded or flattened by a distributed engine), the scaling γ and the
    matrix's own effective rank r. For one expert of a fused-expert wrapper the two are views of
    that expert's rows of A and columns of B."""

    name: str
    """Module name without PEFT's ``base_model.model.`` prefix and its ``.base_layer`` nesting; a
    ``target_parameters`` wrapper adds ``.{parameter}`` and, per expert, ``[e]``."""
    module: Any
    weight_a: Any
    weight_b: Any
    scaling: float
    rank: int
    kind: str
    """"linear", "embedding", "parameter" (a 2-D ``target_parameters`` weight) or "expert"."""
    expert: int | None = None
    """The expert index e for kind "expert"."""
    experts: int = 1
    """E, the experts of the wrapper this view belongs to (1 otherwise)."""
    owner_a: tuple[Any, str] | None = None
    """(module, attribute) holding A's parameter: where a distributed engine's metadata finds it."""
    owner_b: tuple[Any, str] | None = None
    """(module, attribute) holding B's parameter."""


def _is_fsdp1(module: Any) -> bool:
    """An FSDP1 ``FullyShardedDataParallel`` wrapper: its wrapped module is a child named ``_fsdp_wrapped_module``
    (looked up in ``_modules``, so a plain module costs no AttributeError) and it has a flat-parameter ``_handle``."""
    children = getattr(module, "_modules", None) if module is not None else None
    if children is not None:
        return "_fsdp_wrapped_module" in children and hasattr(module, "_handle")
    return module is not None and hasattr(module, "_fsdp_wrapped_module") and hasattr(module, "_handle")


def unwrap_fsdp1(module: Any) -> Any:
    """The module inside any FSDP1 ``FullyShardedDataParallel`` wrappers around ``module``."""
    while _is_fsdp1(module):
        module = module._fsdp_wrapped_module
    return module


def active_adapter(model: Any) -> str:
    """The name of the model's active adapter ("default" when it does not say)."""
    active = getattr(model, "active_adapter", None)
    if isinstance(active, str):
        return active
    if isinstance(active, (list, tuple)) and active:
        return str(active[0])
    return "default"


def adapter_base_rank(model: Any, adapter_name: str | None = None) -> int | None:
    """The adapter's configured rank ``r`` (``peft_config[adapter].r``), None where the model has no PEFT config.

    Matrices may train at other ranks (``rank_pattern``, PEFT's doubled fused ``gate_up_proj``).
    """
    name = adapter_name or active_adapter(model)
    configs = getattr(model, "peft_config", None)
    config = configs.get(name) if isinstance(configs, dict) else None
    rank = getattr(config, "r", None)
    return int(rank) if isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 else None


def _clean_name(module_name: str) -> str:
    """The module name without FSDP1's wrapper parts, PEFT's prefix and nested ``base_layer`` parts."""
    name = module_name.replace("_fsdp_wrapped_module.", "").removeprefix("base_model.model.")
    return re.sub(r"(\.base_layer)+(?=\.|$)", "", name)


def _is_param_wrapper(layer: Any) -> bool:
    return hasattr(layer, "parameter_name") and hasattr(layer, "num_experts")


def lora_layers(model: Any, adapter_name: str | None = None, *, per_expert: bool = True) -> Iterator[LoraLayerView]:
    """Every adapted matrix of ``model`` that carries ``adapter_name`` (default: the active adapter).

    A fused-expert ``target_parameters`` wrapper (E > 1) yields one view per expert (kind
    "expert", A rows ``e*r:(e+1)*r``, B columns ``e::E``), or with ``per_expert=False`` one view
    of the stacked A [r·E, d_in] and B [d_out, r·E] (kind "experts"; its product B·A is *not*
    an update of any matrix).
    """
    name = adapter_name or active_adapter(model)
    named_modules = getattr(model, "named_modules", None)
    if named_modules is None:
        return
    for module_name, layer in named_modules():
        ranks = getattr(layer, "r", None)
        if not isinstance(ranks, dict) or not hasattr(layer, "lora_A") or name not in ranks:
            continue
        rank, short = int(ranks[name]), _clean_name(module_name)
        if name in layer.lora_A:
            owners = (unwrap_fsdp1(layer.lora_A[name]), "weight"), (unwrap_fsdp1(layer.lora_B[name]), "weight")
            weight_a, weight_b, kind = layer.lora_A[name].weight, layer.lora_B[name].weight, "linear"
        elif name in getattr(layer, "lora_embedding_A", {}):
            # PEFT stores the embedding pair transposed: A [r, vocab] (d_in = vocab), B [dim, r].
            owners = (layer.lora_embedding_A, name), (layer.lora_embedding_B, name)
            weight_a, weight_b, kind = layer.lora_embedding_A[name], layer.lora_embedding_B[name], "embedding"
        else:
            continue
        scaling = float(layer.scaling[name])
        if _is_param_wrapper(layer):
            short = f"{short}.{layer.parameter_name}"
            experts = int(layer.num_experts)
            if experts == 1:
                yield LoraLayerView(short, layer, weight_a, weight_b, scaling, rank, "parameter", None, 1, *owners)
            elif not per_expert:
                yield LoraLayerView(short, layer, weight_a, weight_b, scaling, rank, "experts", None, experts, *owners)
            else:
                for e in range(experts):
                    a_e = weight_a[e * rank : (e + 1) * rank]
                    b_e = weight_b[:, e::experts]
                    yield LoraLayerView(f"{short}[{e}]", layer, a_e, b_e, scaling, rank, "expert", e, experts, *owners)
            continue
        yield LoraLayerView(short, layer, weight_a, weight_b, scaling, rank, kind, None, 1, *owners)
