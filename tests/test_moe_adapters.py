"""MoE and per-matrix ranks counted as PEFT builds them (issue 13, item 5).

Right values come from PEFT itself (``get_nb_trainable_parameters``, ``get_delta_weight``) or are
recomputed here by hand; never from the code under test.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest

pytest.importorskip("peft")

QWEN3_30B_A3B = {
    "model_type": "qwen3_moe",
    "architectures": ["Qwen3MoeForCausalLM"],
    "hidden_size": 2048,
    "num_hidden_layers": 48,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 768,
    "intermediate_size": 6144,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
}
SMALL = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def _meta_peft(config: dict, **lora):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **values))
        return get_peft_model(model, LoraConfig(**lora))


def _peft_count(model) -> int:
    """PEFT's own count, checked against the numel of its LoRA factors."""
    count = model.get_nb_trainable_parameters()[0]
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert count == lora
    return count


CASES = [
    ({**QWEN3_30B_A3B, **SMALL, "hidden_size": 64, "num_experts": 8, "moe_intermediate_size": 32}, "all-linear", {}),
    (
        {**QWEN3_30B_A3B, **SMALL, "hidden_size": 64, "num_experts": 8, "moe_intermediate_size": 32},
        [*ATTENTION, "gate_proj", "up_proj", "down_proj"],  # transformers-v4 names: PEFT fuses and doubles
        {},
    ),
    (
        {**QWEN3_30B_A3B, **SMALL, "hidden_size": 64, "num_experts": 8, "moe_intermediate_size": 32},
        ATTENTION,
        {"target_parameters": EXPERTS},
    ),
    (
        {"model_type": "mixtral", **SMALL, "hidden_size": 64, "intermediate_size": 48, "num_local_experts": 4},
        "all-linear",
        {},
    ),
    (
        {"model_type": "olmoe", **SMALL, "hidden_size": 64, "intermediate_size": 48, "num_experts": 4},
        ATTENTION,
        {"target_parameters": EXPERTS},
    ),
    (
        {"model_type": "llama", **SMALL, "hidden_size": 64, "intermediate_size": 96, "vocab_size": 128},
        "all-linear",
        {"rank_pattern": {"q_proj": 32, r"layers\.1\.mlp\.down_proj": 3}, "alpha_pattern": {"v_proj": 7}},
    ),
]


@pytest.mark.parametrize(("config", "targets", "options"), CASES)
def test_counts_equal_peft_at_several_ranks(config, targets, options) -> None:
    from lora_rl_plugins.lora.adapters import summarize_adapter
    from lora_rl_plugins.lora.shapes import adapted_matrices
    from lora_rl_plugins.plugin.events import AdapterSummary

    plan = AdapterSummary(adapted_matrices(model_config=config, target_modules=targets, **options))
    for r in (1, 4, 9):
        model = _meta_peft(config, r=r, lora_alpha=2 * r, target_modules=targets, **options)
        peft_count = _peft_count(model)
        summary = summarize_adapter(model)
        assert summary.trainable_params == peft_count
        assert plan.params_at(r) == peft_count  # params(r) from the r=1 plan, as rank_pattern scales with r
        if not options.get("rank_pattern"):
            assert r * summary.params_per_rank == peft_count  # exact: every rank moves with r
        largest = max([r, *model.peft_config["default"].rank_pattern.values()])
        assert summary.max_rank == largest  # what vLLM's validate_legal checks


def test_qwen3_30b_a3b_params_per_rank_and_select_rank() -> None:
    from lora_rl_plugins import select_rank

    peft_per_rank = _peft_count(_meta_peft(QWEN3_30B_A3B, r=1, lora_alpha=1, target_modules="all-linear"))
    assert peft_per_rank == 62_281_728
    # by hand: 48 layers x [q 2048+4096, k,v 2048+512, o 4096+2048, router 2048+128,
    #   experts down 128*(768+2048) at r, gate_up 128*(2048+1536) at 2r]
    by_hand = 48 * ((2048 + 4096) * 2 + (2048 + 512) * 2 + (2048 + 128) + 128 * (768 + 2048) + 2 * 128 * (2048 + 1536))
    assert by_hand == peft_per_rank
    choice = select_rank(bits=1e9 * 32, model_config=QWEN3_30B_A3B, vllm=True)
    assert choice.params_per_rank == peft_per_rank
    assert choice.rank == math.ceil(1e9 / peft_per_rank) == 17
    assert choice.max_effective_rank() == 34  # gate_up_proj at 2r
    assert choice.max_lora_rank == 64  # vLLM needs max(r, *rank_pattern.values()) <= max_lora_rank
    with pytest.raises(ValueError, match=r"largest per-matrix rank is 34\), above max_lora_rank=32"):
        select_rank(bits=1e9 * 32, model_config=QWEN3_30B_A3B, max_lora_rank=32)


