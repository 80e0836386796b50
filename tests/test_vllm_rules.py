"""vLLM max_lora_rank validation: a grid over every rule of vLLM 0.33, adapters saved by real PEFT,
the strict variant, the memory estimate and the CLI."""

from __future__ import annotations

import json

import pytest

from lora_rl_plugins import VLLMLoRAError, check_vllm_lora, validate_vllm_lora, vllm_lora_memory_bytes
from lora_rl_plugins.serving.vllm import LEGAL_MAX_LORA_RANKS, load_lora_config, smallest_legal_max_lora_rank

BASE = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}

# (adapter overrides, engine settings, rules vLLM 0.33 rejects with: () = it loads the adapter)
GRID = [
    ({}, {"max_lora_rank": 8}, ()),
    ({}, {"max_lora_rank": 16}, ()),
    ({"r": 16}, {"max_lora_rank": 16}, ()),
    ({"r": 32}, {"max_lora_rank": 16}, ("rank_exceeds_max_lora_rank",)),
    ({"r": 1}, {"max_lora_rank": 1}, ()),
    ({"r": 2}, {"max_lora_rank": 1}, ("rank_exceeds_max_lora_rank",)),
    ({"r": 512}, {"max_lora_rank": 512}, ()),
    ({"r": 320}, {"max_lora_rank": 320}, ()),
    ({}, {"max_lora_rank": 12}, ("max_lora_rank_illegal",)),
    ({}, {"max_lora_rank": 1024}, ("max_lora_rank_illegal",)),
    ({}, {"max_lora_rank": 0}, ("max_lora_rank_illegal", "rank_exceeds_max_lora_rank")),
    ({"r": 8, "rank_pattern": {"q_proj": 32}}, {"max_lora_rank": 16}, ("rank_exceeds_max_lora_rank",)),
    ({"r": 8, "rank_pattern": {"q_proj": 16}}, {"max_lora_rank": 16}, ()),
    ({"r": 8, "rank_pattern": {"q_proj": 0}}, {"max_lora_rank": 16}, ("rank_pattern_positive",)),
    ({"r": 8, "alpha_pattern": {"q_proj": 64}, "use_rslora": True}, {"max_lora_rank": 8}, ()),
    ({"r": 0}, {"max_lora_rank": 8}, ("rank_positive",)),
    ({"r": -4}, {"max_lora_rank": 8}, ("rank_positive",)),
    ({"bias": "all"}, {"max_lora_rank": 8}, ("bias",)),
    ({"bias": "lora_only"}, {"max_lora_rank": 8}, ("bias",)),
    ({"use_dora": True}, {"max_lora_rank": 8}, ("use_dora",)),
    ({"lora_bias": True}, {"max_lora_rank": 8}, ("lora_bias",)),
    ({"modules_to_save": ["lm_head"]}, {"max_lora_rank": 8}, ("modules_to_save",)),
    ({"modules_to_save": ["score"]}, {"max_lora_rank": 8}, ()),
    ({"modules_to_save": ["classifier", "embed_tokens"]}, {"max_lora_rank": 8}, ("modules_to_save",)),
    ({"modules_to_save": []}, {"max_lora_rank": 8}, ()),
    ({"init_lora_weights": "pissa"}, {"max_lora_rank": 8}, ("init_lora_weights",)),
    ({"init_lora_weights": "pissa_niter_4"}, {"max_lora_rank": 8}, ("init_lora_weights",)),
    ({"init_lora_weights": "olora"}, {"max_lora_rank": 8}, ("init_lora_weights",)),
    ({"init_lora_weights": "corda"}, {"max_lora_rank": 8}, ("init_lora_weights",)),
    ({"init_lora_weights": "loftq"}, {"max_lora_rank": 8}, ("init_lora_weights",)),
    ({"init_lora_weights": "gaussian"}, {"max_lora_rank": 8}, ()),
    ({"init_lora_weights": "Gaussian"}, {"max_lora_rank": 8}, ()),
    ({"init_lora_weights": "eva"}, {"max_lora_rank": 8}, ()),
    ({"init_lora_weights": "orthogonal"}, {"max_lora_rank": 8}, ()),
    ({"init_lora_weights": "mica"}, {"max_lora_rank": 8}, ()),
    ({"init_lora_weights": "lora_ga"}, {"max_lora_rank": 8}, ()),
    ({"init_lora_weights": False}, {"max_lora_rank": 8}, ()),
    ({"alora_invocation_tokens": [1, 2]}, {"max_lora_rank": 8}, ("alora_invocation_tokens",)),
    ({"alora_invocation_tokens": None}, {"max_lora_rank": 8}, ()),
    ({"layer_replication": [[0, 4], [2, 5]]}, {"max_lora_rank": 8}, ("layer_replication",)),
    ({"use_bdlora": {"nblocks": 2}}, {"max_lora_rank": 8}, ("use_bdlora",)),
    ({"use_qalora": True}, {"max_lora_rank": 8}, ("use_qalora",)),
    ({}, {"max_lora_rank": 8, "max_loras": 0}, ("max_loras",)),
    ({}, {"max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": 2}, ("max_cpu_loras",)),
    ({}, {"max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": 4}, ()),
    ({}, {"max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": None}, ()),
    # vllm/engine/arg_utils.py:2704-2706: 0 and negative values mean "unset" (= max_loras)
    ({}, {"max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": 0}, ()),
    ({}, {"max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": -1}, ()),
    ({}, {"max_lora_rank": 8, "lora_dtype": "float32"}, ("lora_dtype",)),
    ({}, {"max_lora_rank": 8, "lora_dtype": "bfloat16"}, ()),
    ({}, {"max_lora_rank": 8, "lora_dtype": "float16"}, ()),
    ({"target_modules": None}, {"max_lora_rank": 8}, ()),
    (
        {"use_dora": True, "bias": "all", "r": 64},
        {"max_lora_rank": 16},
        ("use_dora", "rank_exceeds_max_lora_rank", "bias"),
    ),
]


