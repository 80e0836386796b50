"""The vLLM validator against the base architecture and the saved weights (issue 13, item 6).

Adapters are saved by real PEFT from tiny random models of each family, built locally. Expected
verdicts and messages are vLLM 0.33.0's own (file:line in vllm_rules.md and in serving/vllm.py).
"""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("peft")

from lora_rl_plugins.serving.vllm import validate_vllm_lora, vllm_architecture, vllm_lora_memory_bytes

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
    "vocab_size": 96,
}
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
FAMILIES = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {},
    "gemma2": {},
    "gemma3_text": {},
    "phi3": {"pad_token_id": 0},
    "qwen3_moe": MOE,
}
# vLLM 0.33: LoRA on lm_head loads only where embedding_modules lists it (llama.py:479-482,
# qwen3.py:288-291, qwen3_moe.py:561-564, Phi-3 inherits Llama's); Mistral sets {} (mistral.py:238),
# Qwen2/Gemma-2/Gemma-3 have none (Gemma-2 has no lm_head module at all: gemma2.py:342-369).
LM_HEAD_LOADS = {"llama", "qwen3", "qwen3_moe", "phi3"}


def _save(tmp_path, model_type: str, name: str, **lora):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **SMALL, **FAMILIES.get(model_type, {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=4, lora_alpha=8, **lora))
        model.save_pretrained(tmp_path / name)
    config.save_pretrained(tmp_path / f"{name}_base")
    return tmp_path / name, tmp_path / f"{name}_base", model


def _rules(problems) -> list[str]:
    return [p.rule for p in problems]


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_families_all_linear_and_lm_head(tmp_path, model_type) -> None:
    adapter, base, _ = _save(tmp_path, model_type, "all", target_modules="all-linear")
    expected = ["moe_3d_weights"] if model_type == "qwen3_moe" else []
    assert _rules(validate_vllm_lora(adapter, max_lora_rank=8, model_config=base)) == expected
    if model_type == "qwen3_moe":  # with the engine flag (and LoRARequest(is_3d_lora_weight=True)) it loads
        assert validate_vllm_lora(adapter, max_lora_rank=8, model_config=base, enable_mixed_moe_lora_format=True) == []
    first = "qkv_proj" if model_type == "phi3" else "q_proj"
    adapter, base, _ = _save(tmp_path, model_type, "head", target_modules=[first, "lm_head"])
    problems = validate_vllm_lora(adapter, max_lora_rank=8, model_config=base)
    if model_type in LM_HEAD_LOADS:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.rule == "target_modules"
        assert str(problem).startswith(f"While loading {adapter}, expected target modules in {{")
        assert "but received ['lm_head']. Please verify that the loaded LoRA module is correct" in str(problem)
    # without the base model's config the module rules cannot be checked: the adapter passes
    assert validate_vllm_lora(adapter, max_lora_rank=8) == []


def test_gemma2_embed_tokens_and_architecture_lookup(tmp_path) -> None:
    adapter, base, _ = _save(tmp_path, "gemma2", "emb", target_modules=["q_proj", "embed_tokens"])
    (problem,) = validate_vllm_lora(adapter, max_lora_rank=8, model_config=base)
    assert "but received ['model.embed_tokens']" in str(problem)
    assert vllm_architecture(base).name == "Gemma2ForCausalLM"
    assert vllm_architecture({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}).name == (
        "MistralForCausalLM"
    )
    # issue 19: GPT-2 is registered by vLLM, without LoRA support (it was "outside the table" before)
    assert vllm_architecture({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}).supports_lora is False
    assert vllm_architecture({"architectures": ["NoSuchModelForCausalLM"]}) is None


def test_phi3_unfused_names_are_refused() -> None:
    # HF Phi-3 has fused qkv_proj/gate_up_proj, so PEFT cannot save q_proj keys for it; an adapter
    # trained on an unfused port would carry them, and vLLM's Phi-3 (phi3.py:10-18) expects the fused names.
    weights = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (32, 4),
    }
    config = {"model_type": "phi3", **SMALL}
    (problem,) = validate_vllm_lora(
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, max_lora_rank=8, model_config=config, weights=weights
    )
    assert "but received ['model.layers.0.self_attn.q_proj']" in str(problem) and "fused qkv_proj" in str(problem)