def test_absolute_rank_pattern_is_fixed_in_the_plan() -> None:
    from lora_rl_plugins import select_rank

    config = {"model_type": "llama", **SMALL, "hidden_size": 64, "intermediate_size": 96, "vocab_size": 128}
    choice = select_rank(
        bits=32 * 5_000, model_config=config, target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 16}
    )
    # q_proj 64->32 per layer stays at 16; v_proj 64->16 grows with r: params(r) = 2*16*(64+32) + r*2*(64+16)
    assert choice.fixed_params == 2 * 16 * (64 + 32) and choice.params_per_rank == 2 * (64 + 16)
    assert choice.rank == math.ceil((5_000 - 2 * 16 * 96) / 160) == 13
    for r in (1, 5):
        peft_count = _peft_count(
            _meta_peft(config, r=r, target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 16})
        )
        assert choice.params_at(r) == peft_count


def test_per_expert_update_norms_match_peft_delta_weight() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_rl_plugins.kl.monitor import KLMonitorPlugin

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "qwen3_moe",
        hidden_size=32,
        num_hidden_layers=1,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=64,
    )
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float64)
    lora = LoraConfig(r=3, lora_alpha=5, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, lora)
    monitor = KLMonitorPlugin()
    values = monitor._update_bounds(model, 1.0, 1.0)
    spectral_max, frobenius_sq, checked = 0.0, 0.0, 0
    for name, layer in model.named_modules():
        if type(layer).__name__ == "ParamWrapper" and layer.num_experts > 1:
            delta = layer.get_delta_weight("default").to(torch.float64)  # PEFT's own [E, ·, ·]
            clean = name.removeprefix("base_model.model.").replace(".base_layer", "")
            for e in range(layer.num_experts):
                norms = monitor.module_norms[f"{clean}.{layer.parameter_name}[{e}]"]
                spectral = float(torch.linalg.matrix_norm(delta[e], ord=2))
                frobenius = float(torch.linalg.matrix_norm(delta[e], ord="fro"))
                assert norms["spectral"] == pytest.approx(spectral, rel=1e-10)
                assert norms["frobenius"] == pytest.approx(frobenius, rel=1e-10)
                spectral_max, frobenius_sq, checked = (
                    max(spectral_max, spectral),
                    frobenius_sq + frobenius**2,
                    checked + 1,
                )
        elif hasattr(layer, "get_delta_weight") and "default" in getattr(layer, "lora_A", {}):
            delta = layer.get_delta_weight("default").to(torch.float64)
            spectral_max = max(spectral_max, float(torch.linalg.matrix_norm(delta, ord=2)))
            frobenius_sq += float(torch.linalg.matrix_norm(delta, ord="fro")) ** 2
    assert checked == 2 * 4  # gate_up_proj and down_proj, 4 experts each
    assert values["update_spectral_max"] == pytest.approx(spectral_max, rel=1e-10)
    assert values["update_frobenius"] == pytest.approx(frobenius_sq**0.5, rel=1e-10)


def test_bandwidth_params_per_rank_follows_peft() -> None:
    from lora_rl_plugins.bandwidth.plugin import BandwidthPlugin
    from lora_rl_plugins.lora.adapters import summarize_adapter
    from lora_rl_plugins.plugin.events import AdapterReady

    config = {**QWEN3_30B_A3B, **SMALL, "hidden_size": 64, "num_experts": 8, "moe_intermediate_size": 32}
    model = _meta_peft(config, r=4, lora_alpha=8, target_modules="all-linear")
    plugin = BandwidthPlugin()
    plugin.on_adapter_ready(AdapterReady(summarize_adapter(model), model))
    peft_count = _peft_count(model)
    assert plugin.capacity_bits == 32 * peft_count
    assert plugin.adapter.params_per_rank * 4 == peft_count
    plugin.bits_total = 32 * 3 * peft_count / 4 + 1  # needs a little more than r = 3
    assert plugin.rank_sufficient == 4


