"""The KL measurement's forward passes under a distributed engine (FSDP1, FSDP2, DeepSpeed ZeRO-3).

Under an engine that shards parameters, calling the decoder or the output layer directly either
fails (FSDP1: the layers' weights are 1-D shards outside the root's forward) or gathers weights
once per call (ZeRO-3 hooks on every module call), so processes with different local batches would
make different numbers of collective calls and hang. Here:

1. The model body runs through the engine's own forward (the FSDP1 root wrapper; the FSDP2 root; the
   ZeRO-3 module, whose hooks gather each layer) with ``logits_to_keep=1``, so no [B, L, V] logits
   tensor is built; the final hidden states are read by a forward hook on ``get_decoder()``.
2. The output layer is gathered once (FSDP1 ``summon_full_params(unit, recurse=False)`` on the unit
   owning it, FSDP2 ``unshard()``/``reshard()``, ZeRO-3 ``GatheredParameters``) and applied
   functionally in local chunks (``F.linear`` plus γ·B(A h) for a LoRA output layer).
3. A process with no sequences runs one dummy row with no completion token, so every process makes
   exactly two engine forwards and one output-layer gather per measurement.

torch, deepspeed and FSDP are imported inside the functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ..lora.layers import per_adapter_set
from ..lora.sharding import Fsdp1Index, detect_engine, is_sharded, unwrap_fsdp1
from .reference import ReferencePolicy

__all__ = [
    "engine_hidden_states",
    "forward_target",
    "full_output_layer",
    "hidden_states",
    "nonempty_batch",
    "output_logits",
]


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _find_plain_modules(model: Any) -> list[Any] | None:
    import torch
    from transformers import PreTrainedModel

    modules = list(model.modules())
    plain = all(
        type(m).train is torch.nn.Module.train
        or (type(m).train is PreTrainedModel.train and not getattr(m, "use_kernels", False))
        for m in modules
    )
    return modules if plain else None


def _plain_modules(model: Any) -> list[Any] | None:
    """``model``'s modules when ``model.train(mode)`` would do nothing but set ``training`` on each of them (no
    module's class adds to ``torch.nn.Module.train``, transformers' override counting as plain while the model
    uses no kernels), else None. Found once per adapter set (``lora.layers.per_adapter_set``)."""
    return per_adapter_set(model, _find_plain_modules)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model`` in eval mode within the block, its previous mode after (``model.eval()`` / ``model.train()``).

    Where no module adds anything to ``torch.nn.Module.train`` the ``training`` flags are set directly on a list
    of the modules kept per model: ``Module.train`` walks the tree and goes through ``Module.__setattr__`` for
    each module (about 1 ms on a 175-module model, as much as a forward pass of it on a small batch).
    """
    was_training = model.training
    modules = _plain_modules(model) if was_training else None
    if modules is None:
        model.eval()
    else:
        for module in modules:
            module.__dict__["training"] = False
    try:
        yield
    finally:
        if was_training:
            if modules is None:
                model.train()
            else:
                for module in modules:
                    module.__dict__["training"] = True


def nonempty_batch(input_ids: Any, attention_mask: Any, completion_mask: Any) -> tuple[Any, Any, Any]:
    """The batch itself, or, when it has no rows or no completion positions, one 2-token dummy row
    (token 0) whose completion mask is 0: it adds nothing to any sum, and its forward passes join
    the engine's collectives like every other process's."""
    if input_ids.shape[0] > 0 and completion_mask.shape[1] > 0:
        return input_ids, attention_mask, completion_mask
    import torch

    ids = torch.zeros((1, 2), dtype=torch.long, device=input_ids.device)
    return ids, torch.ones_like(ids), torch.zeros((1, 1), dtype=torch.long, device=input_ids.device)


def forward_target(model: Any, engine_model: Any = None) -> Any:
    """What to call for the model's own forward: the FSDP1 root wrapper (the unwrapped model's
    layers hold 1-D shards outside it), else ``model`` itself."""
    return engine_model if engine_model is not None and detect_engine(model, engine_model) == "fsdp1" else model


