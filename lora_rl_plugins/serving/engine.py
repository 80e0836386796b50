"""vLLM's engine LoRA settings (``vllm/config/lora.py`` ``LoRAConfig``): max_lora_rank, max_loras, max_cpu_loras,
lora_dtype."""

from __future__ import annotations

from typing import Any

from .problems import VLLMProblem

__all__ = ["LEGAL_MAX_LORA_RANKS", "LORA_DTYPES", "engine_problems", "smallest_legal_max_lora_rank"]

#: ``vllm.config.lora.MaxLoRARanks`` in vLLM 0.32, 0.33 and 0.34 (the same).
LEGAL_MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: ``vllm.config.lora.LoRADType`` in vLLM 0.32, 0.33 and 0.34 (the same).
LORA_DTYPES: tuple[str, ...] = ("auto", "float16", "bfloat16")


def smallest_legal_max_lora_rank(rank: int) -> int | None:
    """The smallest legal vLLM ``max_lora_rank`` >= ``rank`` (None above 512).

    This is also how Unsloth rounds ``from_pretrained(max_lora_rank=...)`` for its vLLM engine
    (``unsloth_zoo.vllm_utils.determine_max_lora_rank``).
    """
    return next((legal for legal in LEGAL_MAX_LORA_RANKS if legal >= rank), None)


def engine_problems(max_lora_rank: Any, max_loras: Any, max_cpu_loras: Any, lora_dtype: Any) -> list[VLLMProblem]:
    problems = []
    if max_lora_rank not in LEGAL_MAX_LORA_RANKS or isinstance(max_lora_rank, bool):
        above = smallest_legal_max_lora_rank(max_lora_rank) if isinstance(max_lora_rank, int) else None
        problems.append(
            VLLMProblem(
                "max_lora_rank_illegal",
                f"max_lora_rank={max_lora_rank!r} is not a value vLLM accepts "
                f"({', '.join(map(str, LEGAL_MAX_LORA_RANKS))}).",
                f"use max_lora_rank={above}." if above else "use one of the accepted values.",
            )
        )
    if not isinstance(max_loras, int) or isinstance(max_loras, bool) or max_loras < 1:
        problems.append(VLLMProblem("max_loras", f"max_loras={max_loras!r} must be an integer >= 1.", "use 1."))
    # vllm/engine/arg_utils.py:EngineArgs.create_engine_config: 0, a negative value or None becomes None (= max_loras);
    # only a positive value below max_loras is refused (vllm/config/lora.py:LoRAConfig.__post_init__)
    elif isinstance(max_cpu_loras, int) and 0 < max_cpu_loras < max_loras:
        problems.append(
            VLLMProblem(
                "max_cpu_loras",
                f"max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({max_loras}).",
                f"use max_cpu_loras >= {max_loras}, or leave it unset (it defaults to max_loras).",
            )
        )
    is_torch_dtype = type(lora_dtype).__name__ == "dtype" and type(lora_dtype).__module__ == "torch"
    if not is_torch_dtype and lora_dtype not in LORA_DTYPES:
        problems.append(
            VLLMProblem(
                "lora_dtype",
                f"lora_dtype={lora_dtype!r} is not one of {', '.join(LORA_DTYPES)}.",
                'use "auto" (the base model dtype), "float16" or "bfloat16".',
            )
        )
    return problems
