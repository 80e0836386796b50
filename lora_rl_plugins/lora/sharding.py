"""LoRA parameters under a distributed engine: their true sizes and their full matrices, LoRA only.

Under DeepSpeed ZeRO-3 and PyTorch FSDP a parameter object holds only this process's shard, so
``numel()`` and the tensor itself are not the adapter's. This module reads the true shapes from the
engine's own metadata (no communication) and gathers the full LoRA matrices (never the base weights)
with the engine's own collectives, the same calls in the same order on every process:

* DDP, ZeRO-1/2, one process: ``param.shape``; the LoRA matrices are the parameters themselves.
* ZeRO-3: ``param.ds_shape``/``ds_numel`` (``param.shape`` is [0]); ``deepspeed.zero.GatheredParameters``
  on the LoRA parameters only.
* FSDP2: ``param.shape`` (a DTensor: already global); ``DTensor.full_tensor()`` per LoRA parameter.
* FSDP1: ``FlatParameter._shapes``/``_numels`` (a parameter is a 1-D slice of the local shard, maybe
  empty); one ``all_reduce`` of a LoRA-sized buffer into which each process writes its own slices.

FSDP1 needs the wrapped root (``engine_model``, e.g. ``trainer.model_wrapped``): the root unit owns
the parameters outside the wrapped layers and is not among the unwrapped model's modules. The
engine is recognised by duck typing (attributes of the parameters and modules); torch, deepspeed
and FSDP are imported inside the functions, only once their objects have been seen.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .layers import LoraLayerView, _is_fsdp1, lora_layers, unwrap_fsdp1

__all__ = [
    "Fsdp1Index",
    "detect_engine",
    "gathered_lora_layers",
    "is_sharded",
    "lora_numels",
    "unwrap_fsdp1",
]

_FSDP1_PREFIX = "_fsdp_wrapped_module."


def _is_zero3(param: Any) -> bool:
    attributes = getattr(param, "__dict__", None)  # DeepSpeed sets ds_id/ds_shape on the parameter object
    if attributes is not None:
        return "ds_id" in attributes and "ds_shape" in attributes
    return hasattr(param, "ds_id") and hasattr(param, "ds_shape")


def _is_dtensor(param: Any) -> bool:
    # full_tensor is DTensor's method: a class lookup first, so a plain parameter costs no AttributeError
    return (
        hasattr(type(param), "full_tensor")
        and hasattr(param, "full_tensor")
        and hasattr(param, "placements")
        and hasattr(param, "_local_tensor")
    )


#: Within ``engine_fixed()``: (id(model), id(engine_model)) -> the engine found (both objects are alive there).
_FIXED: contextvars.ContextVar[dict[tuple[int, int], str] | None] = contextvars.ContextVar("engine", default=None)


@contextlib.contextmanager
def engine_fixed(known: dict[tuple[int, int], str] | None = None) -> Iterator[None]:
    """Within the block, ``detect_engine`` walks each model's modules and parameters once: for one
    measurement, whose forward passes and gathers all ask, the engine cannot change.

    ``known``: a dict the caller keeps (and empties when its models change) to remember the answers across
    blocks: a plugin's, for a training run, whose engine does not change while it trains.
    """
    if _FIXED.get() is not None:  # already inside one: the outer block's answers hold
        yield
        return
    token = _FIXED.set({} if known is None else known)
    try:
        yield
    finally:
        _FIXED.reset(token)


def detect_engine(model: Any, engine_model: Any = None) -> str:
    """How ``model``'s parameters are held: "fsdp1", "fsdp2", "zero3", or "plain" (full parameters:
    one process, DDP, DeepSpeed ZeRO-1/2). Remembered within ``engine_fixed()``.

    Args:
        model: the unwrapped model (``accelerator.unwrap_model(trainer.model)``).
        engine_model: the engine's outer wrapper (``trainer.model_wrapped``), where there is one.
    """
    fixed = _FIXED.get()
    if fixed is None:
        return _detect_engine(model, engine_model)
    key = (id(model), id(engine_model))
    if key not in fixed:
        fixed[key] = _detect_engine(model, engine_model)
    return fixed[key]


def _detect_engine(model: Any, engine_model: Any) -> str:
    modules = getattr(model, "modules", None)
    if _is_fsdp1(engine_model) or (modules is not None and any(_is_fsdp1(m) for m in modules())):
        return "fsdp1"
    parameters = getattr(model, "parameters", None)
    for param in parameters() if parameters is not None else ():
        if _is_zero3(param):
            return "zero3"
        if _is_dtensor(param):
            return "fsdp2"
    return "plain"


def is_sharded(model: Any, engine_model: Any = None) -> bool:
    """Whether an engine shards ``model``'s parameters (FSDP1, FSDP2, ZeRO-3): then sizes, matrices
    and forward passes must go through this module and every process must make the same calls."""
    return detect_engine(model, engine_model) != "plain"


@dataclass(frozen=True)
class _FlatSlot:
    unit: Any
    handle: Any
    index: int


class Fsdp1Index:
    """Where each original parameter lives in FSDP1's flat parameters (metadata only, no communication).

    Keys: (id(owning module), attribute name), valid for ``use_orig_params`` True and False, and
    id(original parameter) (True only). Reads FSDP1's ``FlatParameter`` fields ``_param_infos``,
    ``_shapes``, ``_numels``, ``_shard_param_infos``, ``_shared_param_infos``, ``_params``
    (torch/distributed/fsdp/_flat_param.py; pinned by tests/test_engines.py).

    Args:
        engine_model: the FSDP1 root wrapper (``trainer.model_wrapped``).
    """

    def __init__(self, engine_model: Any) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        self.by_owner: dict[tuple[int, str], _FlatSlot] = {}
        self.by_param: dict[int, _FlatSlot] = {}
        self.units = list(FullyShardedDataParallel.fsdp_modules(engine_model)) if engine_model is not None else []
        for unit in self.units:
            handle = unit._handle
            if handle is None:
                continue
            flat = handle.flat_param
            for i, info in enumerate(flat._param_infos):
                slot = _FlatSlot(unit, handle, i)
                self.by_owner[(id(info.module), info.param_name)] = slot
                if flat._params is not None:
                    self.by_param[id(flat._params[i])] = slot
            for shared in flat._shared_param_infos:
                primary = self.by_owner.get((id(shared.prim_module), shared.prim_param_name))
                if primary is not None:
                    self.by_owner[(id(shared.module), shared.param_name)] = primary

    def slot(self, owner: Any, name: str) -> _FlatSlot | None:
        """The flat-parameter slot of ``owner``'s parameter ``name``, or None if FSDP1 does not manage it."""
        return self.by_owner.get((id(unwrap_fsdp1(owner)), name))

    def numel(self, slot: _FlatSlot) -> int:
        """The parameter's full number of elements."""
        return int(slot.handle.flat_param._numels[slot.index])


