"""The base architecture's LoRA rules: which modules vLLM wraps, packs or treats as embeddings."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .problems import VLLMProblem

__all__ = [
    "LM_HEAD_LORA_MAX_VOCAB",
    "VLLM_ARCHITECTURES",
    "VLLMArchitecture",
    "architecture_problems",
    "config_value",
    "expected_modules",
    "model_config_values",
    "moe_layers",
    "show_expected",
    "text_config",
    "vllm_architecture",
]


def config_value(config: Any, name: str, default: Any = None) -> Any:
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)
    return default if value is None else value


_DENSE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_EMBEDDINGS = frozenset({"embed_tokens", "lm_head"})
_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
#: vLLM's ``LogitsProcessorWithLoRA.create_lora_weights`` limit (``vllm/lora/layers/logits_processor.py:90-92``).
LM_HEAD_LORA_MAX_VOCAB = 258048


@dataclass(frozen=True)
class VLLMArchitecture:
    """What vLLM 0.33's implementation of one architecture accepts in a LoRA adapter.

    ``modules``: the last name component a LoRA weight's module may have (vLLM's supported LoRA
    modules, packed ones replaced by their parts: ``lora/worker_manager.py:108-118``);
    ``embeddings``: ``embed_tokens``/``lm_head`` are in the class's ``embedding_modules`` (LoRA on them
    loads, and vLLM allocates their buffers); ``moe``: fused experts (``FusedMoE``, 2-D LoRA wrapper);
    ``source``: the vLLM file:line the rule is read from.
    """

    name: str
    modules: frozenset[str]
    embeddings: bool
    source: str
    moe: bool = False
    fused_phi3: bool = False


VLLM_ARCHITECTURES: dict[str, VLLMArchitecture] = {
    a.name: a
    for a in (
        VLLMArchitecture("LlamaForCausalLM", _DENSE | _EMBEDDINGS, True, "model_executor/models/llama.py:475-482"),
        VLLMArchitecture("MistralForCausalLM", _DENSE, False, "model_executor/models/mistral.py:236-238"),
        VLLMArchitecture("Qwen2ForCausalLM", _DENSE, False, "model_executor/models/qwen2.py:458-465"),
        VLLMArchitecture("Qwen3ForCausalLM", _DENSE | _EMBEDDINGS, True, "model_executor/models/qwen3.py:284-291"),
        VLLMArchitecture(
            "Qwen3MoeForCausalLM",
            frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate", "experts"}) | _EMBEDDINGS,
            True,
            "model_executor/models/qwen3_moe.py:553-576",
            moe=True,
        ),
        VLLMArchitecture("Gemma2ForCausalLM", _DENSE, False, "model_executor/models/gemma2.py:316-330, 342-369"),
        VLLMArchitecture("Gemma3ForCausalLM", _DENSE, False, "model_executor/models/gemma3.py:367-379"),
        VLLMArchitecture(
            "Gemma3ForConditionalGeneration",
            _DENSE | {"out_proj", "fc1", "fc2"},
            False,
            "model_executor/models/gemma3_mm.py:500-525",
        ),
        VLLMArchitecture(
            "Phi3ForCausalLM",
            frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}) | _EMBEDDINGS,
            True,
            "model_executor/models/phi3.py:10-18",
            fused_phi3=True,
        ),
    )
}
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "phi3": "Phi3ForCausalLM",
}


def model_config_values(model_config: Any) -> Any:
    if isinstance(model_config, (str, os.PathLike)):
        path = Path(model_config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no model config at {path}: pass the base model's config.json or its directory")
        return json.loads(path.read_text())
    return model_config


def text_config(model_config: Any) -> Any:
    text = config_value(model_config, "text_config")
    return text if text is not None and not isinstance(text, (str, int, float)) else model_config


def vllm_architecture(model_config: Any) -> VLLMArchitecture | None:
    """vLLM 0.33's rules for the base model of ``model_config`` (a config object, dict, config.json or its
    directory): from ``architectures[0]`` (how vLLM's registry picks the class), else ``model_type``;
    None for an architecture outside the table (its module rules are then not checked)."""
    config = model_config_values(model_config)
    for name in config_value(config, "architectures", None) or ():
        if name in VLLM_ARCHITECTURES:
            return VLLM_ARCHITECTURES[name]
    name = _MODEL_TYPES.get(str(config_value(config, "model_type", "")))
    if name is None or config_value(config, "architectures", None):
        return None
    return VLLM_ARCHITECTURES[name]


def moe_layers(config: Any) -> tuple[int, int]:
    """(sparse, dense) decoder layers of a Qwen3-MoE config, as ``qwen3_moe.py:385-392`` decides."""
    layers = int(config_value(config, "num_hidden_layers"))
    experts = int(config_value(config, "num_experts", 0))
    step = int(config_value(config, "decoder_sparse_step", 1))
    mlp_only = set(config_value(config, "mlp_only_layers", []) or [])
    sparse = sum(1 for i in range(layers) if i not in mlp_only and experts > 0 and (i + 1) % step == 0)
    return sparse, layers - sparse


def expected_modules(arch: VLLMArchitecture, config: Any) -> frozenset[str]:
    if not arch.moe:
        return arch.modules
    modules = set(arch.modules)
    experts = int(config_value(config, "num_experts", 0))
    modules |= {f"experts.{i}.{p}" for i in range(experts) for p in _PROJECTIONS}  # lora/utils.py:424-430
    if moe_layers(config)[1]:  # a dense Qwen3MoeMLP exists: down_proj, and gate_up_proj unpacked only
        # when mlp_only_layers is set (qwen3_moe.py:575-576)
        modules |= {"down_proj"} | (
            {"gate_proj", "up_proj"} if config_value(config, "mlp_only_layers", []) else {"gate_up_proj"}
        )
    return frozenset(modules)


def show_expected(modules: frozenset[str]) -> str:
    plain = sorted(m for m in modules if not m.startswith("experts."))
    if any(m.startswith("experts.") for m in modules):
        plain.append("experts.<i>.{gate_proj,up_proj,down_proj}")
    return "{" + ", ".join(repr(m) for m in plain) + "}"


def architecture_problems(model_config: Any) -> list[VLLMProblem]:
    arch = vllm_architecture(model_config)
    if arch is None or not arch.embeddings:
        return []
    vocab = config_value(text_config(model_config_values(model_config)), "vocab_size")
    if vocab and int(vocab) > LM_HEAD_LORA_MAX_VOCAB:  # vllm/lora/layers/logits_processor.py:90-92
        return [
            VLLMProblem(
                "lm_head_vocab",
                f"When using LoRA, vocab size must be <= {LM_HEAD_LORA_MAX_VOCAB} (the base model has {vocab}; "
                f"vLLM wraps {arch.name}'s lm_head for LoRA at engine start).",
                "start vLLM with --lora-target-modules that leaves out lm_head.",
            )
        ]
    return []