def adapter(**overrides) -> dict:
    config = dict(BASE)
    config.update(overrides)
    return config


@pytest.mark.parametrize(("overrides", "engine", "expected"), GRID)
def test_grid_verdicts(overrides, engine, expected) -> None:
    problems = validate_vllm_lora(adapter(**overrides), **engine)
    assert tuple(p.rule for p in problems) == expected
    for problem in problems:
        assert problem.fix, problem  # every problem says how to fix it


def test_missing_required_fields() -> None:
    problems = validate_vllm_lora({"r": 8}, max_lora_rank=8)
    assert [p.rule for p in problems] == ["required_fields"]
    assert "lora_alpha, target_modules" in problems[0].message


def test_legal_ranks_and_rounding() -> None:
    assert LEGAL_MAX_LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert [smallest_legal_max_lora_rank(r) for r in (1, 2, 8, 9, 17, 300, 321, 512, 513)] == [
        1,
        8,
        8,
        16,
        32,
        320,
        512,
        512,
        None,
    ]


def test_messages_name_the_fix() -> None:
    (problem,) = validate_vllm_lora(adapter(r=32), max_lora_rank=16)
    assert str(problem) == (
        "LoRA rank 32 (r) is greater than max_lora_rank 16. "
        "Fix: start vLLM with max_lora_rank=32, or train with r <= 16."
    )
    (problem,) = validate_vllm_lora(adapter(), max_lora_rank=12)
    assert "max_lora_rank=12 is not a value vLLM accepts" in str(problem) and "use max_lora_rank=16" in str(problem)


def test_strict_variant_lists_every_problem() -> None:
    with pytest.raises(VLLMLoRAError) as raised:
        check_vllm_lora(adapter(r=64, use_dora=True), max_lora_rank=12)
    assert len(raised.value.problems) == 3
    text = str(raised.value)
    assert "3 problems" in text and "DoRA" in text and "max_lora_rank=12" in text
    check_vllm_lora(adapter(), max_lora_rank=8)  # no error