def _get(owner: tuple[Any, str]) -> Any:
    module, attr = owner
    if hasattr(module, "keys") and hasattr(module, "__getitem__") and not hasattr(module, "weight"):
        return module.get(attr)  # a ParameterDict
    return getattr(module, attr, None)


def _true_numel(param: Any, owner: tuple[Any, str], index: Fsdp1Index | None) -> int:
    if param is not None and _is_zero3(param):
        return int(param.ds_numel)
    if index is not None:
        slot = index.by_param.get(id(param)) if param is not None else None
        slot = slot or index.slot(*owner)
        if slot is not None:
            return index.numel(slot)
    if param is None:
        raise ValueError(f"cannot find the LoRA parameter {owner[1]!r} of {type(owner[0]).__name__}")
    return int(param.numel())  # plain tensors and DTensors (global shape)


def lora_numels(model: Any, engine_model: Any = None, adapter_name: str | None = None) -> dict[str, tuple[int, int]]:
    """{module name: (elements of A, elements of B)} of every LoRA layer, full (unsharded) sizes.

    Names are ``lora_layers``' names (without PEFT's prefix and FSDP1's ``_fsdp_wrapped_module.``).
    No communication. A is r × d_in and B is d_out × r, so d_in = A's elements / r (exact).

    Raises:
        ValueError: a LoRA parameter cannot be found in the model or in FSDP1's metadata.
    """
    index = Fsdp1Index(engine_model) if detect_engine(model, engine_model) == "fsdp1" else None
    return {
        entry.name: (
            _true_numel(_get(entry.owner_a), entry.owner_a, index),
            _true_numel(_get(entry.owner_b), entry.owner_b, index),
        )
        for entry in lora_layers(model, adapter_name, per_expert=False)
    }