def test_refused_saved_weights(tmp_path) -> None:
    # trainable_token_indices: PEFT saves embed_tokens.token_adapter.trainable_tokens_delta (vLLM issue #36501)
    adapter, base, _ = _save(tmp_path, "llama", "tok", target_modules=["q_proj"], trainable_token_indices=[1, 2])
    (problem,) = validate_vllm_lora(adapter, max_lora_rank=8)
    assert problem.rule == "unsupported_weight"
    assert str(problem).startswith(
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta is unsupported LoRA weight"
    )
    # the config alone (no saved weights) says the same
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert _rules(validate_vllm_lora(config, max_lora_rank=8)) == ["trainable_token_indices"]
    assert _rules(validate_vllm_lora(config, max_lora_rank=8, model_config=base)) == ["unsupported_weight"]
    # DoRA: the config is refused (peft_helper.py:67) and so is its magnitude weight (utils.py:233)
    adapter, _, _ = _save(tmp_path, "qwen2", "dora", target_modules=["q_proj"], use_dora=True)
    rules = _rules(validate_vllm_lora(adapter, max_lora_rank=8))
    assert rules[0] == "use_dora" and set(rules[1:]) == {"unsupported_weight"}
    # lora_bias
    adapter, _, _ = _save(tmp_path, "qwen3", "lbias", target_modules=["q_proj"], lora_bias=True)
    rules = _rules(validate_vllm_lora(adapter, max_lora_rank=8))
    assert rules[0] == "lora_bias" and set(rules[1:]) == {"unsupported_weight"}
    # modules_to_save copies
    adapter, _, _ = _save(tmp_path, "llama", "mts", target_modules=["q_proj"], modules_to_save=["lm_head"])
    rules = _rules(validate_vllm_lora(adapter, max_lora_rank=8))
    assert rules[0] == "modules_to_save" and set(rules[1:]) == {"unsupported_weight"}
    # a directory without tensors (lora_model.py:316)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "adapter_config.json").write_text(json.dumps(config))
    assert "no_tensors" in _rules(validate_vllm_lora(tmp_path / "empty", max_lora_rank=8))


def test_resized_embedding_vocabulary(tmp_path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", **SMALL)
    config.save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_config(config)
    model.resize_token_embeddings(100)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
        peft_model.save_pretrained(tmp_path / "adapter")
    problems = validate_vllm_lora(tmp_path / "adapter", max_lora_rank=8, model_config=tmp_path / "base")
    assert [str(p).split(" Fix")[0] for p in problems if p.rule == "embedding_vocab"] == [
        "The embedding LoRA size(100) must be consistent with the base model's vocabulary size(96)."
    ]


def test_qwen3_moe_expert_formats(tmp_path) -> None:
    config = {"model_type": "qwen3_moe", **SMALL, **MOE}
    # only down_proj through target_parameters: a lone 3-D entry vLLM cannot convert
    adapter, base, _ = _save(
        tmp_path, "qwen3_moe", "lone", target_modules=["q_proj"], target_parameters=["mlp.experts.down_proj"]
    )
    assert _rules(
        validate_vllm_lora(adapter, max_lora_rank=8, model_config=base, enable_mixed_moe_lora_format=True)
    ) == ["moe_3d_pair"]
    # transformers-v4 per-expert 2-D weights: every expert needs gate/up/down, at one rank per projection
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["gate_proj", "up_proj", "down_proj"]}

    def key(e, p, ab):
        return f"base_model.model.model.layers.0.mlp.experts.{e}.{p}.lora_{ab}.weight"

    full = {
        key(e, p, ab): ((4, 32) if ab == "A" else (32, 4))
        for e in range(4)
        for p in ("gate_proj", "up_proj", "down_proj")
        for ab in "AB"
    }
    assert validate_vllm_lora(lora, max_lora_rank=8, model_config=config, weights=full) == []
    partial = {k: v for k, v in full.items() if ".3.down_proj" not in k}
    assert _rules(validate_vllm_lora(lora, max_lora_rank=8, model_config=config, weights=partial)) == [
        "moe_experts_incomplete"
    ]
    uneven = {**full, key(2, "up_proj", "A"): (8, 32), key(2, "up_proj", "B"): (32, 8)}
    (problem,) = validate_vllm_lora(lora, max_lora_rank=8, model_config=config, weights=uneven)
    assert "The experts of model.layers.0.mlp.experts have different LoRA ranks for the same projection" in str(problem)
    # plain MLP names exist in vLLM's Qwen3-MoE only with mlp_only_layers (qwen3_moe.py:575-576)
    dense = {"base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight": (4, 32)}
    assert _rules(validate_vllm_lora(lora, max_lora_rank=8, model_config=config, weights=dense)) == ["target_modules"]
    with_dense = {**config, "num_hidden_layers": 2, "mlp_only_layers": [0]}
    assert validate_vllm_lora(lora, max_lora_rank=8, model_config=with_dense, weights=dense) == []


