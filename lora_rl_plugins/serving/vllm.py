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

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LEGAL_MAX_LORA_RANKS",
    "LORA_DTYPES",
    "VLLMLoRAError",
    "VLLMProblem",
    "check_vllm_lora",
    "load_lora_config",
    "smallest_legal_max_lora_rank",
    "validate_vllm_lora",
    "vllm_lora_memory_bytes",
]

#: ``vllm.config.lora.MaxLoRARanks`` in vLLM 0.33.
LEGAL_MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: ``vllm.config.lora.LoRADType`` in vLLM 0.33.
LORA_DTYPES: tuple[str, ...] = ("auto", "float16", "bfloat16")
#: ``PEFTHelper._init_is_supported``: string inits that only set the initial weights.
SUPPORTED_STRING_INITS: tuple[str, ...] = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
#: ``PEFTHelper._validate_features``: the only modules_to_save vLLM serves (classification heads).
SERVABLE_MODULES_TO_SAVE: tuple[str, ...] = ("classifier", "score")
REQUIRED_FIELDS: tuple[str, ...] = ("r", "lora_alpha", "target_modules")


class VLLMLoRAError(ValueError):
    """vLLM would refuse this adapter or engine setting; ``problems`` lists every reason."""

    def __init__(self, problems: list[VLLMProblem], context: str = "vLLM would reject this LoRA setup") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{context} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")


@dataclass(frozen=True)
class VLLMProblem:
    """One reason vLLM would refuse: which rule, what is wrong, and how to fix it."""

    rule: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}"


def smallest_legal_max_lora_rank(rank: int) -> int | None:
    """The smallest legal vLLM ``max_lora_rank`` >= ``rank`` (None above 512).

    This is also how Unsloth rounds ``from_pretrained(max_lora_rank=...)`` for its vLLM engine
    (``unsloth_zoo.vllm_utils.determine_max_lora_rank``).
    """
    return next((legal for legal in LEGAL_MAX_LORA_RANKS if legal >= rank), None)


def load_lora_config(lora: Any) -> dict[str, Any]:
    """A LoRA config as a dict, from a PEFT ``LoraConfig``, a dict, ``adapter_config.json`` or its directory."""
    if isinstance(lora, Mapping):
        return dict(lora)
    if hasattr(lora, "to_dict"):
        return dict(lora.to_dict())
    if isinstance(lora, (str, os.PathLike)):
        path = Path(lora)
        if path.is_dir():
            path = path / "adapter_config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no adapter config at {path}: pass a PEFT adapter directory (it holds adapter_config.json, "
                "written by model.save_pretrained) or the path of adapter_config.json itself"
            )
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is not valid JSON ({error}); re-save the adapter with model.save_pretrained(...)"
            ) from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} holds a {type(loaded).__name__}, not a LoRA config object")
        return loaded
    raise TypeError(
        f"cannot read a LoRA config from {type(lora).__name__}: pass a peft.LoraConfig, a dict, "
        "an adapter directory or the path of its adapter_config.json"
    )


