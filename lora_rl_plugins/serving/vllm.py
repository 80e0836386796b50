"""vLLM's LoRA rules (vLLM 0.33), checked before vLLM or Unsloth fail deep inside generation.

The rules are vLLM's own, read from its 0.33.0 wheel:

* ``vllm/config/lora.py`` ``LoRAConfig``: ``max_lora_rank`` is one of ``MaxLoRARanks``
  (1, 8, 16, 32, 64, 128, 256, 320, 512); ``max_loras >= 1``; ``max_cpu_loras`` is None (then
  ``max_loras``) or ``>= max_loras``; ``lora_dtype`` is "auto", "float16", "bfloat16" (or a
  ``torch.dtype``).
* ``vllm/lora/peft_helper.py`` ``PEFTHelper``: ``r``, ``lora_alpha`` and ``target_modules`` are
  required; ``r > 0`` and every ``rank_pattern`` value is a positive integer (``__post_init__``);
  ``validate_legal`` rejects DoRA, ``lora_bias``, ``modules_to_save`` other than
  "classifier"/"score", string inits other than gaussian/eva/orthogonal/mica/lora_ga (PiSSA, OLoRA,
  CorDA, LoftQ), aLoRA, ``layer_replication``, BD-LoRA, QALoRA, ``bias != "none"``, and
  ``max(r, *rank_pattern.values()) > max_lora_rank``.

This module imports neither vLLM nor PEFT.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .adapter_config import (
    REQUIRED_FIELDS,
    SERVABLE_MODULES_TO_SAVE,
    SUPPORTED_STRING_INITS,
    adapter_problems,
    load_lora_config,
)
from .architectures import (
    LM_HEAD_LORA_MAX_VOCAB,
    VLLM_ARCHITECTURES,
    VLLMArchitecture,
    architecture_problems,
    vllm_architecture,
)
from .engine import LEGAL_MAX_LORA_RANKS, LORA_DTYPES, engine_problems, smallest_legal_max_lora_rank
from .memory import vllm_lora_memory_bytes
from .problems import VLLMLoRAError, VLLMProblem
from .weights import read_adapter_weights, weight_problems

__all__ = [
    "LEGAL_MAX_LORA_RANKS",
    "LM_HEAD_LORA_MAX_VOCAB",
    "LORA_DTYPES",
    "REQUIRED_FIELDS",
    "SERVABLE_MODULES_TO_SAVE",
    "SUPPORTED_STRING_INITS",
    "VLLM_ARCHITECTURES",
    "VLLMArchitecture",
    "VLLMLoRAError",
    "VLLMProblem",
    "check_vllm_lora",
    "load_lora_config",
    "read_adapter_weights",
    "smallest_legal_max_lora_rank",
    "validate_vllm_lora",
    "vllm_architecture",
    "vllm_lora_memory_bytes",
]


def validate_vllm_lora(
    lora: Any,
    *,
    max_lora_rank: Any,
    max_loras: Any = 1,
    max_cpu_loras: Any = None,
    lora_dtype: Any = "auto",
    model_config: Any = None,
    weights: Mapping[str, Any] | None = None,
    enable_mixed_moe_lora_format: bool = False,
) -> list[VLLMProblem]:
    """Every reason vLLM 0.33 would refuse ``lora`` at these engine settings; empty when it would load it.

    ``lora`` is a PEFT ``LoraConfig``, a dict, a path to ``adapter_config.json`` or an adapter
    directory. For a directory the saved weight names in ``adapter_model.safetensors`` are checked
    too (``vllm/lora/utils.py:180-242``: only LoRA factors load; trainable-token deltas, DoRA
    magnitudes, biases, ``modules_to_save`` copies and full embeddings are refused). ``weights``
    (name -> shape, as PEFT's ``get_peft_model_state_dict`` names them) gives them directly.
    ``model_config`` (the base model's config, dict, ``config.json`` or its directory) adds the
    rules of vLLM's implementation of that architecture (``VLLM_ARCHITECTURES``): which modules
    may carry LoRA, the embedding vocabulary, MoE expert formats, the lm_head vocabulary limit;
    without saved weights the adapter is then built on the meta device by PEFT to know its weights.
    ``enable_mixed_moe_lora_format``: the engine flag that lets fused 3-D expert LoRA load (with
    ``LoRARequest(is_3d_lora_weight=True)``).

    Raises:
        FileNotFoundError, ValueError, TypeError: the adapter or model config cannot be read.
    """
    config = load_lora_config(lora)
    problems = engine_problems(max_lora_rank, max_loras, max_cpu_loras, lora_dtype) + adapter_problems(
        config, max_lora_rank
    )
    where = str(lora) if isinstance(lora, (str, os.PathLike)) else "the adapter"
    if weights is None and isinstance(lora, (str, os.PathLike)) and Path(lora).is_dir():
        weights = read_adapter_weights(lora)
        if weights is None and not any((Path(lora) / f).is_file() for f in ("adapter_model.bin", "adapter_model.pt")):
            problems.append(  # vllm/lora/lora_model.py:316
                VLLMProblem(
                    "no_tensors",
                    f"{lora} doesn't contain tensors (no adapter_model.safetensors, .bin or .pt).",
                    "save the adapter with model.save_pretrained(...) into this directory.",
                )
            )
    if weights is None and model_config is not None and not any(p.rule == "required_fields" for p in problems):
        from ..lora.shapes import adapter_weight_shapes

        weights = adapter_weight_shapes(config, model_config)
    if weights is None and config.get("trainable_token_indices"):
        problems.append(
            VLLMProblem(
                "trainable_token_indices",
                "trainable_token_indices (new-token training) saves trainable_tokens_delta weights, which vLLM 0.33 "
                "refuses as 'unsupported LoRA weight' (vLLM issue #36501).",
                "train without trainable_token_indices, or merge the adapter and serve the merged model.",
            )
        )
    if weights is not None:
        problems += weight_problems(weights, config, model_config, where, enable_mixed_moe_lora_format)
    if model_config is not None:
        problems += architecture_problems(model_config)
    return problems


def check_vllm_lora(lora: Any, *, max_lora_rank: Any, **engine: Any) -> None:
    """Strict ``validate_vllm_lora``: raise one ``VLLMLoRAError`` listing every problem."""
    problems = validate_vllm_lora(lora, max_lora_rank=max_lora_rank, **engine)
    if problems:
        raise VLLMLoRAError(problems)
