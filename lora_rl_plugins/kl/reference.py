"""The reference policy, evaluated with the model in hand and never copied.

The reference is the same model with its adapters disabled (PEFT ``disable_adapter``), a named
frozen adapter (TRL's "ref"), or a snapshot of the starting adapter's weights swapped in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..lora.adapters import NotALoraModelError, summarize_adapter
from ..lora.layers import per_adapter_set

__all__ = ["KL_REFERENCES", "ReferencePolicy", "choose_reference"]


class ReferencePolicy:
    """How to evaluate the reference policy with the model in hand, without copying it.

    mode "disable": adapters disabled (the base model; the reference of a new adapter).
    mode "adapter": switch to a frozen adapter kept in the model (TRL's "ref").
    mode "snapshot": swap a saved copy of the starting adapter's weights in, then back.
    """

    def __init__(self, mode: str = "disable", adapter_name: str | None = None) -> None:
        if mode not in {"disable", "adapter", "snapshot"}:
            raise ValueError(f"unknown reference mode {mode!r}: use 'disable', 'adapter' or 'snapshot'")
        self.mode = mode
        self.adapter_name = adapter_name
        self.snapshot: dict[str, Any] = {}

    @staticmethod
    def require_lora(model: Any) -> None:
        if not summarize_adapter(model).is_lora:
            raise NotALoraModelError(
                "the KL monitor measures drift from the reference through the model's LoRA adapter (adapters "
                "disabled = reference), and this model has none; it does not make a silent full copy. Train with "
                "peft_config= / peft.get_peft_model, or turn the KL monitor off (block=['kl_monitor'])."
            )

    def take_snapshot(self, model: Any, *, is_lora: bool | None = None) -> None:
        """Remember the active adapter's current weights as the reference (a pre-trained adapter).

        ``is_lora``: what the caller already knows (``AdapterReady.adapter.is_lora``); None: checked here.

        Raises:
            NotALoraModelError: the model has no LoRA adapter.
        """
        if is_lora is None:
            self.require_lora(model)
        elif not is_lora:
            raise NotALoraModelError("kl_reference='initial_adapter' needs a LoRA adapter to snapshot")
        self.snapshot = {
            name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters() if "lora_" in name
        }

    @contextlib.contextmanager
    def activate(self, model: Any) -> Iterator[None]:
        """Within the block, ``model`` computes the reference policy."""
        if self.mode == "disable":
            if not hasattr(model, "disable_adapter"):
                self.require_lora(model)
                raise NotALoraModelError("the model has LoRA layers but no disable_adapter(); wrap it with PEFT")
            with _adapters_disabled(model):
                yield
        elif self.mode == "adapter":
            previous = model.active_adapter
            model.set_adapter(self.adapter_name)
            try:
                yield
            finally:
                model.set_adapter(previous)
        else:
            if not self.snapshot:
                raise RuntimeError("no adapter snapshot was taken: call take_snapshot(model) at the start of training")
            import torch

            params = dict(model.named_parameters())
            current = {name: params[name].detach().clone() for name in self.snapshot}
            try:
                with torch.no_grad():
                    for name, saved in self.snapshot.items():
                        params[name].copy_(saved.to(params[name].device, params[name].dtype))
                yield
            finally:
                with torch.no_grad():
                    for name, value in current.items():
                        params[name].copy_(value)


#: Values of the ``kl_reference`` option.
KL_REFERENCES = ("auto", "base", "initial_adapter")


def choose_reference(
    kl_reference: str, model: Any, engine_model: Any = None, *, is_lora: bool = True
) -> ReferencePolicy:
    """The one reference choice the KL monitor and the probes (``learning/absorbed_bits``) share.

    ``kl_reference``: "auto" (TRL's frozen "ref" adapter where the model has one, else adapters
    disabled), "base" (adapters disabled) or "initial_adapter" (a snapshot of the adapter's weights now).
    ``is_lora``: the model carries a LoRA adapter (the caller knows it from ``AdapterReady.adapter``, summarised
    once per run).

    Raises:
        ValueError: an unknown ``kl_reference``, or "initial_adapter" with parameters sharded by FSDP or
            DeepSpeed ZeRO-3 (the message names what to use instead).
        NotALoraModelError: "initial_adapter" on a model without LoRA.
    """
    from ..lora.sharding import is_sharded

    if kl_reference not in KL_REFERENCES:
        raise ValueError(f"kl_reference must be one of {', '.join(KL_REFERENCES)}, got {kl_reference!r}")
    if kl_reference == "initial_adapter":
        if is_sharded(model, engine_model):
            raise ValueError(
                "kl_reference='initial_adapter' swaps a saved copy of the adapter's weights in and out, which this "
                "library does not do for parameters sharded by FSDP or DeepSpeed ZeRO-3; use kl_reference='base', "
                "or load the starting adapter as TRL's frozen 'ref' adapter (kl_reference='auto')."
            )
        reference = ReferencePolicy("snapshot")
        reference.take_snapshot(model, is_lora=is_lora)
        return reference
    peft_config = getattr(model, "peft_config", {}) or {}
    if kl_reference == "auto" and "ref" in peft_config:
        return ReferencePolicy("adapter", "ref")  # TRL's frozen copy of a pre-trained adapter
    return ReferencePolicy("disable")


def _find_adapter_switches(model: Any) -> list[Any] | None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # older PEFT: modules_to_save wrappers are not tuner layers
        kinds: tuple[type, ...] = (BaseTunerLayer,)
    else:
        kinds = (BaseTunerLayer, AuxiliaryTrainingWrapper)
    modules = [module for module in model.modules() if isinstance(module, kinds)]
    return modules if all(hasattr(m, "_disable_adapters") for m in modules) else None


def _adapter_switches(model: Any) -> list[Any] | None:
    """The modules PEFT's ``disable_adapter_layers`` toggles (``BaseTunerLayer`` and
    ``AuxiliaryTrainingWrapper``: LoRA layers, modules_to_save and trainable-token wrappers), found once per
    adapter set (``lora.layers.per_adapter_set``); None when one of them keeps its state elsewhere than PEFT's
    ``_disable_adapters`` flag (then PEFT's own calls are used)."""
    return per_adapter_set(model, _find_adapter_switches)


@contextlib.contextmanager
def _adapters_disabled(model: Any) -> Iterator[None]:
    """PEFT's ``disable_adapter()`` for LoRA-style adapters, for a forward pass without gradients.

    PEFT's context computes ``get_model_status()`` (every layer's status, only to warn about a mixed state),
    then ``disable_adapter_layers()``, which walks every module and, per layer, sets ``requires_grad`` on
    each adapter parameter, and on exit ``enable_adapter_layers()``, which walks again (and sets
    ``requires_grad=True`` on the active adapter, whatever it was). A layer's output depends only on its
    ``disable_adapters`` flag, so here the flag of each layer PEFT would toggle (found once per adapter set)
    is set and restored to exactly its previous value; ``requires_grad`` is left alone, which is the same
    under ``torch.no_grad()`` (the measurement's). Equal logits to PEFT's own context:
    ``tests/test_kl_reference_switch.py``. Prompt-learning and adaption-prompt adapters, and adapters with a
    bias (PEFT warns that disabling them is not the base model), go through PEFT's own context.
    """
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    tuner = getattr(model, "base_model", None)
    plain = (
        config is not None
        and not getattr(config, "is_prompt_learning", False)
        and not getattr(config, "is_adaption_prompt", False)
        and getattr(config, "bias", "none") == "none"
        and hasattr(tuner, "disable_adapter_layers")
    )
    switches = _adapter_switches(model) if plain else None
    if switches is None:
        with model.disable_adapter():
            yield
        return
    previous = [module._disable_adapters for module in switches]
    try:
        for module in switches:
            module._disable_adapters = True
        yield
    finally:
        for module, flag in zip(switches, previous, strict=True):
            module._disable_adapters = flag