def _engine_problems(max_lora_rank: Any, max_loras: Any, max_cpu_loras: Any, lora_dtype: Any) -> list[VLLMProblem]:
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
    elif max_cpu_loras is not None and max_cpu_loras < max_loras:
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


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _adapter_problems(config: Mapping[str, Any], max_lora_rank: Any) -> list[VLLMProblem]:
    missing = [name for name in REQUIRED_FIELDS if name not in config]
    if missing:
        return [
            VLLMProblem(
                "required_fields",
                f"the adapter config lacks {', '.join(missing)} (vLLM: 'Missing required configuration fields').",
                "save the adapter with PEFT (model.save_pretrained) so adapter_config.json is complete.",
            )
        ]
    problems = []
    r = config["r"]
    if not (isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0):
        problems.append(VLLMProblem("rank_positive", f"LoRA rank r={r!r} must be a positive integer.", "set r >= 1."))
    rank_pattern = config.get("rank_pattern") or {}
    for key, rank in rank_pattern.items():
        if not _positive_int(rank):
            problems.append(
                VLLMProblem(
                    "rank_pattern_positive",
                    f"rank_pattern[{key!r}]={rank!r} must be a positive integer.",
                    "use a positive integer rank.",
                )
            )
    modules_to_save = config.get("modules_to_save") or []
    unsupported = [m for m in modules_to_save if m not in SERVABLE_MODULES_TO_SAVE]
    if unsupported:
        problems.append(
            VLLMProblem(
                "modules_to_save",
                f"vLLM serves modules_to_save only as ['classifier', 'score']; unsupported: {unsupported}.",
                "train without modules_to_save (or merge the adapter and serve the merged model).",
            )
        )
    features = (
        ("use_dora", "DoRA (use_dora=True) is not supported by vLLM.", "train with use_dora=False, or merge."),
        ("lora_bias", "LoRA bias (lora_bias=True) is not supported by vLLM.", "train with lora_bias=False."),
        ("alora_invocation_tokens", "Activated LoRA (aLoRA) is not supported by vLLM.", "train a plain LoRA."),
        ("layer_replication", "layer_replication is not supported by vLLM.", "train without layer_replication."),
        ("use_bdlora", "block-diagonal LoRA (BD-LoRA) is not supported by vLLM.", "train a plain LoRA."),
        ("use_qalora", "QALoRA (use_qalora=True) is not supported by vLLM.", "train a plain LoRA."),
    )
    for name, message, fix in features:
        if config.get(name):
            problems.append(VLLMProblem(name, message, fix))
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in SUPPORTED_STRING_INITS:
        problems.append(
            VLLMProblem(
                "init_lora_weights",
                f"init_lora_weights={init!r} (PiSSA, OLoRA, CorDA, LoftQ) changes the base weights when PEFT "
                "loads the adapter; vLLM does not support it.",
                "convert it to a regular LoRA with PEFT's path_initial_model_for_weight_conversion, or set "
                "init_lora_weights=True if the served base model already holds the modified weights.",
            )
        )
    ranks = [r, *rank_pattern.values()]
    numeric = [x for x in ranks if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if numeric and isinstance(max_lora_rank, int):
        largest = max(numeric)
        if largest > max_lora_rank:
            legal = smallest_legal_max_lora_rank(math.ceil(largest))
            where = "r" if largest == r else "rank_pattern"
            problems.append(
                VLLMProblem(
                    "rank_exceeds_max_lora_rank",
                    f"LoRA rank {largest} ({where}) is greater than max_lora_rank {max_lora_rank}.",
                    (f"start vLLM with max_lora_rank={legal}" if legal else "no legal max_lora_rank is that large")
                    + f", or train with r <= {max_lora_rank}.",
                )
            )
    if config.get("bias", "none") != "none":
        problems.append(
            VLLMProblem(
                "bias", f"adapter bias={config.get('bias')!r} is not supported by vLLM.", 'train with bias="none".'
            )
        )
    return problems


def validate_vllm_lora(
    lora: Any,
    *,
    max_lora_rank: Any,
    max_loras: Any = 1,
    max_cpu_loras: Any = None,
    lora_dtype: Any = "auto",
) -> list[VLLMProblem]:
    """Every reason vLLM 0.33 would refuse ``lora`` at these engine settings; empty when it would load it.

    ``lora`` is a PEFT ``LoraConfig``, a dict, a path to ``adapter_config.json`` or an adapter
    directory.
    """
    config = load_lora_config(lora)
    return _engine_problems(max_lora_rank, max_loras, max_cpu_loras, lora_dtype) + _adapter_problems(
        config, max_lora_rank
    )


def check_vllm_lora(lora: Any, *, max_lora_rank: Any, **engine: Any) -> None:
    """Strict ``validate_vllm_lora``: raise one ``VLLMLoRAError`` listing every problem."""
    problems = validate_vllm_lora(lora, max_lora_rank=max_lora_rank, **engine)
    if problems:
        raise VLLMLoRAError(problems)


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)
    return default if value is None else value


def vllm_lora_memory_bytes(
    model_config: Any,
    *,
    max_lora_rank: int,
    max_loras: int = 1,
    dtype_bytes: int = 2,
    include_embeddings: bool = True,
) -> int:
    """GPU memory vLLM pre-allocates for LoRA buffers (estimate; dense Llama-style model, TP 1).

    bytes ≈ dtype_bytes · max_loras · max_lora_rank · [L·(7H + 2Q + 2KV + 3I) + (V + H) + (H + V)]
    (docs/theory.md §5, from the buffer shapes in vLLM 0.33's ``vllm/lora/layers``: qkv/o_proj,
    gate_up/down_proj, embedding and lm_head). The rank actually trained does not change it.
    """
    hidden = int(_config_value(model_config, "hidden_size"))
    layers = int(_config_value(model_config, "num_hidden_layers"))
    heads = int(_config_value(model_config, "num_attention_heads"))
    kv_heads = int(_config_value(model_config, "num_key_value_heads", heads))
    head_dim = int(_config_value(model_config, "head_dim", hidden // heads))
    intermediate = int(_config_value(model_config, "intermediate_size"))
    vocab = int(_config_value(model_config, "vocab_size"))
    if _config_value(model_config, "num_experts") or _config_value(model_config, "num_local_experts"):
        raise ValueError("the estimate covers dense models; this config describes a mixture of experts")
    q, kv = heads * head_dim, kv_heads * head_dim
    per_rank = layers * (7 * hidden + 2 * q + 2 * kv + 3 * intermediate)
    if include_embeddings:
        per_rank += (vocab + hidden) + (hidden + vocab)
    return dtype_bytes * max_loras * max_lora_rank * per_rank
