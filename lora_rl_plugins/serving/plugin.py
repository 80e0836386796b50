"""Fail fast when the adapter being trained will not load in the vLLM server it is meant for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..lora.shapes import peft_weight_shapes
from ..plugin.config import option
from ..plugin.events import AdapterReady, RunStarted
from ..plugin.hookspecs import hookimpl
from ..plugin.log import logger
from .vllm import LORA_DTYPES, VLLMLoRAError, validate_vllm_lora

__all__ = ["ServingConfig", "VLLMServing", "VLLMServingCheck"]

TRL_MERGES_NOTE = (
    "lora_rl_plugins: TRL generates with vLLM by merging the LoRA adapter into the base weights and pushing "
    "those, so vLLM's max_lora_rank does not apply to this training run. To check the adapter against the "
    "vLLM server you will serve it from, pass vllm_serving={'max_lora_rank': ...} to the callback."
)


@dataclass(frozen=True)
class VLLMServing:
    """The vLLM engine settings the trained adapter will be served with."""

    max_lora_rank: int
    max_loras: int = 1
    max_cpu_loras: int | None = None
    lora_dtype: Any = "auto"
    enable_mixed_moe_lora_format: bool = False

    @classmethod
    def coerce(cls, value: VLLMServing | Mapping[str, Any] | None) -> VLLMServing | None:
        """A ``VLLMServing`` from itself, a mapping of its fields, or None.

        Raises:
            TypeError: the mapping names settings vLLM serving does not have.
        """
        if value is None or isinstance(value, VLLMServing):
            return value
        known = {"max_lora_rank", "max_loras", "max_cpu_loras", "lora_dtype", "enable_mixed_moe_lora_format"}
        unknown = set(value) - known
        if unknown:
            raise TypeError(
                f"unknown vLLM serving settings {sorted(unknown)}; known: max_lora_rank, max_loras, max_cpu_loras, "
                f"lora_dtype ({', '.join(LORA_DTYPES)}), enable_mixed_moe_lora_format"
            )
        return cls(**value)


@dataclass
class ServingConfig:
    """Options of the serving check; each field's ``doc`` is its documentation."""

    vllm_serving: VLLMServing | Mapping[str, Any] | None = option(
        doc='the vLLM settings you will serve the trained adapter with (`{"max_lora_rank": 16, ...}`): checked '
        "before the first step. With TRL's `use_vllm=True` the adapter is merged for generation, so "
        "`max_lora_rank` does not apply to training; the callback says so once"
    )

    def __post_init__(self) -> None:
        self.vllm_serving = VLLMServing.coerce(self.vllm_serving)


class VLLMServingCheck:
    """Validates the adapter against ``serving`` when the adapter is ready (a fail-fast validator).

    Raises:
        VLLMLoRAError: at ``on_adapter_ready``, listing every reason vLLM would refuse the adapter.
    """

    fail_fast = True

    def __init__(self, serving: VLLMServing | Mapping[str, Any] | None = None) -> None:
        self.serving = VLLMServing.coerce(serving)

    @hookimpl
    def on_run_start(self, run: RunStarted) -> None:
        if run.grpo.weight_sync != "shared" and self.serving is None:
            logger.warning(TRL_MERGES_NOTE)

    @hookimpl
    def on_adapter_ready(self, adapter: AdapterReady) -> None:
        if self.serving is None or not adapter.adapter.is_lora:
            return
        peft_config = getattr(adapter.model, "peft_config", None)
        if not isinstance(peft_config, Mapping) or adapter.adapter.adapter_name not in peft_config:
            return
        serving = self.serving
        name = adapter.adapter.adapter_name
        model_config = getattr(adapter.model, "config", None)
        weights = None
        try:  # the tensors save_pretrained would write: checked as vLLM checks a saved adapter's keys
            weights = peft_weight_shapes(adapter.model, name)
        except Exception as error:
            logger.warning(
                "lora_rl_plugins: the adapter's weight names could not be read (%s); checking its config", error
            )
        problems = validate_vllm_lora(
            peft_config[name],
            max_lora_rank=serving.max_lora_rank,
            max_loras=serving.max_loras,
            max_cpu_loras=serving.max_cpu_loras,
            lora_dtype=serving.lora_dtype,
            model_config=model_config if weights is not None else None,
            weights=weights,
            enable_mixed_moe_lora_format=serving.enable_mixed_moe_lora_format,
        )
        if problems:
            raise VLLMLoRAError(
                problems,
                context=f"the adapter being trained will not load in vLLM with max_lora_rank={serving.max_lora_rank}"
                " (checked before training, so no time is lost)",
            )
