"""The adapter config (``adapter_config.json``) against vLLM's ``PEFTHelper`` (``vllm/lora/peft_helper.py``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .engine import smallest_legal_max_lora_rank
from .problems import VLLMProblem

__all__ = [
    "REQUIRED_FIELDS",
    "SERVABLE_MODULES_TO_SAVE",
    "SUPPORTED_STRING_INITS",
    "adapter_problems",
    "load_lora_config",
]

#: ``PEFTHelper._init_is_supported``: string inits that only set the initial weights.
SUPPORTED_STRING_INITS: tuple[str, ...] = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
#: ``PEFTHelper._validate_features``: the only modules_to_save vLLM serves (classification heads).
SERVABLE_MODULES_TO_SAVE: tuple[str, ...] = ("classifier", "score")
REQUIRED_FIELDS: tuple[str, ...] = ("r", "lora_alpha", "target_modules")


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


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_FEATURES = (
    ("use_dora", "DoRA (use_dora=True) is not supported by vLLM.", "train with use_dora=False, or merge."),
    ("lora_bias", "LoRA bias (lora_bias=True) is not supported by vLLM.", "train with lora_bias=False."),
    ("alora_invocation_tokens", "Activated LoRA (aLoRA) is not supported by vLLM.", "train a plain LoRA."),
    ("layer_replication", "layer_replication is not supported by vLLM.", "train without layer_replication."),
    ("use_bdlora", "block-diagonal LoRA (BD-LoRA) is not supported by vLLM.", "train a plain LoRA."),
    ("use_qalora", "QALoRA (use_qalora=True) is not supported by vLLM.", "train a plain LoRA."),
)


def _rank_problems(r: Any, rank_pattern: Mapping[str, Any], max_lora_rank: Any) -> list[VLLMProblem]:
    """``PEFTHelper.__post_init__`` (positive ranks) and ``validate_legal`` (max rank <= max_lora_rank)."""
    problems = []
    if not (isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0):
        problems.append(VLLMProblem("rank_positive", f"LoRA rank r={r!r} must be a positive integer.", "set r >= 1."))
    for key, rank in rank_pattern.items():
        if not _positive_int(rank):
            problems.append(
                VLLMProblem(
                    "rank_pattern_positive",
                    f"rank_pattern[{key!r}]={rank!r} must be a positive integer.",
                    "use a positive integer rank.",
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
    return problems


def _feature_problems(config: Mapping[str, Any]) -> list[VLLMProblem]:
    """``PEFTHelper._validate_features``: modules_to_save, DoRA, biases, string inits and other PEFT variants."""
    problems = []
    unsupported = [m for m in config.get("modules_to_save") or [] if m not in SERVABLE_MODULES_TO_SAVE]
    if unsupported:
        problems.append(
            VLLMProblem(
                "modules_to_save",
                f"vLLM serves modules_to_save only as ['classifier', 'score']; unsupported: {unsupported}.",
                "train without modules_to_save (or merge the adapter and serve the merged model).",
            )
        )
    problems += [VLLMProblem(name, message, fix) for name, message, fix in _FEATURES if config.get(name)]
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
    return problems


def adapter_problems(config: Mapping[str, Any], max_lora_rank: Any) -> list[VLLMProblem]:
    """Every refusal of vLLM's ``PEFTHelper`` for this adapter config at this ``max_lora_rank``."""
    missing = [name for name in REQUIRED_FIELDS if name not in config]
    if missing:
        return [
            VLLMProblem(
                "required_fields",
                f"the adapter config lacks {', '.join(missing)} (vLLM: 'Missing required configuration fields').",
                "save the adapter with PEFT (model.save_pretrained) so adapter_config.json is complete.",
            )
        ]
    rank_pattern = config.get("rank_pattern") or {}
    rank = _rank_problems(config["r"], rank_pattern, max_lora_rank)
    exceeds = [p for p in rank if p.rule == "rank_exceeds_max_lora_rank"]  # listed after the features, as vLLM
    problems = [p for p in rank if p not in exceeds] + _feature_problems(config) + exceeds
    if config.get("bias", "none") != "none":
        problems.append(
            VLLMProblem(
                "bias", f"adapter bias={config.get('bias')!r} is not supported by vLLM.", 'train with bias="none".'
            )
        )
    return problems
