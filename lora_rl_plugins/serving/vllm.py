"""vLLM's LoRA rules (vLLM 0.32, 0.33, 0.34), checked before vLLM or Unsloth fail deep inside generation.

The rules are vLLM's own, read from its wheels (the same in 0.32, 0.33 and 0.34 unless noted):

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
* per base architecture (``architectures``, ``weights``): ``data/vllm_rules_<version>.json``, written
  by ``scripts/vllm_rules.py`` from each wheel: LoRA support (0.32 refuses at model load "<class>
  does not support LoRA yet.", 0.33+ at engine config "LoRA is not supported for <arch> ..."),
  the module names vLLM wraps, packs and treats as embeddings, fused-MoE experts (3-D or 2-D LoRA),
  and, from 0.34, layers named like a LoRA layer that vLLM does not wrap ("<module> (not a LoRA
  layer)"; 0.32 and 0.33 load the adapter and ignore that LoRA).

This module imports neither vLLM nor PEFT.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
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
    SUPPORTED_VLLM_VERSIONS,
    VLLM_ARCHITECTURES,
    VLLMArchitecture,
    architecture_problems,
    lora_support_problem,
    resolve_vllm_version,
    vllm_architecture,
)
from .base_model import find_base_model_config
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
    "SUPPORTED_VLLM_VERSIONS",
    "VLLM_ARCHITECTURES",
    "VLLMArchitecture",
    "VLLMLoRAError",
    "VLLMProblem",
    "VLLMUncheckedWarning",
    "VLLMVerdict",
    "check_vllm_lora",
    "load_lora_config",
    "read_adapter_weights",
    "smallest_legal_max_lora_rank",
    "validate_vllm_lora",
    "vllm_architecture",
    "vllm_lora_memory_bytes",
    "vllm_lora_verdict",
]


class VLLMUncheckedWarning(UserWarning):
    """The base model was not found: vLLM's module rules for its architecture were not checked."""


@dataclass(frozen=True)
class VLLMVerdict:
    """What the check found: ``problems`` (vLLM would refuse when not empty), the vLLM release whose rules were
    applied, the base model config used (None: not found) and whether the architecture's module rules were checked.

    ``status``: "refused" (problems), "ok" (every rule checked, none broken) or "partial" (no problem in the
    rules that could be checked, but the base model's module rules were not: ``note`` says why).
    ``weights_checked``: which weight names were checked: "saved" (the adapter's adapter_model.safetensors),
    "given" (``weights=``), "built" (the weights PEFT builds for this config on the base model), "" (none: only
    the engine settings and the adapter config were checked).
    """

    problems: list[VLLMProblem]
    vllm_version: str
    model_config: Any
    module_rules_checked: bool
    note: str = ""
    weights_checked: str = ""

    @property
    def status(self) -> str:
        if self.problems:
            return "refused"
        return "ok" if self.module_rules_checked else "partial"


def _saved_weights(lora: Any, problems: list[VLLMProblem]) -> Mapping[str, Any] | None:
    if not (isinstance(lora, (str, os.PathLike)) and Path(lora).is_dir()):
        return None
    weights = read_adapter_weights(lora)
    if weights is None and not any((Path(lora) / f).is_file() for f in ("adapter_model.bin", "adapter_model.pt")):
        problems.append(  # vllm/lora/lora_model.py:LoRAModel.from_local_checkpoint
            VLLMProblem(
                "no_tensors",
                f"{lora} doesn't contain tensors (no adapter_model.safetensors, .bin or .pt).",
                "save the adapter with model.save_pretrained(...) into this directory.",
            )
        )
    return weights


def _base_model(lora: Any, config: Mapping[str, Any], model_config: Any) -> tuple[Any, str]:
    if model_config is not None:
        return model_config, ""
    adapter_dir = None
    if isinstance(lora, (str, os.PathLike)):
        adapter_dir = Path(lora) if Path(lora).is_dir() else Path(lora).parent
    found, why = find_base_model_config(config, adapter_dir)
    return found, why


