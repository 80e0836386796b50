"""The saved adapter weights against vLLM's LoRA loader (``vllm/lora/utils.py``, ``lora_model.py``, MoE experts)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .architectures import (
    VLLMArchitecture,
    config_value,
    expected_modules,
    expert_count,
    model_config_values,
    resolve_vllm_version,
    show_expected,
    text_config,
    vllm_architecture,
)
from .problems import VLLMProblem

__all__ = ["read_adapter_weights", "weight_problems"]

_EMBEDDINGS = frozenset({"embed_tokens", "lm_head"})
_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def read_adapter_weights(directory: Any) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes of ``adapter_model.safetensors`` in ``directory`` (header only, no tensor data);
    None where there is no such file. Needs the ``safetensors`` package.

    Raises:
        ValueError: the file is not a readable safetensors file.
    """
    path = Path(directory) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 - a safe_open handle, not a dict
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ValueError(f"{path} is not a readable safetensors file ({error}); re-save the adapter") from None


_REFUSED_WEIGHTS: tuple[tuple[str, str, str], ...] = (
    (
        r"trainable_tokens_(delta|original)$",
        "PEFT's trainable_token_indices (new-token training) saves trainable_tokens_delta, which vLLM 0.32-0.34 cannot "
        "load (vLLM issue #36501)",
        "train without trainable_token_indices, or merge the adapter and serve the merged model",
    ),
    (r"lora_magnitude_vector", "DoRA magnitude", "train with use_dora=False, or merge"),
    (r"\.lora_[AB]\.bias$", "LoRA bias (lora_bias=True)", "train with lora_bias=False"),
    (r"\.modules_to_save\.", "a modules_to_save copy", "train without modules_to_save, or merge"),
    (
        r"(^|\.)(embed_tokens|lm_head|wte|embed_in|embed_out)\.weight$",
        "a full embedding or output layer (saved when the vocabulary was resized or the layer is trained in full)",
        "keep the base vocabulary (no resize_token_embeddings) and train the layer with LoRA only, or merge",
    ),
    (r"\.base_layer\.(weight|bias)$", "a base-layer weight", "save the adapter without base weights"),
    (r"\.bias$", "a bias (bias='all'/'lora_only')", 'train with bias="none"'),
)


def _parse_weight(key: str) -> tuple[str, str] | None:
    """(module, part) as ``parse_fine_tuned_lora_name`` (vllm/lora/utils.py:180-233) reads ``key``; None = refused.

    part is "A"/"B" (LoRA factors) or "full" (a score/classifier module).
    """
    name = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
    parts = name.split(".")
    if parts[-1] in ("weight", "bias") and len(parts) >= 2:
        if parts[-2] in ("lora_A", "lora_B") and parts[-1] == "weight":
            return ".".join(parts[:-2]), parts[-2][-1]
        if parts[-2] in ("score", "classifier"):
            return parts[-2], "full"
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[:-1]), parts[-1][-1]
    return None


def _parse_weights(weights: Mapping[str, Any], version: str) -> tuple[dict[str, tuple[str, str]], list[VLLMProblem]]:
    """The LoRA weights vLLM reads (key -> (module, part)) and the refusals of those it cannot read."""
    import re

    problems: list[VLLMProblem] = []
    parsed: dict[str, tuple[str, str]] = {}
    for key in weights:
        # vllm/lora/utils.py:is_base_embedding_weights: PEFT's copies of the base embedding weights are skipped
        if key.endswith((".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")):
            continue
        result = _parse_weight(key)
        if result is None:  # vllm/lora/utils.py:parse_fine_tuned_lora_name raises
            what, fix = "a weight that is not a LoRA factor", "save a plain LoRA adapter (lora_A/lora_B only)"
            for pattern, description, remedy in _REFUSED_WEIGHTS:
                if re.search(pattern, key):
                    what, fix = description, remedy
                    break
            problems.append(
                VLLMProblem(
                    "unsupported_weight", f"{key} is unsupported LoRA weight (vLLM {version}: {what}).", fix + "."
                )
            )
            continue
        parsed[key] = result
    return parsed, problems


def _vllm_module_name(module: str, arch: VLLMArchitecture) -> str | None:
    """The module name after the model's ``hf_to_vllm_mapper`` renames (``WeightsMapper._map_name``); None = dropped."""
    mapper = arch.weights_mapper
    for old, new in (mapper.get("orig_to_new_substr") or {}).items():
        if old in module:
            if new is None:
                return None
            module = module.replace(old, new)
    for old, new in (mapper.get("orig_to_new_prefix") or {}).items():
        if module.startswith(old):
            if new is None:
                return None
            module = new + module[len(old) :]
    for old, new in (mapper.get("orig_to_new_suffix") or {}).items():
        if module.endswith(old):
            if new is None:
                return None
            module = module[: -len(old)] + new
    return module