def test_lm_head_vocabulary_limit_and_memory_by_architecture() -> None:
    big = {"model_type": "llama", **SMALL, "vocab_size": 262144}
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    assert _rules(validate_vllm_lora(lora, max_lora_rank=8, model_config=big)) == ["lm_head_vocab"]
    assert validate_vllm_lora(lora, max_lora_rank=8, model_config={**big, "model_type": "gemma3_text"}) == []
    # buffers (vllm_rules.md §4): Gemma/Mistral/Qwen2 allocate no embedding buffers; Phi-3 single-slice qkv/gate_up
    H, Q, KV, FF, V = 32, 32, 16, 64, 96
    dense = 7 * H + 2 * Q + 2 * KV + 3 * FF
    assert vllm_lora_memory_bytes({"model_type": "llama", **SMALL}, max_lora_rank=8) == 2 * 8 * (dense + 2 * (V + H))
    assert vllm_lora_memory_bytes({"model_type": "qwen2", **SMALL}, max_lora_rank=8) == 2 * 8 * dense
    phi3 = 4 * H + 2 * Q + 2 * KV + 3 * FF
    assert vllm_lora_memory_bytes({"model_type": "phi3", **SMALL}, max_lora_rank=8) == 2 * 8 * (phi3 + 2 * (V + H))


def test_callback_checks_against_the_model_it_has() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_rl_plugins import VLLMLoRAError
    from lora_rl_plugins.lora.adapters import summarize_adapter
    from lora_rl_plugins.plugin.events import AdapterReady
    from lora_rl_plugins.serving.plugin import VLLMServingCheck

    torch.manual_seed(0)
    gemma = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma2", **SMALL))
    model = get_peft_model(gemma, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    check = VLLMServingCheck({"max_lora_rank": 8})
    with pytest.raises(VLLMLoRAError, match=r"but received \['lm_head'\]"):
        check.on_adapter_ready(AdapterReady(summarize_adapter(model), model))
    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SMALL))
    model = get_peft_model(llama, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    check.on_adapter_ready(AdapterReady(summarize_adapter(model), model))  # vLLM's Llama loads it


def test_cli_check_vllm_with_model_config(tmp_path, capsys) -> None:
    from lora_rl_plugins.cli import main

    adapter, base, _ = _save(tmp_path, "gemma2", "head", target_modules=["q_proj", "lm_head"])
    assert main(["check-vllm", str(adapter), "--max-lora-rank", "8"]) == 3  # no base model named
    assert "the base model's module rules were not checked" in capsys.readouterr().out
    assert main(["check-vllm", str(adapter), "--max-lora-rank", "8", "--model-config", str(base)]) == 1
    assert "but received ['lm_head']" in capsys.readouterr().out


def test_score_module_refused_only_on_generative_architectures() -> None:
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "modules_to_save": ["score"]}
    weights = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (32, 4),
        "base_model.model.score.weight": (2, 32),
    }
    assert validate_vllm_lora(lora, max_lora_rank=8, weights=weights) == []  # a classifier may serve it
    (problem,) = validate_vllm_lora(
        lora, max_lora_rank=8, weights=weights, model_config={"model_type": "qwen2", **SMALL}
    )
    assert str(problem).startswith(
        "Cannot load full module 'score': the model does not expose a unique classification head"
    )


def test_config_only_with_base_model_builds_the_adapter_on_meta() -> None:
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])
    gemma = {"model_type": "gemma2", **SMALL}
    (problem,) = validate_vllm_lora(config, max_lora_rank=8, model_config=gemma)
    assert "but received ['lm_head']" in str(problem)
    assert validate_vllm_lora(config, max_lora_rank=8, model_config={"model_type": "qwen3", **SMALL}) == []


