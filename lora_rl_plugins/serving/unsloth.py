"""Unsloth ``fast_inference`` LoRA checks that need no Unsloth (Unsloth 2026.10.9, vLLM 0.32-0.34).

Unsloth loads vLLM with ``max_lora_rank`` rounded up to a legal vLLM value
(``unsloth_zoo.vllm_utils.determine_max_lora_rank``), does not check r against it at
``get_peft_model``, and the mismatch surfaces at the first generation ("LoRA rank 32 is greater
than max_lora_rank 16", unsloth issue #2097). These functions make that check up front, on the
config Unsloth builds: on a mixture-of-experts model ``FastLanguageModel.get_peft_model`` adds
``target_parameters`` on the fused experts (``unsloth/models/_utils.py:get_moe_target_parameters``),
and PEFT then gives a fused ``gate_up_proj`` rank 2r through ``rank_pattern``
(``peft/utils/transformers_weight_conversion.py:_convert_peft_config_moe``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .vllm import (
    LEGAL_MAX_LORA_RANKS,
    VLLMLoRAError,
    VLLMProblem,
    load_lora_config,
    smallest_legal_max_lora_rank,
    vllm_lora_verdict,
)

__all__ = [
    "UNSLOTH_DEFAULT_TARGET_MODULES",
    "check_unsloth_lora",
    "peft_fused_expert_patterns",
    "unsloth_engine_rank",
    "unsloth_lora_config",
    "unsloth_moe_target_parameters",
]

#: ``unsloth/models/_utils.py:_MOE_BROAD_MLP_TARGETS``: target names that reach MoE expert parameters.
_MOE_BROAD_MLP_TARGETS = frozenset(("gate_proj", "up_proj", "down_proj", "gate_up_proj"))

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


def _config_get(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def _expert_count(config: Any) -> int:
    """``unsloth/models/_utils.py:is_moe_model``: num_experts, n_routed_experts or num_local_experts (or the
    text config's)."""
    for source in (config, _config_get(config, "text_config")):
        if source is None:
            continue
        for name in ("num_experts", "n_routed_experts", "num_local_experts"):
            value = _config_get(source, name)
            if value is not None:
                return int(value)
    return 0


def _moe_target_set(target_modules: Any) -> set[str]:
    """The MLP projections ``target_modules`` asks for (``_utils.py:get_moe_target_parameters``'s target_set)."""
    if isinstance(target_modules, str):  # _moe_target_set_from_string, its common cases
        if target_modules in _MOE_BROAD_MLP_TARGETS:
            return {target_modules}
        is_regex = re.search(r"[*+?()[\]{}|\\^$]", target_modules) is not None
        mlp_path = any(tag in target_modules for tag in ("mlp", "ffn", "feed_forward", "experts"))
        return {n for n in _MOE_BROAD_MLP_TARGETS if n in target_modules} if is_regex and mlp_path else set()
    return {t for t in target_modules or () if isinstance(t, str) and "." not in t and t in _MOE_BROAD_MLP_TARGETS}


def unsloth_moe_target_parameters(
    parameter_names: Iterable[str], model_config: Any, target_modules: Any
) -> list[str] | None:
    """The ``target_parameters`` ``FastLanguageModel.get_peft_model`` adds on a mixture-of-experts model.

    As ``unsloth/models/_utils.py:get_moe_target_parameters`` (Unsloth 2026.10.9): None for a dense
    model; else the fused expert parameters the targets reach, under ``mlp.experts.*`` (or
    ``experts.*``): ``gate_up_proj`` for gate_proj/up_proj/gate_up_proj (the unfused ``gate_proj``/
    ``up_proj`` where the model has no fused one, as NemotronH), ``down_proj`` for down_proj.
    ``parameter_names``: ``name for name, _ in model.named_parameters()``.
    """
    if _expert_count(model_config) <= 0:
        return None
    names = list(parameter_names)
    targets = _moe_target_set(target_modules)

    def resolve(leaf: str) -> str | None:  # _resolve_moe_parameter_name + _moe_parameter_exists
        for candidate in (f"mlp.experts.{leaf}", f"experts.{leaf}"):
            if any(n == candidate or n.endswith("." + candidate) for n in names):
                return candidate
        return None

    found: list[str] = []
    if targets & {"gate_proj", "up_proj", "gate_up_proj"}:
        fused = resolve("gate_up_proj")
        if fused:
            found.append(fused)
        else:
            wanted = [leaf for leaf in ("gate_proj", "up_proj") if targets & {leaf, "gate_up_proj"}]
            found += [name for name in map(resolve, wanted) if name]
    if "down_proj" in targets:
        down = resolve("down_proj")
        if down:
            found.append(down)
    return found or None


def peft_fused_expert_patterns(model_type: str, target_modules: Any, r: int, lora_alpha: float) -> dict[str, Any]:
    """The ``rank_pattern``/``alpha_pattern`` PEFT adds when targets fuse into one expert parameter.

    ``peft/utils/transformers_weight_conversion.py:_convert_peft_config_moe`` (PEFT 0.21): for a model
    whose transformers v5 conversion fuses experts (Qwen2/3-MoE: gate_proj + up_proj -> gate_up_proj;
    Mixtral: w1 + w3), targeting all the fused parts sets ``rank_pattern[".*\\.gate_up_proj"] = r · parts``
    and the alpha alike. Read from PEFT's own tables when PEFT is installed; {} otherwise or for other
    models.
    """
    try:
        from peft.utils.transformers_weight_conversion import (  # type: ignore[attr-defined]
            _MODEL_TO_CONVERSION_PATTERN,
            _MOE_FUSED_TARGETS,
        )
    except ImportError:
        return {}
    fused_targets = _MOE_FUSED_TARGETS.get(_MODEL_TO_CONVERSION_PATTERN.get(model_type, ""), {})
    listed = [target_modules] if isinstance(target_modules, str) else list(target_modules or ())
    patterns: dict[str, dict[str, Any]] = {}
    for new_name, parts in fused_targets.items():
        present = {p for p in parts if any(t == p or str(t).endswith("." + p) for t in listed)}
        if len(parts) > 1 and len(present) == len(parts):
            key = rf".*\.{re.escape(new_name)}"
            patterns.setdefault("rank_pattern", {})[key] = r * len(parts)
            patterns.setdefault("alpha_pattern", {})[key] = lora_alpha * len(parts)
    return patterns


def unsloth_lora_config(r: int, *, model: Any = None, **get_peft_model_kwargs: Any) -> dict[str, Any]:
    """The LoRA config ``FastLanguageModel.get_peft_model(model, r=r, **kwargs)`` will create, as a dict.

    With ``model`` (the model ``get_peft_model`` gets; only its ``config`` and parameter names are read),
    a mixture-of-experts model gets Unsloth's ``target_parameters`` and PEFT's fused-expert
    ``rank_pattern`` (``unsloth_moe_target_parameters``, ``peft_fused_expert_patterns``).
    """
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
        "target_parameters",
    ):
        if name in kwargs:
            config[name] = kwargs[name]
    if model is not None:
        _add_moe(config, model, kwargs.get("target_modules", UNSLOTH_DEFAULT_TARGET_MODULES))
    return config


def _add_moe(config: dict[str, Any], model: Any, target_modules: Any) -> None:
    model_config = getattr(model, "config", None)
    if model_config is None:
        return
    if config.get("target_parameters") is None:  # llama.py:FastLlamaModel.get_peft_model
        parameters = unsloth_moe_target_parameters(
            (name for name, _ in model.named_parameters()), model_config, target_modules
        )
        if parameters:
            config["target_parameters"] = parameters
    text = getattr(model_config, "text_config", None) or model_config
    patterns = peft_fused_expert_patterns(
        str(getattr(text, "model_type", "")), target_modules, config["r"], config["lora_alpha"]
    )
    for name, values in patterns.items():
        config[name] = {**values, **(config.get(name) or {})}


def check_unsloth_lora(lora: Any, *, engine_max_lora_rank: int) -> None:
    """Raise a ``VLLMLoRAError`` with Unsloth advice when the engine would refuse ``lora``."""
    config = load_lora_config(lora)
    # the config alone (no base model): the rules of vLLM's engine and PEFTHelper, which Unsloth's engine applies
    problems = vllm_lora_verdict(config, max_lora_rank=engine_max_lora_rank).problems
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