def _embedding_vocab_problems(
    parsed: Mapping[str, tuple[str, str]], weights: Mapping[str, Any], vocab: Any
) -> list[VLLMProblem]:
    problems = []
    for key, (_module, part) in parsed.items():  # vllm/lora/lora_model.py:LoRAModel.from_lora_tensors
        shape = weights[key]
        if part == "A" and "lora_embedding_A" in key and vocab and shape and len(shape) == 2 and shape[1] != vocab:
            problems.append(
                VLLMProblem(
                    "embedding_vocab",
                    f"The embedding LoRA size({shape[1]}) must be consistent with the base model's vocabulary "
                    f"size({vocab}).",
                    "serve it on the base model it was trained on (same vocabulary), without resized embeddings.",
                )
            )
    return problems


def _unexpected_modules(
    parsed: Mapping[str, tuple[str, str]], arch: VLLMArchitecture, expected: frozenset[str], modules_to_save: list[str]
) -> list[str]:
    """``check_unexpected_modules`` of ``vllm/lora/lora_model.py:LoRAModel.from_local_checkpoint``."""
    refuses_unwrapped = tuple(int(x) for x in arch.vllm_version.split(".")[:2]) >= (0, 34)
    unexpected: list[str] = []
    for key, (raw, part) in parsed.items():
        if part == "full" or "base_layer" in key:  # PEFT's experts.base_layer (3-D gate_up_proj) is skipped
            continue
        module = _vllm_module_name(raw, arch)
        if module is None or any(module.startswith(prefix) for prefix in arch.skip_prefixes):
            continue
        base = module.rsplit(".", 1)[-1]
        if ".experts" in module:
            if module[module.find(".experts") + 1 :] not in expected:
                unexpected.append(module)
        elif base not in expected and base not in modules_to_save:
            unexpected.append(module)
        elif refuses_unwrapped and any(module == u or module.endswith("." + u) for u in arch.unwrapped_modules):
            unexpected.append(f"{module} (not a LoRA layer)")  # 0.34: model_manager's unsupported_lora_modules
    return list(dict.fromkeys(unexpected))


def _target_modules_problem(
    unexpected: list[str], arch: VLLMArchitecture, expected: frozenset[str], where: str
) -> VLLMProblem:
    embeddings = any(m.split(" ")[0].rsplit(".", 1)[-1] in _EMBEDDINGS for m in unexpected)
    why = ""
    if embeddings and not arch.embeddings:
        gemma2 = ": Gemma-2 computes logits with the tied embedding and has no lm_head module"
        gemma2 = gemma2 if "Gemma2" in arch.name else ""
        why = f" ({arch.name} in vLLM {arch.vllm_version} has no LoRA on embed_tokens/lm_head{gemma2})"
    fused = " (vLLM's Phi-3 takes the fused qkv_proj and gate_up_proj)" if arch.fused_phi3 else ""
    return VLLMProblem(
        "target_modules",
        f"While loading {where}, expected target modules in {show_expected(expected)} but received "
        f"{unexpected}. Please verify that the loaded LoRA module is correct{why}{fused}.",
        f"train LoRA only on modules vLLM's {arch.name} supports ({arch.source}).",
    )


def weight_problems(
    weights: Mapping[str, Any],
    config: Mapping[str, Any],
    model_config: Any,
    where: str,
    enable_mixed_moe_lora_format: bool,
    vllm_version: str | None = None,
) -> list[VLLMProblem]:
    """Every refusal of vLLM's loader for these saved weights (name -> shape) on this base model (None: unknown)."""
    version = resolve_vllm_version(vllm_version)
    parsed, problems = _parse_weights(weights, version)
    arch = vllm_architecture(model_config, version) if model_config is not None else None
    full = sorted({module for module, part in parsed.values() if part == "full"})
    # vllm/lora/model_manager.py:_validate_classification_head_lora: a generative model has no classification
    # head; without the base model's config it cannot be told, so it is not flagged
    if full and arch is not None and not arch.classification_head:
        problems.append(
            VLLMProblem(
                "full_module",
                f"Cannot load full module {full[0]!r}: the model does not expose a unique classification head "
                "(vLLM loads score/classifier weights only into a classification/pooling model).",
                "serve a classification model, or train without modules_to_save.",
            )
        )
    if model_config is None:
        return problems
    text = text_config(model_config_values(model_config))
    problems += _embedding_vocab_problems(parsed, weights, config_value(text, "vocab_size"))
    if arch is None or not arch.supports_lora or arch.transformers_backend:
        return problems
    expected = expected_modules(arch, text)
    unexpected = _unexpected_modules(parsed, arch, expected, list(config.get("modules_to_save") or []))
    if unexpected:
        problems.append(_target_modules_problem(unexpected, arch, expected, where))
    if arch.moe:
        problems += moe_problems(parsed, weights, text, enable_mixed_moe_lora_format, arch)
    return problems