# ---------------------------------------------------------------- issue 19: rules for every architecture, per release
NEMOTRON_H = {
    "layers_block_type": ["moe", "attention"],
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "moe_shared_expert_intermediate_size": 16,
    "n_group": 1,
    "topk_group": 1,
    "mamba_num_heads": 4,
    "mamba_head_dim": 8,
    "ssm_state_size": 8,
    "n_groups": 1,
    "num_hidden_layers": 2,
}


def _save_with_base(tmp_path, model_type: str, name: str, extra=None, **lora):
    """A tiny base model saved in full (config.json: its architectures) and a real PEFT adapter whose
    adapter_config.json names it in base_model_name_or_path: the validator finds the base without being told."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**SMALL, **(extra or {})})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(tmp_path / f"{name}_base")
        model.name_or_path = str(tmp_path / f"{name}_base")
        get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **lora)).save_pretrained(tmp_path / name)
    assert json.loads((tmp_path / name / "adapter_config.json").read_text())["base_model_name_or_path"]
    return tmp_path / name, tmp_path / f"{name}_base"


def test_qwen2_lm_head_refused_without_model_config(tmp_path, capsys) -> None:
    """Issue 19 item 2: the base is read from adapter_config.json; vLLM's Qwen2 has no LoRA on lm_head."""
    from lora_rl_plugins.cli import main
    from lora_rl_plugins.serving.vllm import vllm_lora_verdict

    adapter, base = _save_with_base(tmp_path, "qwen2", "head", target_modules=["q_proj", "lm_head"])
    for version in ("0.32.0", "0.33.0", "0.34.0"):
        verdict = vllm_lora_verdict(adapter, max_lora_rank=8, vllm_version=version)
        assert verdict.status == "refused" and verdict.module_rules_checked
        (problem,) = verdict.problems
        assert "expected target modules in {" in str(problem) and "but received ['lm_head']" in str(problem)
    assert main(["check-vllm", str(adapter), "--max-lora-rank", "8"]) == 1
    assert "but received ['lm_head']" in capsys.readouterr().out
    adapter, base = _save_with_base(tmp_path, "qwen2", "attn", target_modules=["q_proj", "v_proj"])
    assert main(["check-vllm", str(adapter), "--max-lora-rank", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: vLLM 0.34.0") and f"base model: {base / 'config.json'}" in out


def test_base_model_found_in_the_hugging_face_cache_offline(tmp_path) -> None:
    """base_model_name_or_path = a Hub id: read from the local Hugging Face cache, no network (HF_HUB_OFFLINE=1)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    adapter, base = _save_with_base(tmp_path, "qwen2", "hub", target_modules=["q_proj", "lm_head"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-org/tiny-qwen2"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen2"  # huggingface_hub's cache layout
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text((base / "config.json").read_text())
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "lora_rl_plugins.cli", "check-vllm", str(adapter), "--max-lora-rank", "8"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "but received ['lm_head']" in done.stdout
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")  # not in the cache: checked partly, exit 3, never a plain "ok"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("checked partly:") and "tiny-org/tiny-qwen2" in done.stdout


def test_architecture_without_lora_refused_in_vllms_words(tmp_path) -> None:
    """GPT-2 is registered by vLLM but does not implement SupportsLoRA (gpt2.py:GPT2LMHeadModel)."""
    adapter, base = _save_with_base(
        tmp_path, "gpt2", "gpt2", extra={"n_embd": 32, "n_layer": 1, "n_head": 4}, target_modules=["c_attn"]
    )
    (problem,) = validate_vllm_lora(adapter, max_lora_rank=8, vllm_version="0.34.0")
    assert problem.rule == "architecture_lora"
    assert str(problem).startswith(
        f"LoRA is not supported for GPT2LMHeadModel ({base}). Supported models implement the `SupportsLoRA` "
        "interface. Run this model without `enable_lora`."
    )
    (problem,) = validate_vllm_lora(adapter, max_lora_rank=8, vllm_version="0.32.0")  # refused at model load
    assert str(problem).startswith("GPT2LMHeadModel does not support LoRA yet.")


def test_nemotron_h_3d_experts_refused_by_the_2d_wrapper(tmp_path) -> None:
    """Issue 19 item 1: NemotronH's routed experts through target_parameters are 3-D LoRA tensors; vLLM's
    NemotronH (is_3d_moe_weight False) wraps its experts with the 2-D FusedMoEWithLoRA and refuses them."""
    adapter, base = _save_with_base(
        tmp_path,
        "nemotron_h",
        "nh",
        extra=NEMOTRON_H,
        target_modules=["q_proj", "v_proj"],
        target_parameters=["mixer.experts.up_proj", "mixer.experts.down_proj"],
    )
    for version in ("0.32.0", "0.34.0"):
        assert _rules(validate_vllm_lora(adapter, max_lora_rank=8, vllm_version=version)) == ["moe_3d_weights"]
    assert validate_vllm_lora(adapter, max_lora_rank=8, enable_mixed_moe_lora_format=True) == []
    # attention and the dense shared experts of NemotronH load (qkv_proj packs q/k/v; up_proj/down_proj wrapped)
    adapter, base = _save_with_base(
        tmp_path,
        "nemotron_h",
        "nh_dense",
        extra=NEMOTRON_H,
        target_modules=["q_proj", "o_proj", "up_proj", "down_proj"],
    )
    assert validate_vllm_lora(adapter, max_lora_rank=8) == []
    arch = vllm_architecture(base)
    assert arch.moe and not arch.is_3d_moe_weight and arch.is_non_gated_moe and arch.embeddings


def test_opt_outside_the_old_table_follows_vllms_model_file(tmp_path) -> None:
    """OPT: vLLM wraps qkv_proj (packed q/k/v), out_proj, fc1, fc2; no LoRA on lm_head (no embedding_modules)."""
    extra = {"ffn_dim": 64, "word_embed_proj_dim": 32, "max_position_embeddings": 64}
    adapter, _ = _save_with_base(tmp_path, "opt", "opt", extra=extra, target_modules="all-linear")
    assert validate_vllm_lora(adapter, max_lora_rank=8) == []
    adapter, _ = _save_with_base(tmp_path, "opt", "opt_head", extra=extra, target_modules=["q_proj", "lm_head"])
    (problem,) = validate_vllm_lora(adapter, max_lora_rank=8)
    assert "but received ['lm_head']" in str(problem) and "OPTForCausalLM" in problem.fix


def test_unwrapped_layer_refused_from_vllm_034() -> None:
    """0.34 refuses LoRA on a layer named like a LoRA layer that vLLM does not wrap ("<module> (not a LoRA
    layer)", model_manager.py:_create_lora_modules); 0.32 and 0.33 load the adapter and ignore that LoRA.
    vLLM's RobertaModel wraps ``dense`` layers (RowParallelLinear) but its pooler's ``dense`` is an nn.Linear."""
    config = {"architectures": ["RobertaModel"], "model_type": "roberta", "vocab_size": 96}
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value", "dense"]}
    weights = {
        f"base_model.model.roberta.{module}.lora_{ab}.weight": (4, 32)  # vLLM maps roberta. -> model.
        for module in ("encoder.layer.0.attention.self.query", "encoder.layer.0.output.dense", "pooler.dense")
        for ab in "AB"
    }

    def check(version: str) -> list:
        return validate_vllm_lora(lora, max_lora_rank=8, model_config=config, weights=weights, vllm_version=version)

    assert check("0.32.0") == check("0.33.0") == []
    (problem,) = check("0.34.0")
    assert "but received ['model.pooler.dense (not a LoRA layer)']" in str(problem)


def test_vllm_version_choice() -> None:
    from lora_rl_plugins.serving.architectures import SUPPORTED_VLLM_VERSIONS, resolve_vllm_version

    assert SUPPORTED_VLLM_VERSIONS == ("0.32.0", "0.33.0", "0.34.0")
    assert resolve_vllm_version("0.33.1") == "0.33.0"  # a patch release uses its minor's rules
    with pytest.raises(ValueError, match=r"no LoRA rules for vLLM 0.31.0: the supported versions are 0.32.0, 0.33.0"):
        validate_vllm_lora(
            {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, max_lora_rank=8, vllm_version="0.31.0"
        )
