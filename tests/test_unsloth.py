"""Unsloth fast_inference checks: everything that does not need Unsloth runs here; the Unsloth call
itself runs only where a GPU and Unsloth exist (marked gpu)."""

from __future__ import annotations

import pytest

from lora_rl_plugins import RunPlan, VLLMLoRAError, select_rank
from lora_rl_plugins.serving.unsloth import (
    UNSLOTH_DEFAULT_TARGET_MODULES,
    check_unsloth_lora,
    unsloth_engine_rank,
    unsloth_lora_config,
)


def test_engine_rank_rounds_like_unsloth() -> None:
    # unsloth_zoo.vllm_utils.determine_max_lora_rank: the smallest legal vLLM value >= requested
    assert [unsloth_engine_rank(r) for r in (1, 2, 8, 10, 16, 33, 64, 200, 300, 500)] == [
        1,
        8,
        8,
        16,
        16,
        64,
        64,
        256,
        320,
        512,
    ]
    with pytest.raises(ValueError, match="largest vLLM accepts is 512"):
        unsloth_engine_rank(600)


def test_lora_config_mirrors_get_peft_model_defaults() -> None:
    config = unsloth_lora_config(16)
    assert config == {
        "r": 16,
        "lora_alpha": 16,
        "target_modules": list(UNSLOTH_DEFAULT_TARGET_MODULES),
        "bias": "none",
        "use_rslora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
    }
    assert unsloth_lora_config(8, loftq_config={"loftq_bits": 4})["init_lora_weights"] == "loftq"
    assert unsloth_lora_config(8, use_dora=True)["use_dora"] is True


def test_issue_2097_is_caught_before_generation_with_unsloth_advice() -> None:
    # unsloth issue #2097: "LoRA rank 32 is greater than max_lora_rank 16"
    with pytest.raises(VLLMLoRAError) as raised:
        check_unsloth_lora(unsloth_lora_config(32), engine_max_lora_rank=16)
    text = str(raised.value)
    assert "LoRA rank 32 (r) is greater than max_lora_rank 16" in text
    assert "fast_inference=True, max_lora_rank=32" in text
    assert "at the first generation" in text
    check_unsloth_lora(unsloth_lora_config(16), engine_max_lora_rank=16)  # fits: no error


def test_whole_config_is_checked_not_only_r() -> None:
    with pytest.raises(VLLMLoRAError) as raised:
        check_unsloth_lora(
            unsloth_lora_config(8, bias="all", modules_to_save=["lm_head"], rank_pattern={"down_proj": 64}),
            engine_max_lora_rank=16,
        )
    rules = {p.rule for p in raised.value.problems}
    assert rules == {"bias", "modules_to_save", "rank_exceeds_max_lora_rank"}
    assert "max_lora_rank=64" in str(raised.value)


def test_auto_rank_from_a_plan_fits_the_engine() -> None:
    from lora_rl_plugins.demo.model import build_tiny_model

    model = build_tiny_model()
    plan = RunPlan(dataset_size=2000, generations=8, reward_levels=2)
    choice = select_rank(plan=plan, model=model, target_modules=list(UNSLOTH_DEFAULT_TARGET_MODULES), max_lora_rank=64)
    assert choice.capacity_bits >= plan.bits
    check_unsloth_lora(unsloth_lora_config(choice.rank), engine_max_lora_rank=64)


@pytest.mark.gpu
def test_unsloth_get_peft_model_on_gpu(tmp_path) -> None:
    """Where Unsloth and a GPU exist: a real fast_inference model, r="auto", and the engine check."""
    pytest.importorskip("unsloth")
    from unsloth import FastLanguageModel

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.integrations.unsloth import engine_max_lora_rank, get_peft_model

    # a small local model (head_dim 64 for vLLM's attention kernels); nothing is downloaded
    build_tiny_model(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512).save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    model, _ = FastLanguageModel.from_pretrained(
        str(tmp_path), max_seq_length=64, fast_inference=True, max_lora_rank=16, gpu_memory_utilization=0.3
    )
    assert engine_max_lora_rank(model) == 16
    with pytest.raises(VLLMLoRAError, match="max_lora_rank=32"):
        get_peft_model(model, r=32)
    model = get_peft_model(model, r="auto", plan=RunPlan(episodes=10_000, reward_levels=2))
    assert model.peft_config["default"].r <= 16


def _tiny_moe():
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
    experts = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
    config = AutoConfig.for_model("qwen3_moe", **sizes, head_dim=8, intermediate_size=64, vocab_size=96, **experts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(config)


def test_moe_config_is_what_unsloth_and_peft_build() -> None:
    """Unsloth's get_peft_model on an MoE model adds target_parameters on the fused experts; real PEFT then
    sets rank_pattern {".*\\.gate_up_proj": 2r}: the config checked here equals the one PEFT builds."""
    pytest.importorskip("peft")
    import warnings

    from peft import LoraConfig, get_peft_model

    model = _tiny_moe()
    config = unsloth_lora_config(16, model=model)
    assert config["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    # what Unsloth hands PEFT (llama.py: LoraConfig(target_modules=..., target_parameters=...)), built by real PEFT
    handed = {k: v for k, v in config.items() if k not in ("rank_pattern", "alpha_pattern")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = get_peft_model(model, LoraConfig(**handed)).peft_config["default"]
    assert dict(built.rank_pattern) == config["rank_pattern"] == {r".*\.gate_up_proj": 32}
    assert dict(built.alpha_pattern) == config["alpha_pattern"] == {r".*\.gate_up_proj": 32}
    # attention-only targets reach no expert: nothing added, as Unsloth
    attention = unsloth_lora_config(16, model=_tiny_moe(), target_modules=["q_proj", "v_proj"])
    assert "target_parameters" not in attention and "rank_pattern" not in attention


def test_moe_drop_in_refuses_rank_32_before_unsloth_is_imported(monkeypatch) -> None:
    """Issue 19: get_peft_model(model, r=16) on an MoE model at engine max_lora_rank=16: vLLM refuses "LoRA rank
    32 is greater than max_lora_rank 16" (PEFT's gate_up_proj rank 2r); the drop-in refuses it first."""
    import sys
    from types import SimpleNamespace

    pytest.importorskip("peft")
    from lora_rl_plugins.integrations.unsloth import engine_max_lora_rank, get_peft_model

    model = _tiny_moe()
    # what Unsloth attaches with fast_inference=True: model.vllm_engine (a vllm.LLM), read for its lora_config
    lora_config = SimpleNamespace(max_lora_rank=16)
    model.vllm_engine = SimpleNamespace(
        llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(lora_config=lora_config))
    )
    assert engine_max_lora_rank(model) == 16
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    with pytest.raises(VLLMLoRAError) as raised:
        get_peft_model(model, r=16)
    assert "LoRA rank 32 (rank_pattern) is greater than max_lora_rank 16" in str(raised.value)
    assert "max_lora_rank=32" in str(raised.value)  # Unsloth advice: load with max_lora_rank=32
    assert "unsloth" not in sys.modules  # refused before Unsloth is imported
    # a dense model at r=16 fits the same engine (the check passes; then Unsloth itself would be imported)
    config = unsloth_lora_config(16, model=_tiny_moe().model.layers[0])  # no config attribute: nothing added
    assert "rank_pattern" not in config
    check_unsloth_lora(config, engine_max_lora_rank=16)