def _fsdp1_full(index: Fsdp1Index, owners: list[tuple[Any, str]]) -> list[Any]:
    """Full tensors of FSDP1-managed parameters, communicating only their elements.

    Each process writes its slice of each parameter (from its local shard and ``_shard_param_infos``)
    into a zero buffer of the parameters' total size; one ``all_reduce(SUM)`` per (process group,
    dtype) rebuilds them exactly (the slices are disjoint). Call outside forward/backward, on every process.
    """
    import torch
    import torch.distributed as dist

    slots = []
    for owner in owners:
        slot = index.slot(*owner)
        if slot is None:
            raise ValueError(f"parameter {owner[1]!r} of {type(owner[0]).__name__} is not managed by FSDP")
        slots.append(slot)
    results: list[Any] = [None] * len(slots)
    groups: dict[tuple[int, Any], list[int]] = {}
    for k, slot in enumerate(slots):
        flat = slot.handle.flat_param
        if not slot.handle.uses_sharded_strategy:  # NO_SHARD: the views are full
            results[k] = _get(owners[k]).detach().clone().reshape(flat._shapes[slot.index])
            continue
        groups.setdefault((id(slot.handle.process_group), flat.dtype), []).append(k)
    for (_, dtype), members in groups.items():  # insertion order: the model's order, the same on every process
        sizes = [index.numel(slots[k]) for k in members]
        first = slots[members[0]].handle
        buffer = torch.zeros(sum(sizes), dtype=dtype, device=first.flat_param.device)
        start = 0
        for k, size in zip(members, sizes, strict=True):
            flat = slots[k].handle.flat_param
            info = flat._shard_param_infos[slots[k].index]
            if info.in_shard:
                piece = flat._local_shard[info.offset_in_shard : info.offset_in_shard + info.numel_in_shard]
                buffer[start + info.intra_param_start_idx : start + info.intra_param_end_idx + 1] = piece.detach()
            start += size
        dist.all_reduce(buffer, group=first.process_group)
        start = 0
        for k, size in zip(members, sizes, strict=True):
            slot = slots[k]
            results[k] = buffer[start : start + size].view(slot.handle.flat_param._shapes[slot.index])
            start += size
    return results


def gathered_lora_layers(
    model: Any, engine_model: Any = None, adapter_name: str | None = None
) -> list[LoraLayerView] | None:
    """Every LoRA layer with its full A [r, d_in] and B [d_out, r], or None when parameters are already
    full (one process, DDP, ZeRO-1/2: use ``lora_layers``).

    Collective under FSDP1, FSDP2 and ZeRO-3: every process must call it, the same number of times,
    outside forward/backward. Only the LoRA parameters travel (see the module docstring for each
    engine's call); the returned tensors are copies.
    """
    engine = detect_engine(model, engine_model)
    if engine == "plain":
        return None
    entries = list(lora_layers(model, adapter_name, per_expert=False))
    owners = [owner for entry in entries for owner in (entry.owner_a, entry.owner_b)]
    if engine == "zero3":
        import deepspeed

        params = [_get(owner) for owner in owners]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            full = [param.detach().clone() for param in params]
    elif engine == "fsdp2":
        full = []
        for owner in owners:
            param = _get(owner)
            full.append(param.full_tensor().detach() if _is_dtensor(param) else param.detach().clone())
    else:
        full = _fsdp1_full(Fsdp1Index(engine_model), owners)
    return [dataclasses.replace(e, weight_a=full[2 * k], weight_b=full[2 * k + 1]) for k, e in enumerate(entries)]