def vllm_lora_verdict(
    lora: Any,
    *,
    max_lora_rank: Any,
    max_loras: Any = 1,
    max_cpu_loras: Any = None,
    lora_dtype: Any = "auto",
    model_config: Any = None,
    weights: Mapping[str, Any] | None = None,
    enable_mixed_moe_lora_format: bool = False,
    vllm_version: str | None = None,
) -> VLLMVerdict:
    """``validate_vllm_lora``'s problems with what was checked: the vLLM release and the base model used.

    Without ``model_config`` the base model is read from the adapter's ``base_model_name_or_path``
    (``serving.base_model.find_base_model_config``: a local directory, or the Hugging Face cache offline).

    Raises:
        FileNotFoundError, ValueError, TypeError: the adapter or model config cannot be read, or
            ``vllm_version`` has no shipped rules.
    """
    version = resolve_vllm_version(vllm_version)
    config = load_lora_config(lora)
    problems = engine_problems(max_lora_rank, max_loras, max_cpu_loras, lora_dtype) + adapter_problems(
        config, max_lora_rank
    )
    where = str(lora) if isinstance(lora, (str, os.PathLike)) else "the adapter"
    base, note = _base_model(lora, config, model_config)
    arch = vllm_architecture(base, version) if base is not None else None
    if base is not None and arch is None:
        note = f"vLLM {version} does not register this base architecture (its module rules are not checked)"
    elif arch is not None and arch.transformers_backend:
        note = f"vLLM {version} serves {arch.name} with its Transformers backend, whose LoRA modules are not listed"
    if arch is not None and not arch.supports_lora:  # vLLM refuses at engine start: no adapter is read
        model = config.get("base_model_name_or_path") or str(base)
        return VLLMVerdict([*problems, lora_support_problem(arch, model)], version, base, True, note)
    source = "given" if weights is not None else ""
    if weights is None:
        weights = _saved_weights(lora, problems)
        source = "saved" if weights is not None else ""
    if weights is None and base is not None and not any(p.rule == "required_fields" for p in problems):
        from ..lora.shapes import adapter_weight_shapes

        weights = adapter_weight_shapes(config, base)
        source = "built" if weights is not None else ""
    if weights is None and config.get("trainable_token_indices"):
        problems.append(
            VLLMProblem(
                "trainable_token_indices",
                "trainable_token_indices (new-token training) saves trainable_tokens_delta weights, which vLLM "
                f"{version} refuses as 'unsupported LoRA weight' (vLLM issue #36501).",
                "train without trainable_token_indices, or merge the adapter and serve the merged model.",
            )
        )
    if weights is not None:
        problems += weight_problems(weights, config, base, where, enable_mixed_moe_lora_format, version)
    if base is not None:
        model = config.get("base_model_name_or_path") or str(base)
        problems += architecture_problems(base, version, model=model)
    checked = arch is not None and (not arch.supports_lora or not arch.transformers_backend)
    return VLLMVerdict(problems, version, base, checked, note, source)


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
    vllm_version: str | None = None,
) -> list[VLLMProblem]:
    """Every reason vLLM would refuse ``lora`` at these engine settings; empty when it would load it.

    ``lora`` is a PEFT ``LoraConfig``, a dict, a path to ``adapter_config.json`` or an adapter
    directory. For a directory the saved weight names in ``adapter_model.safetensors`` are checked
    too (``vllm/lora/utils.py:parse_fine_tuned_lora_name``: only LoRA factors load; trainable-token
    deltas, DoRA magnitudes, biases, ``modules_to_save`` copies and full embeddings are refused).
    ``weights`` (name -> shape, as PEFT's ``get_peft_model_state_dict`` names them) gives them directly.
    ``model_config`` (the base model's config, dict, ``config.json`` or its directory; default: found
    from the adapter's ``base_model_name_or_path``) adds the rules of vLLM's implementation of that
    architecture (``serving/data/vllm_rules_<version>.json``): LoRA support, which modules may carry
    LoRA, the embedding vocabulary, MoE expert formats, the lm_head vocabulary limit; without saved
    weights the adapter is then built on the meta device by PEFT to know its weights.
    ``enable_mixed_moe_lora_format``: the engine flag that lets fused 3-D expert LoRA load on a 2-D MoE
    wrapper (with ``LoRARequest(is_3d_lora_weight=True)``). ``vllm_version``: the release whose rules
    apply ("0.32.0"; default: the installed vLLM's, else the newest in ``SUPPORTED_VLLM_VERSIONS``).

    Warns ``VLLMUncheckedWarning`` when the base model cannot be found (its module rules were not
    checked: an empty list then means "no problem found in what could be checked").

    Raises:
        FileNotFoundError, ValueError, TypeError: the adapter or model config cannot be read, or
            ``vllm_version`` has no shipped rules.
    """
    verdict = vllm_lora_verdict(
        lora,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        lora_dtype=lora_dtype,
        model_config=model_config,
        weights=weights,
        enable_mixed_moe_lora_format=enable_mixed_moe_lora_format,
        vllm_version=vllm_version,
    )
    if verdict.status == "partial":
        warnings.warn(
            f"vLLM's module rules for the base model were not checked: {verdict.note}; pass model_config= "
            "(the base model's config.json)",
            VLLMUncheckedWarning,
            stacklevel=2,
        )
    return verdict.problems


def check_vllm_lora(lora: Any, *, max_lora_rank: Any, **engine: Any) -> None:
    """Strict ``validate_vllm_lora``: raise one ``VLLMLoRAError`` listing every problem."""
    problems = validate_vllm_lora(lora, max_lora_rank=max_lora_rank, **engine)
    if problems:
        raise VLLMLoRAError(problems)