def _moe_layout(
    parsed: Mapping[str, tuple[str, str]], weights: Mapping[str, Any], projections: tuple[str, ...]
) -> tuple[dict[str, set[str]], dict[str, dict[tuple[int, str], Any]]]:
    """Fused 3-D expert LoRA by experts module ({"gate_up_proj", "experts"}) and per-expert 2-D ranks."""
    import re

    fused: dict[str, set[str]] = {}
    per_expert: dict[str, dict[tuple[int, str], Any]] = {}
    names = "|".join(map(re.escape, projections)) or "gate_proj|up_proj|down_proj"
    for key, (module, part) in parsed.items():
        if part != "A":
            continue
        match = re.match(r"(.*\.experts)(\.base_layer)?$", module)
        if match:  # PEFT target_parameters: experts.base_layer = gate_up_proj, experts = down_proj
            fused.setdefault(match.group(1), set()).add("gate_up_proj" if match.group(2) else "experts")
            continue
        match = re.match(rf"(.*\.experts)\.(\d+)\.({names})$", module)
        if match:
            shape = weights[key]
            per_expert.setdefault(match.group(1), {})[(int(match.group(2)), match.group(3))] = (
                shape[0] if shape else None
            )
    return fused, per_expert


def _fused_problems(fused: Mapping[str, set[str]], mixed: bool, arch: VLLMArchitecture) -> list[VLLMProblem]:
    problems = []
    if fused and not mixed and not arch.is_3d_moe_weight:  # vllm/lora/model_manager.py:_validate_moe_lora_format
        first = sorted(fused)[0]
        problems.append(
            VLLMProblem(
                "moe_3d_weights",
                f"LoRA adapter contains fused 3D MoE weights for {first!r}, but the model uses a 2D MoE LoRA wrapper. "
                "Start the engine with enable_mixed_moe_lora_format=True (--enable-mixed-moe-lora-format) and set "
                "is_3d_lora_weight=True on the LoRA request.",
                "start vLLM with --enable-mixed-moe-lora-format and send LoRARequest(..., is_3d_lora_weight=True) "
                "(pass enable_mixed_moe_lora_format=True here).",
            )
        )
    lone = sorted(m for m, kinds in fused.items() if len(kinds) == 1)
    if lone and mixed:  # vllm/lora/model_manager.py:_convert_3d_to_2d_moe_lora converts only a pair
        problems.append(
            VLLMProblem(
                "moe_3d_pair",
                f"{lone[0]} has LoRA on only one of gate_up_proj/down_proj; vLLM {arch.vllm_version} converts fused "
                "3D expert LoRA only when both are adapted (a lone one is read as down_proj).",
                'target both: target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"].',
            )
        )
    return problems


def moe_problems(
    parsed: Mapping[str, tuple[str, str]],
    weights: Mapping[str, Any],
    config: Any,
    mixed: bool,
    arch: VLLMArchitecture,
) -> list[VLLMProblem]:
    """Refusals of fused-MoE expert LoRA: 3-D tensors on a 2-D wrapper, a lone 3-D half, uneven experts."""
    projections = arch.expert_projections or _PROJECTIONS
    fused, per_expert = _moe_layout(parsed, weights, projections)
    problems = _fused_problems(fused, mixed, arch)
    experts = expert_count(config)
    for module, entries in sorted(per_expert.items()):  # vllm/lora/lora_weights.py:PackedLoRALayerWeights.pack_moe
        missing = [(i, p) for i in range(experts) for p in projections if (i, p) not in entries]
        if missing:
            problems.append(
                VLLMProblem(
                    "moe_experts_incomplete",
                    f"{module} has LoRA on some experts' projections but not on {len(missing)} of them (first: "
                    f"experts.{missing[0][0]}.{missing[0][1]}); vLLM {arch.vllm_version} needs "
                    f"{', '.join(projections)} of every expert of a layer (AssertionError in lora_weights.py).",
                    "adapt all projections of every expert, or none.",
                )
            )
        for projection in projections:
            ranks = {rank for (i, p), rank in entries.items() if p == projection and rank is not None}
            if len(ranks) > 1:
                problems.append(
                    VLLMProblem(
                        "moe_expert_ranks",
                        f"The experts of {module} have different LoRA ranks for the same projection, which is not "
                        f"supported ({projection}: ranks {sorted(ranks)}).",
                        "give every expert of a layer the same rank (no rank_pattern on single experts).",
                    )
                )
    return problems
