"""Rank selection against THEORY.md §2's reference numbers, on real models and configs."""

from __future__ import annotations

import json
import math

import pytest

from lora_rl_plugins import RunPlan, select_rank
from lora_rl_plugins.lora.capacity import adapter_capacity_bits, params_per_rank, seed_rule_rank, smallest_rank

LLAMA_31_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
LLAMA_32_1B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
MLP = ["gate_proj", "up_proj", "down_proj"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_seed_rule_reference_numbers() -> None:
    # r = 8, d = 4096 -> 65,536 parameters, 2,097,152 bits (256 KB)
    assert params_per_rank([(4096, 4096)]) * 8 == 65_536
    assert adapter_capacity_bits(65_536) == 2_097_152
    assert adapter_capacity_bits(65_536) / 8 / 1024 == 256
    assert seed_rule_rank(2_097_152, 4096) == 8
    assert seed_rule_rank(2_097_153, 4096) == 9
    # d = 4096, N = 1000 episodes at 2 bits -> r >= 1 suffices
    assert seed_rule_rank(1000 * 2, 4096) == 1
    assert smallest_rank(0, 10) == 1


@pytest.mark.parametrize(
    ("config", "mlp", "attention"),
    [(LLAMA_31_8B, 1_769_472, 851_968), (LLAMA_32_1B, 491_520, 212_992)],
)
def test_per_rank_parameters_of_real_configs(config, mlp, attention) -> None:
    assert select_rank(bits=1, model_config=config, target_modules=MLP).params_per_rank == mlp
    assert select_rank(bits=1, model_config=config, target_modules=ATTENTION).params_per_rank == attention
    all_linear = select_rank(bits=1, model_config=config, target_modules="all-linear")
    assert all_linear.params_per_rank == mlp + attention  # all-linear excludes lm_head, as in PEFT


def test_llama_8b_all_layers_is_about_3m_parameters_per_rank() -> None:
    choice = select_rank(bits=1, model_config=LLAMA_31_8B)
    assert choice.params_per_rank == 2_621_440  # "~3M" in LoRA Without Regret
    assert len(choice.matrices) == 7 * 32


def test_plan_arithmetic() -> None:
    # MATH: 10,000 problems x 32 samples at 1 bit -> 320,000 bits; margin 2
    plan = RunPlan(dataset_size=10_000, generations=32, reward_levels=2)
    assert plan.episode_count == 320_000 and plan.bits == 640_000
    # DeepSeek-R1-Zero: 10,400 steps x 32 questions x 16 samples ~ 5.3M episodes
    r1 = RunPlan(steps=10_400, rollouts_per_step=32 * 16, reward_levels=2, margin=1)
    assert r1.bits == 10_400 * 512 == pytest.approx(5.3e6, rel=0.01)
    # seed 001: 1000 episodes at 4 levels = 2000 bits
    assert RunPlan(episodes=1000, reward_levels=4, margin=1).bits == 2000
    assert RunPlan(episodes=100, bits_per_episode=0.25, margin=1).bits == 25
    with pytest.raises(ValueError, match="needs episodes"):
        _ = RunPlan(reward_levels=2).bits
    with pytest.raises(ValueError, match="needs reward_levels"):
        _ = RunPlan(episodes=10).bits
    with pytest.raises(ValueError, match="margin"):
        RunPlan(episodes=1, reward_levels=2, margin=0.5)


def test_select_rank_from_plan_and_vllm_constraint() -> None:
    plan = RunPlan(episodes=5_000_000, reward_levels=2, margin=1)
    choice = select_rank(plan=plan, hidden_size=4096, vllm=True)
    assert choice.rank == math.ceil(5_000_000 / (32 * 8192)) == 20
    assert choice.max_lora_rank == 32  # smallest legal vLLM max_lora_rank >= 20
    assert choice.rule == "seed"
    assert choice.capacity_bits >= 5_000_000 > choice.capacity_at(choice.rank - 1)
    with pytest.raises(ValueError, match="above max_lora_rank=16; serve with max_lora_rank=32"):
        select_rank(plan=plan, hidden_size=4096, max_lora_rank=16)
    with pytest.raises(ValueError, match="r=3815 is above vLLM's largest max_lora_rank 512"):
        select_rank(bits=1e9, hidden_size=4096, vllm=True)


def test_select_rank_refuses_ranks_beyond_full_rank() -> None:
    assert select_rank(bits=32 * 128 * 64, hidden_size=64).rank == 64  # exactly full rank: allowed
    with pytest.raises(ValueError, match="r=65, above 64, the rank at which every adapted matrix is already full"):
        select_rank(bits=32 * 128 * 64 + 1, hidden_size=64)
    # the adapter rule: Llama-3.2-1B all-linear, the widest matrix pair has min(d_in, d_out) = 2048
    per_rank = select_rank(bits=1, model_config=LLAMA_32_1B).params_per_rank
    assert select_rank(bits=32 * per_rank * 2048, model_config=LLAMA_32_1B).rank == 2048
    with pytest.raises(ValueError, match="above 2048"):
        select_rank(bits=32 * per_rank * 2048 + 1, model_config=LLAMA_32_1B)


def test_select_rank_input_errors() -> None:
    with pytest.raises(ValueError, match="exactly one of bits= or plan="):
        select_rank(hidden_size=4096)
    with pytest.raises(ValueError, match="not both"):
        select_rank(bits=1, hidden_size=4096, model_config=LLAMA_32_1B)
    with pytest.raises(ValueError, match="non-negative"):
        select_rank(bits=-1, hidden_size=8)


def test_select_rank_from_real_models() -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from lora_rl_plugins.demo.model import build_tiny_model

    model = build_tiny_model()
    plain = select_rank(bits=10_000, model=model, target_modules=["q_proj", "v_proj"])
    # per layer: q 64->64 (128), v 64->32 (96); 2 layers
    assert plain.params_per_rank == 2 * (128 + 96)
    assert plain.rank == math.ceil(10_000 / (32 * 448))
    wrapped = get_peft_model(build_tiny_model(), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert select_rank(bits=1, model=wrapped).params_per_rank == 2 * 128  # the adapter's own matrices
    regex = select_rank(bits=1, model=model, target_modules=r".*\.mlp\.(gate|up)_proj")
    assert regex.params_per_rank == 2 * 2 * (64 + 128)
    with pytest.raises(ValueError, match=r"not found|no module"):
        select_rank(bits=1, model=model, target_modules=["nonexistent_proj"])


def test_cli_rank_explains_the_choice(tmp_path, capsys) -> None:
    from lora_rl_plugins.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA_31_8B))
    assert main(["rank", "--model-config", str(config), "--episodes", "320000", "--reward-levels", "2"]) == 0
    out = capsys.readouterr().out
    assert "320,000 episodes × 1 bits/episode (log2 of 2 reward levels) × safety margin 2 = 640,000 bits" in out
    assert "Σ E·(d_in+d_out)·r_m/r = 2,621,440" in out
    assert "<- chosen" in out and "chosen rank: r = 1" in out

    assert main(["rank", "--hidden-size", "4096", "--bits", "2097152", "--vllm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rank"] == 8 and data["capacity_bits"] == 2_097_152 and data["max_lora_rank"] == 8
    assert [row["rank"] for row in data["table"] if row["chosen"]] == [8]

    assert main(["rank", "--model-config", str(config), "--bits", "1e9", "--vllm", "--max-loras", "2"]) == 0
    out = capsys.readouterr().out
    assert "serve with max_lora_rank >= 16" in out and "MiB of LoRA buffers" in out


def test_cli_rank_rejects_ambiguous_shape(capsys) -> None:
    from lora_rl_plugins.cli import main

    with pytest.raises(SystemExit):
        main(["rank", "--bits", "10"])