def test_real_peft_configs_and_saved_adapters(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    from lora_rl_plugins.demo.model import build_tiny_model

    config = peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    assert validate_vllm_lora(config, max_lora_rank=16) == []
    assert [p.rule for p in validate_vllm_lora(config, max_lora_rank=8)] == ["rank_exceeds_max_lora_rank"]
    dora = peft.LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM")
    assert [p.rule for p in validate_vllm_lora(dora, max_lora_rank=8)] == ["use_dora"]

    model = peft.get_peft_model(build_tiny_model(), config)
    model.save_pretrained(tmp_path / "adapter")
    assert validate_vllm_lora(tmp_path / "adapter", max_lora_rank=16) == []
    assert validate_vllm_lora(str(tmp_path / "adapter" / "adapter_config.json"), max_lora_rank=32) == []
    assert load_lora_config(tmp_path / "adapter")["r"] == 16


def test_corrupt_or_missing_adapter_config(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no adapter config at"):
        validate_vllm_lora(tmp_path, max_lora_rank=8)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        validate_vllm_lora(tmp_path, max_lora_rank=8)
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a LoRA config object"):
        validate_vllm_lora(tmp_path, max_lora_rank=8)
    with pytest.raises(TypeError, match="cannot read a LoRA config"):
        validate_vllm_lora(42, max_lora_rank=8)


def test_memory_estimate_llama_8b() -> None:
    llama = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
    }
    per_layer = 7 * 4096 + 2 * 4096 + 2 * 1024 + 3 * 14336  # = Σ(d_in+d_out) of the 7 projections
    assert per_layer * 32 == 2_621_440
    expected = 2 * 1 * 16 * (32 * per_layer + 2 * (128256 + 4096))
    assert vllm_lora_memory_bytes(llama, max_lora_rank=16) == expected == 92_356_608
    assert vllm_lora_memory_bytes(llama, max_lora_rank=64, max_loras=4) == 16 * expected
    assert vllm_lora_memory_bytes(llama, max_lora_rank=16, include_embeddings=False) == 2 * 16 * 32 * per_layer
    with pytest.raises(ValueError, match="not estimated: the estimate covers dense Llama-style models and Qwen3-MoE"):
        vllm_lora_memory_bytes({**llama, "num_experts": 8}, max_lora_rank=16)


def test_cli_check_vllm_exit_codes(tmp_path, capsys) -> None:
    from lora_rl_plugins.cli import main

    (tmp_path / "adapter_config.json").write_text(json.dumps(adapter(r=32)))
    # no base model named: the config passes, the module rules are not checked -> 3, never a plain "ok"
    assert main(["check-vllm", str(tmp_path / "adapter_config.json"), "--max-lora-rank", "32"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("checked partly:") and "Pass --model-config" in out and "ok" not in out.split()[0]
    assert main(["check-vllm", str(tmp_path / "adapter_config.json"), "--max-lora-rank", "16"]) == 1
    out = capsys.readouterr().out
    assert "LoRA rank 32 (r) is greater than max_lora_rank 16" in out
    with pytest.raises(SystemExit) as exited:  # bad input (exit 2), not vLLM's "no" (exit 1)
        main(["check-vllm", str(tmp_path / "missing"), "--max-lora-rank", "16"])
    assert exited.value.code == 2 and "missing does not exist" in capsys.readouterr().err
    assert (
        main(["check-vllm", str(tmp_path / "adapter_config.json"), "--max-lora-rank", "32", "--vllm-version", "0.9"])
        == 2
    )
    assert "the supported versions are 0.32.0, 0.33.0, 0.34.0" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 19: the rules read out of vLLM's wheels
def _fake_wheel(path, files: dict[str, str], version: str = "9.9.0"):
    """A zip laid out like a vLLM wheel: what scripts/vllm_rules.py reads, nothing of vLLM's code."""
    import zipfile

    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"vllm-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


FAKE_MODELS = {
    "vllm/model_executor/layers/linear.py": """
class LinearBase: ...
class ColumnParallelLinear(LinearBase): ...
class QKVParallelLinear(ColumnParallelLinear): ...
class RowParallelLinear(LinearBase): ...
""",
    "vllm/model_executor/models/interfaces.py": "class SupportsLoRA: supports_lora = True\n",
    "vllm/model_executor/models/registry.py": """
_TEXT_GENERATION_MODELS = {
    "ToyForCausalLM": ("toy", "ToyForCausalLM"),
    "ToyNoLoRAForCausalLM": ("toy", "ToyNoLoRA"),
    "ToyChildForCausalLM": ("toy", "ToyChild"),
}
""",
    "vllm/model_executor/models/toy.py": """
from torch import nn
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from .interfaces import SupportsLoRA

LAYERS = {"attention": None}

class ToyAttention(nn.Module):
    def __init__(self):
        self.qkv_proj = QKVParallelLinear()
        self.o_proj = RowParallelLinear()
        self.dense = nn.Linear(2, 2)

class ToyPooler(nn.Module):
    def __init__(self):
        self.dense = nn.Linear(2, 2)

class ToyBlock(nn.Module):
    def __init__(self):
        self.attn = ToyAttention()
        self.other = RowParallelLinear()
        self.dense = RowParallelLinear()

class ToyModel(nn.Module):
    def __init__(self):
        self.layers = nn.ModuleList([ToyBlock() for _ in range(2)])
        self.pooler = ToyPooler()

class ToyForCausalLM(nn.Module, SupportsLoRA):
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    embedding_modules = {"embed_tokens": "input_embeddings", "lm_head": "output_embeddings"}
    def __init__(self):
        self.model = ToyModel()

class ToyNoLoRA(nn.Module):
    def __init__(self):
        self.model = ToyModel()

class ToyChild(ToyForCausalLM):
    embedding_modules = {}
""",
}


def test_extractor_reads_a_wheel_as_vllm_decides(tmp_path) -> None:
    """scripts/vllm_rules.py on a wheel-shaped zip: LoRA support from SupportsLoRA, wrapped modules from
    LinearBase subclasses reached from the class, embedding_modules (a subclass's override wins), packing,
    and a layer named like a wrapped one but of another type (nn.Linear) listed as not wrapped."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("vllm_rules", Path(__file__).parents[1] / "scripts/vllm_rules.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    wheel = _fake_wheel(tmp_path / "vllm-9.9.0-py3-none-any.whl", FAKE_MODELS)
    assert script.main([str(wheel), "--out", str(tmp_path / "rules.json")]) == 0
    data = json.loads((tmp_path / "rules.json").read_text())
    assert data["vllm_version"] == "9.9.0"
    toy = data["architectures"]["ToyForCausalLM"]
    assert toy["supports_lora"] is True and toy["moe"] is False
    assert toy["lora_modules"] == ["dense", "embed_tokens", "lm_head", "o_proj", "other", "qkv_proj"]
    assert toy["packed_modules_mapping"] == {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    assert toy["unwrapped_modules"] == ["attn.dense", "pooler.dense"]
    assert data["architectures"]["ToyNoLoRAForCausalLM"] == {
        "class": "toy.ToyNoLoRA",
        "supports_lora": False,
        "registry_table": "text_generation",
    }
    child = data["architectures"]["ToyChildForCausalLM"]
    assert child["embedding_modules"] == {} and "lm_head" not in child["lora_modules"]


def test_shipped_rules_agree_with_the_hand_read_table() -> None:
    """The data read out of the wheels equals what was read by hand from vLLM 0.33's model files before
    (issue 13): embedding_modules of Llama/Qwen3/Qwen3-MoE/Phi-3 only, Phi-3's fused names, Qwen3-MoE's 2-D experts."""
    from lora_rl_plugins.serving.architectures import SUPPORTED_VLLM_VERSIONS, VLLMArchitecture, vllm_architecture

    dense = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for version in SUPPORTED_VLLM_VERSIONS:

        def arch(name: str, version: str = version) -> VLLMArchitecture:
            found = vllm_architecture({"architectures": [name]}, version)
            assert found is not None and found.supports_lora, name
            return found

        for name in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
            assert arch(name).modules == dense | {"embed_tokens", "lm_head"} and arch(name).embeddings
        for name in ("MistralForCausalLM", "Qwen2ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"):
            assert dense <= arch(name).modules and not arch(name).embeddings, name
        phi3 = arch("Phi3ForCausalLM")
        assert phi3.fused_phi3 and {"qkv_proj", "gate_up_proj"} <= phi3.modules and phi3.embeddings
        moe = arch("Qwen3MoeForCausalLM")
        assert moe.moe and not moe.is_3d_moe_weight and moe.embeddings and {"gate", "experts"} <= moe.modules
        assert arch("GptOssForCausalLM").is_3d_moe_weight
        assert not vllm_architecture({"architectures": ["GPT2LMHeadModel"]}, version).supports_lora