def engine_hidden_states(model: Any, engine_model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """Final hidden states [B, L, H] (after the final norm) through the engine's own forward path.

    Calls the FSDP1 root wrapper (``engine_model``) or else ``model`` (the FSDP2 root, the ZeRO-3
    module) with ``logits_to_keep=1`` and ``use_cache=False``, and captures ``get_decoder()``'s output.
    One call = the same collectives on every process.

    Raises:
        RuntimeError: the decoder did not run exactly once during the forward.
    """
    decoder = _base(model).get_decoder()
    captured: list[Any] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    target = forward_target(model, engine_model)
    handle = decoder.register_forward_hook(hook)
    try:
        target(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the decoder to run once during the model's forward, it ran {len(captured)} times")
    return captured[0]


def _functional_head(head: Any) -> Callable[[Any], Any]:
    """logits = h Wᵀ + b (+ Σ γ·B(A h) over active, unmerged LoRA adapters), read from ``head`` now.

    The LoRA matrices are copied (r × d: small) so that a reference that swaps adapter weights in and
    back (``ReferencePolicy("snapshot")``) is captured as it was when this was called.
    """
    import torch.nn.functional as F

    inner = unwrap_fsdp1(head)
    if not hasattr(inner, "lora_A"):
        weight, bias = inner.weight, getattr(inner, "bias", None)
        return lambda h: F.linear(h.to(weight.dtype), weight, bias)
    base = inner.get_base_layer()
    weight, bias = base.weight, getattr(base, "bias", None)
    if getattr(inner, "fan_in_fan_out", False):
        weight = weight.T
    terms = []
    if not getattr(inner, "disable_adapters", False) and not getattr(inner, "merged", False):
        for name in inner.active_adapters:
            if name in inner.lora_A:
                a, b = unwrap_fsdp1(inner.lora_A[name]).weight, unwrap_fsdp1(inner.lora_B[name]).weight
                terms.append((a.detach().clone(), b.detach().clone(), float(inner.scaling[name])))

    def logits(h: Any) -> Any:
        h = h.to(weight.dtype)
        out = F.linear(h, weight, bias)
        for a, b, scaling in terms:  # eval mode: LoRA dropout is the identity
            out = out + scaling * F.linear(F.linear(h, a), b)
        return out

    return logits


def _fsdp2_owners(model: Any, head: Any) -> list[Any]:
    """The nearest ``fully_shard`` module at or above each module of ``head`` (duck-typed: ``unshard``)."""
    path: dict[int, list[Any]] = {}
    for name, module in model.named_modules():
        chain, current = [model], model
        for part in name.split(".") if name else []:
            current = getattr(current, part)
            chain.append(current)
        path[id(module)] = chain
    owners: list[Any] = []
    for module in head.modules():
        for candidate in reversed(path.get(id(module), [model])):
            if hasattr(candidate, "unshard") and hasattr(candidate, "reshard"):
                if all(candidate is not o for o in owners):
                    owners.append(candidate)
                break
    return owners


@contextlib.contextmanager
def full_output_layer(model: Any, engine_model: Any = None) -> Iterator[tuple[Callable[[], Any], int]]:
    """Within the block, ``(make, vocab)``: ``make()`` returns ``logits(h)`` [.., V] computed with the full
    output-layer weights and the adapter state at the time ``make()`` is called (call it again inside
    ``ReferencePolicy.activate`` for the reference). Calls to ``logits`` communicate nothing.

    Collective on entry and exit (the same calls on every process). Never nest it for the same model:
    DeepSpeed and FSDP refuse nested gathers of the same parameters.
    """
    head = _base(model).get_output_embeddings()
    engine = detect_engine(model, engine_model)
    with contextlib.ExitStack() as stack:
        if engine == "fsdp1":
            from torch.distributed.fsdp import FullyShardedDataParallel

            index = Fsdp1Index(engine_model)
            units: list[Any] = []
            for module in head.modules():
                if hasattr(module, "_handle") and all(module is not u for u in units):
                    units.append(module)  # a unit wrapped around part of the head (PEFT's wrap policy)
                module = unwrap_fsdp1(module)
                for name, _ in module.named_parameters(recurse=False):
                    slot = index.slot(module, name)
                    if slot is not None and all(slot.unit is not u for u in units):
                        units.append(slot.unit)
            for unit in units:
                stack.enter_context(FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False))
        elif engine == "fsdp2":
            for owner in _fsdp2_owners(model, head):
                owner.unshard()
                stack.callback(owner.reshard)
        elif engine == "zero3":
            import deepspeed

            stack.enter_context(deepspeed.zero.GatheredParameters(list(head.parameters()), modifier_rank=None))
        inner = unwrap_fsdp1(head)
        weight = inner.get_base_layer().weight if hasattr(inner, "get_base_layer") else inner.weight
        yield (lambda: _functional_head(head)), int(weight.shape[0])


def hidden_states(model: Any, engine_model: Any, body: Any, input_ids: Any, attention_mask: Any) -> Any:
    """Final hidden states [B, L, H]: ``body`` (the decoder) called directly when parameters are full,
    else through the engine's forward (``engine_hidden_states``)."""
    if is_sharded(model, engine_model):
        return engine_hidden_states(model, engine_model, input_ids, attention_mask)
    return body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@contextlib.contextmanager
def output_logits(
    model: Any, engine_model: Any, head: Any, reference: ReferencePolicy
) -> Iterator[tuple[Callable[[Any], Any], Callable[[Any], Any], int]]:
    """Within the block, ``(policy, reference, vocab)``: two functions from hidden states [.., H] to
    logits [.., V] (before temperature and soft-capping) and the vocabulary size V.

    Full parameters: the output layer module is called (the reference inside ``reference.activate``).
    Sharded parameters: the layer is gathered once for the block (``full_output_layer``) and applied
    functionally, so the number of chunks a process computes does not change its collective calls.
    """
    if not is_sharded(model, engine_model):

        def reference_logits(h: Any) -> Any:
            with reference.activate(model):
                return head(h)

        vocab = head.weight.shape[0] if hasattr(head, "weight") else None
        yield head, reference_logits, vocab
        return
    with full_output_layer(model, engine_model) as (make, vocab):
        policy = make()
        with reference.activate(model):
            ref = make()
        yield policy, ref, vocab
