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
    "LM_HEAD_LORA_MAX_VOCAB",
    "LORA_DTYPES",
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
    # vllm/engine/arg_utils.py:2704-2706: 0, a negative value or None becomes None (= max_loras);
    # only a positive value below max_loras is refused (vllm/config/lora.py:121-127)
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
    problems = _engine_problems(max_lora_rank, max_loras, max_cpu_loras, lora_dtype) + _adapter_problems(
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
        problems += _weight_problems(weights, config, model_config, where, enable_mixed_moe_lora_format)
    if model_config is not None:
        problems += _architecture_problems(model_config)
    return problems


def check_vllm_lora(lora: Any, *, max_lora_rank: Any, **engine: Any) -> None:
    """Strict ``validate_vllm_lora``: raise one ``VLLMLoRAError`` listing every problem."""
    problems = validate_vllm_lora(lora, max_lora_rank=max_lora_rank, **engine)
    if problems:
        raise VLLMLoRAError(problems)


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)
    return default if value is None else value


# ---------------------------------------------------------------- the base architecture (vLLM 0.33 model files)
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


def _model_config(model_config: Any) -> Any:
    if isinstance(model_config, (str, os.PathLike)):
        path = Path(model_config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no model config at {path}: pass the base model's config.json or its directory")
        return json.loads(path.read_text())
    return model_config


def _text_config(model_config: Any) -> Any:
    text = _config_value(model_config, "text_config")
    return text if text is not None and not isinstance(text, (str, int, float)) else model_config


def vllm_architecture(model_config: Any) -> VLLMArchitecture | None:
    """vLLM 0.33's rules for the base model of ``model_config`` (a config object, dict, config.json or its
    directory): from ``architectures[0]`` (how vLLM's registry picks the class), else ``model_type``;
    None for an architecture outside the table (its module rules are then not checked)."""
    config = _model_config(model_config)
    for name in _config_value(config, "architectures", None) or ():
        if name in VLLM_ARCHITECTURES:
            return VLLM_ARCHITECTURES[name]
    name = _MODEL_TYPES.get(str(_config_value(config, "model_type", "")))
    if name is None or _config_value(config, "architectures", None):
        return None
    return VLLM_ARCHITECTURES[name]


def _moe_layers(config: Any) -> tuple[int, int]:
    """(sparse, dense) decoder layers of a Qwen3-MoE config, as ``qwen3_moe.py:385-392`` decides."""
    layers = int(_config_value(config, "num_hidden_layers"))
    experts = int(_config_value(config, "num_experts", 0))
    step = int(_config_value(config, "decoder_sparse_step", 1))
    mlp_only = set(_config_value(config, "mlp_only_layers", []) or [])
    sparse = sum(1 for i in range(layers) if i not in mlp_only and experts > 0 and (i + 1) % step == 0)
    return sparse, layers - sparse


def _expected_modules(arch: VLLMArchitecture, config: Any) -> frozenset[str]:
    if not arch.moe:
        return arch.modules
    modules = set(arch.modules)
    experts = int(_config_value(config, "num_experts", 0))
    modules |= {f"experts.{i}.{p}" for i in range(experts) for p in _PROJECTIONS}  # lora/utils.py:424-430
    if _moe_layers(config)[1]:  # a dense Qwen3MoeMLP exists: down_proj, and gate_up_proj unpacked only
        # when mlp_only_layers is set (qwen3_moe.py:575-576)
        modules |= {"down_proj"} | (
            {"gate_proj", "up_proj"} if _config_value(config, "mlp_only_layers", []) else {"gate_up_proj"}
        )
    return frozenset(modules)


def _show_expected(modules: frozenset[str]) -> str:
    plain = sorted(m for m in modules if not m.startswith("experts."))
    if any(m.startswith("experts.") for m in modules):
        plain.append("experts.<i>.{gate_proj,up_proj,down_proj}")
    return "{" + ", ".join(repr(m) for m in plain) + "}"


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
        "PEFT's trainable_token_indices (new-token training) saves trainable_tokens_delta, which vLLM 0.33 cannot "
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


def _weight_problems(
    weights: Mapping[str, Any],
    config: Mapping[str, Any],
    model_config: Any,
    where: str,
    enable_mixed_moe_lora_format: bool,
) -> list[VLLMProblem]:
    import re

    problems: list[VLLMProblem] = []
    modules_to_save = list(config.get("modules_to_save") or [])
    parsed: dict[str, tuple[str, str]] = {}
    for key in weights:
        # vllm/lora/utils.py:236-242: PEFT's copies of the base embedding weights are skipped
        if key.endswith((".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")):
            continue
        result = _parse_weight(key)
        if result is None:  # vllm/lora/utils.py:233
            what, fix = "a weight that is not a LoRA factor", "save a plain LoRA adapter (lora_A/lora_B only)"
            for pattern, description, remedy in _REFUSED_WEIGHTS:
                if re.search(pattern, key):
                    what, fix = description, remedy
                    break
            problems.append(
                VLLMProblem("unsupported_weight", f"{key} is unsupported LoRA weight (vLLM 0.33: {what}).", fix + ".")
            )
            continue
        parsed[key] = result
    arch = vllm_architecture(model_config) if model_config is not None else None
    full = sorted({module for module, part in parsed.values() if part == "full"})
    # vllm/lora/model_manager.py:1326-1334; every architecture of the table is generative (no classification
    # head); without the base model's config it cannot be told, so it is not flagged
    if full and arch is not None:
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
    config_values = _model_config(model_config)
    text = _text_config(config_values)
    vocab = _config_value(text, "vocab_size")
    for key, (_module, part) in parsed.items():  # vllm/lora/lora_model.py:159-168
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
    if arch is None:
        return problems
    expected = _expected_modules(arch, text)
    unexpected: list[str] = []
    for key, (module, part) in parsed.items():  # vllm/lora/lora_model.py:250-279
        if part == "full" or "base_layer" in key:
            continue
        if ".experts" in module:
            suffix = module[module.find(".experts") + 1 :]
            if suffix not in expected:
                unexpected.append(module)
        elif module.rsplit(".", 1)[-1] not in expected and module.rsplit(".", 1)[-1] not in modules_to_save:
            unexpected.append(module)
    if unexpected:
        unexpected = list(dict.fromkeys(unexpected))
        why = (
            f" ({arch.name} in vLLM 0.33 has no LoRA on embed_tokens/lm_head"
            + (
                ": Gemma-2 computes logits with the tied embedding and has no lm_head module"
                if "Gemma2" in arch.name
                else ""
            )
            + ")"
            if any(m.rsplit(".", 1)[-1] in _EMBEDDINGS for m in unexpected) and not arch.embeddings
            else ""
        )
        fused = " (vLLM's Phi-3 takes the fused qkv_proj and gate_up_proj)" if arch.fused_phi3 else ""
        problems.append(
            VLLMProblem(
                "target_modules",
                f"While loading {where}, expected target modules in {_show_expected(expected)} but received "
                f"{unexpected}. Please verify that the loaded LoRA module is correct{why}{fused}.",
                f"train LoRA only on modules vLLM's {arch.name} supports ({arch.source}).",
            )
        )
    if arch.moe:
        problems += _moe_problems(parsed, weights, text, enable_mixed_moe_lora_format)
    return problems


def _moe_problems(
    parsed: Mapping[str, tuple[str, str]], weights: Mapping[str, Any], config: Any, mixed: bool
) -> list[VLLMProblem]:
    import re

    problems: list[VLLMProblem] = []
    fused: dict[str, set[str]] = {}
    per_expert: dict[str, dict[tuple[int, str], Any]] = {}
    for key, (module, part) in parsed.items():
        if part != "A":
            continue
        match = re.match(r"(.*\.experts)(\.base_layer)?$", module)
        if match:  # PEFT target_parameters: experts.base_layer = gate_up_proj, experts = down_proj
            fused.setdefault(match.group(1), set()).add("gate_up_proj" if match.group(2) else "experts")
            continue
        match = re.match(r"(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)$", module)
        if match:
            shape = weights[key]
            per_expert.setdefault(match.group(1), {})[(int(match.group(2)), match.group(3))] = (
                shape[0] if shape else None
            )
    if fused and not mixed:  # vllm/lora/model_manager.py:1305-1324
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
    if lone and mixed:  # vllm/lora/model_manager.py:1080-1084 converts only a gate_up_proj + down_proj pair
        problems.append(
            VLLMProblem(
                "moe_3d_pair",
                f"{lone[0]} has LoRA on only one of gate_up_proj/down_proj; vLLM 0.33 converts fused 3D expert LoRA "
                "only when both are adapted (a lone one is read as down_proj).",
                'target both: target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"].',
            )
        )
    experts = int(_config_value(config, "num_experts", 0))
    for module, entries in sorted(per_expert.items()):  # vllm/lora/lora_weights.py:163-250
        missing = [(i, p) for i in range(experts) for p in _PROJECTIONS if (i, p) not in entries]
        if missing:
            problems.append(
                VLLMProblem(
                    "moe_experts_incomplete",
                    f"{module} has LoRA on some experts' projections but not on {len(missing)} of them (first: "
                    f"experts.{missing[0][0]}.{missing[0][1]}); vLLM 0.33 needs gate_proj, up_proj and down_proj of "
                    "every expert of a layer (AssertionError in lora_weights.py:206-208).",
                    "adapt all three projections of every expert, or none.",
                )
            )
        for projection in _PROJECTIONS:
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


def _architecture_problems(model_config: Any) -> list[VLLMProblem]:
    arch = vllm_architecture(model_config)
    if arch is None or not arch.embeddings:
        return []
    vocab = _config_value(_text_config(_model_config(model_config)), "vocab_size")
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


def vllm_lora_memory_bytes(
    model_config: Any,
    *,
    max_lora_rank: int,
    max_loras: int = 1,
    dtype_bytes: int = 2,
    include_embeddings: bool | None = None,
) -> int:
    """GPU memory vLLM 0.33 pre-allocates for LoRA buffers (estimate; TP 1, no fully sharded LoRA, no EP).

    bytes = dtype_bytes · max_loras · max_lora_rank · per_rank, from the buffer shapes in
    ``vllm/lora/layers`` (docs/theory.md §5):

    * dense layer: (3H + Q + 2KV) + (Q + H) + (2H + 2I) + (I + H) = 7H + 2Q + 2KV + 3I
      (qkv, o_proj, gate_up, down_proj; ``column_parallel_linear.py``, ``base_linear.py``); Phi-3's
      single-slice qkv/gate_up: 4H + 2Q + 2KV + 3I;
    * Qwen3-MoE sparse layer: (4H + 2Q + 2KV) + (H + E) + 3·E·(H + I_moe) (attention, router,
      ``FusedMoEWithLoRA`` w1/w3/w2, ``lora/layers/fused_moe.py:172-232``);
    * embeddings, only where vLLM wraps them (``embedding_modules``: Llama, Qwen3, Qwen3-MoE, Phi-3):
      (V + H) + (H + V).

    The rank actually trained does not change it. ``include_embeddings`` None: as the architecture does.

    Raises:
        ValueError: a mixture-of-experts architecture other than Qwen3-MoE (not estimated), or a config
            without the sizes.
    """
    config = _model_config(model_config)
    arch = vllm_architecture(config)
    text = _text_config(config)
    missing = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not _config_value(text, k)
    ]
    if missing:
        raise ValueError(f"the model config lacks {', '.join(missing)}: give the full config.json of the base model")
    hidden = int(_config_value(text, "hidden_size"))
    layers = int(_config_value(text, "num_hidden_layers"))
    heads = int(_config_value(text, "num_attention_heads"))
    kv_heads = int(_config_value(text, "num_key_value_heads", heads))
    head_dim = int(_config_value(text, "head_dim", hidden // heads))
    vocab = int(_config_value(text, "vocab_size"))
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = 4 * hidden + 2 * q + 2 * kv
    is_moe = bool(
        _config_value(text, "num_experts")
        or _config_value(text, "num_local_experts")
        or _config_value(text, "n_routed_experts")
    )
    if is_moe and (arch is None or not arch.moe):
        names = _config_value(config, "architectures", None) or [_config_value(config, "model_type", "this model")]
        name = arch.name if arch else names[0]
        raise ValueError(
            f"the LoRA memory of {name} is not estimated: the estimate covers dense Llama-style models and "
            "Qwen3-MoE (vLLM 0.33's 2-D FusedMoEWithLoRA buffers); other mixture-of-experts layouts differ"
        )
    if arch is not None and arch.moe:
        experts = int(_config_value(text, "num_experts"))
        moe_intermediate = int(_config_value(text, "moe_intermediate_size"))
        sparse, dense = _moe_layers(text)
        per_rank = sparse * (attention + (hidden + experts) + 3 * experts * (hidden + moe_intermediate))
        if dense:
            per_rank += dense * (attention + 3 * hidden + 3 * int(_config_value(text, "intermediate_size")))
    else:
        intermediate = int(_config_value(text, "intermediate_size"))
        mlp = 3 * hidden + 3 * intermediate  # two-slice gate_up 2H + 2I, down_proj I + H
        if arch is not None and arch.fused_phi3:  # single-slice qkv (H + Q + 2KV) and gate_up (H + 2I)
            attention, mlp = attention - 2 * hidden, mlp - hidden
        per_rank = layers * (attention + mlp)
    if include_embeddings is None:
        include_embeddings = arch.embeddings if arch is not None else True
    if include_embeddings:
        per_rank += (vocab + hidden) + (hidden + vocab)
    return dtype_bytes * max_loras * max_lora_rank * per_rank
