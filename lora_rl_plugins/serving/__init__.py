"""Serving: vLLM's LoRA rules (``vllm``), Unsloth's ``fast_inference`` rules (``unsloth``) and the
built-in check that the adapter being trained will load where it is meant to be served (``plugin``)."""

from .plugin import ServingConfig, VLLMServing, VLLMServingCheck
from .vllm import VLLMLoRAError, VLLMProblem, check_vllm_lora, validate_vllm_lora

__all__ = [
    "ServingConfig",
    "VLLMLoRAError",
    "VLLMProblem",
    "VLLMServing",
    "VLLMServingCheck",
    "check_vllm_lora",
    "validate_vllm_lora",
]
