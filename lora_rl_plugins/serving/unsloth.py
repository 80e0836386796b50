"""Unsloth ``fast_inference`` LoRA checks that need no Unsloth (Unsloth 2026.10, vLLM 0.33).

Unsloth loads vLLM with ``max_lora_rank`` rounded up to a legal vLLM value
(``unsloth_zoo.vllm_utils.determine_max_lora_rank``), does not check r against it at
``get_peft_model``, and the mismatch surfaces at the first generation ("LoRA rank 32 is greater
than max_lora_rank 16", unsloth issue #2097). These functions make that check up front.
"""

from __future__ import annotations

from typing import Any

from .vllm import (
    LEGAL_MAX_LORA_RANKS,
    VLLMLoRAError,
    VLLMProblem,
    load_lora_config,
    smallest_legal_max_lora_rank,
    validate_vllm_lora,
)

__all__ = ["UNSLOTH_DEFAULT_TARGET_MODULES", "check_unsloth_lora", "unsloth_engine_rank", "unsloth_lora_config"]

#: ``FastLanguageModel.get_peft_model``'s default ``target_modules`` (Unsloth 2026.10, llama.py).
UNSLOTH_DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def unsloth_engine_rank(requested: int) -> int:
    """The ``max_lora_rank`` Unsloth starts vLLM with for ``from_pretrained(max_lora_rank=requested)``."""
    legal = smallest_legal_max_lora_rank(requested)
    if legal is None:
        raise ValueError(
            f"Unsloth cannot start vLLM with max_lora_rank={requested}: the largest vLLM accepts is "
            f"{LEGAL_MAX_LORA_RANKS[-1]}"
        )
    return legal


def unsloth_lora_config(r: int, **get_peft_model_kwargs: Any) -> dict[str, Any]:
    """The LoRA config ``FastLanguageModel.get_peft_model(r=r, **kwargs)`` will create, as a dict."""
    kwargs = get_peft_model_kwargs
    init = kwargs.get("init_lora_weights", True)
    if kwargs.get("loftq_config"):
        init = "loftq"
    config = {
        "r": r,
        "lora_alpha": kwargs.get("lora_alpha", 16),
        "target_modules": list(kwargs.get("target_modules", UNSLOTH_DEFAULT_TARGET_MODULES)),
        "bias": kwargs.get("bias", "none"),
        "use_rslora": kwargs.get("use_rslora", False),
        "modules_to_save": kwargs.get("modules_to_save"),
        "init_lora_weights": init,
    }
    for name in (
        "use_dora",
        "lora_bias",
        "layer_replication",
        "use_qalora",
        "use_bdlora",
        "alora_invocation_tokens",
        "rank_pattern",
        "alpha_pattern",
    ):
        if name in kwargs:
            config[name] = kwargs[name]
    return config


def check_unsloth_lora(lora: Any, *, engine_max_lora_rank: int) -> None:
    """Raise a ``VLLMLoRAError`` with Unsloth advice when the engine would refuse ``lora``."""
    config = load_lora_config(lora)
    problems = validate_vllm_lora(config, max_lora_rank=engine_max_lora_rank)
    if not problems:
        return
    advice = []
    for problem in problems:
        if problem.rule == "rank_exceeds_max_lora_rank":
            needed = max([config["r"], *(config.get("rank_pattern") or {}).values()])
            problem = VLLMProblem(
                problem.rule,
                problem.message,
                f"load the model with FastLanguageModel.from_pretrained(..., fast_inference=True, "
                f"max_lora_rank={needed}) (Unsloth rounds it up to a value vLLM accepts), "
                f"or use r <= {engine_max_lora_rank}.",
            )
        advice.append(problem)
    raise VLLMLoRAError(
        advice,
        context=f"Unsloth's vLLM engine (max_lora_rank={engine_max_lora_rank}) would reject this LoRA at the first "
        "generation",
    )