def test_cli_rank_vllm_on_moe_configs(tmp_path, capsys) -> None:
    from lora_rl_plugins.cli import main

    qwen = tmp_path / "qwen3_moe.json"
    qwen.write_text(json.dumps(QWEN3_30B_A3B))
    assert main(["rank", "--model-config", str(qwen), "--bits", "1e9", "--bits-per-param", "1", "--vllm"]) == 0
    out = capsys.readouterr().out
    assert "chosen rank: r = 17" in out and "serve with max_lora_rank >= 64" in out
    # vLLM 0.33 buffers (vllm_rules.md §4), per unit of max_lora_rank: 48 x [qkv 3H+Q+2KV, o Q+H, router H+E,
    # experts 3E(H+I)] + embed_tokens (V+H) + lm_head (H+V)
    H, Q, KV, E, FF, V = 2048, 4096, 512, 128, 768, 151936
    per_rank = 48 * ((3 * H + Q + 2 * KV) + (Q + H) + (H + E) + 3 * E * (H + FF)) + 2 * (V + H)
    assert per_rank == 53_152_512
    assert f"~{2 * 64 * per_rank / 2**20:,.1f} MiB of LoRA buffers" in out
    mixtral = tmp_path / "mixtral.json"
    mixtral.write_text(json.dumps({"model_type": "mixtral", **SMALL, "hidden_size": 64, "intermediate_size": 48}))
    assert main(["rank", "--model-config", str(mixtral), "--bits", "1e6", "--vllm"]) == 0
    out = capsys.readouterr().out
    assert "chosen rank: r =" in out and "memory:       not estimated (the LoRA memory of " in out


def test_matrices_carry_their_own_rank_scaling_and_expert_shape() -> None:
    from lora_rl_plugins.lora.adapters import lora_layers, summarize_adapter

    config = {**QWEN3_30B_A3B, **SMALL, "hidden_size": 64, "num_experts": 8, "moe_intermediate_size": 32}
    model = _meta_peft(config, r=4, lora_alpha=12, target_modules="all-linear")
    by_name = {m.name.rsplit(".", 1)[-1]: m for m in summarize_adapter(model).matrices}
    gate_up, down, router = by_name["gate_up_proj"], by_name["down_proj"], by_name["weight"]
    # PEFT's conversion: gate_up_proj at rank 2r with alpha 2α, so scaling 24/8 = α/r; per expert [2I, H]
    assert (gate_up.rank, gate_up.scaling, gate_up.experts, gate_up.d_in, gate_up.d_out) == (8, 3.0, 8, 64, 64)
    assert (down.rank, down.scaling, down.experts, down.d_in, down.d_out) == (4, 3.0, 8, 32, 64)
    assert (router.rank, router.experts, router.d_in, router.d_out) == (4, 1, 64, 8)  # router [E, H]
    assert gate_up.full_rank == 64 and down.full_rank == 32  # per expert, not of the stack
    experts = [v for v in lora_layers(model) if v.kind == "expert"]
    assert len(experts) == 2 * 2 * 8  # 2 layers x (gate_up, down) x 8 experts
    first = next(v for v in experts if v.name.endswith("gate_up_proj[3]"))
    assert tuple(first.weight_a.shape) == (8, 64) and tuple(first.weight_b.shape) == (64, 8)

    llama = {"model_type": "llama", **SMALL, "hidden_size": 64, "intermediate_size": 96, "vocab_size": 128}
    model = _meta_peft(
        llama,
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"q_proj": 32},
        alpha_pattern={"v_proj": 7},
    )
    summary = summarize_adapter(model)
    q = next(m for m in summary.matrices if m.name.endswith("q_proj"))
    v = next(m for m in summary.matrices if m.name.endswith("v_proj"))
    assert (q.rank, q.scaling, v.rank, v.scaling) == (32, 16 / 32, 8, 7 / 8)
    assert summary.max_rank == 32 and summary.base_rank == 8
    assert summary.params_per_rank * 8 == summary.trainable_params == _peft_count(model)
