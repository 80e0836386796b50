"""GPU memory vLLM pre-allocates for LoRA buffers (estimate)."""

from __future__ import annotations

from typing import Any

from .architectures import config_value, model_config_values, moe_layers, text_config, vllm_architecture

__all__ = ["vllm_lora_memory_bytes"]


def vllm_lora_memory_bytes(
    model_config: Any,
    *,
    max_lora_rank: int,
    max_loras: int = 1,
    dtype_bytes: int = 2,
    include_embeddings: bool | None = None,
) -> int:
    """GPU memory vLLM (0.32-0.34) pre-allocates for LoRA buffers (estimate; TP 1, no fully sharded LoRA, no EP).

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
    config = model_config_values(model_config)
    arch = vllm_architecture(config)
    text = text_config(config)
    missing = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not config_value(text, k)
    ]
    if missing:
        raise ValueError(f"the model config lacks {', '.join(missing)}: give the full config.json of the base model")
    is_moe = bool(
        config_value(text, "num_experts")
        or config_value(text, "num_local_experts")
        or config_value(text, "n_routed_experts")
    )
    qwen_moe = arch is not None and arch.moe and "models/qwen3_moe.py:" in arch.source
    if is_moe and not qwen_moe:
        names = config_value(config, "architectures", None) or [config_value(config, "model_type", "this model")]
        name = arch.name if arch else names[0]
        raise ValueError(
            f"the LoRA memory of {name} is not estimated: the estimate covers dense Llama-style models and "
            "Qwen3-MoE (vLLM's 2-D FusedMoEWithLoRA buffers); other mixture-of-experts layouts differ"
        )
    per_rank = _decoder_per_rank(text, qwen_moe, arch is not None and arch.fused_phi3)
    if include_embeddings is None:
        include_embeddings = arch.embeddings if arch is not None else True
    if include_embeddings:
        hidden, vocab = int(config_value(text, "hidden_size")), int(config_value(text, "vocab_size"))
        per_rank += (vocab + hidden) + (hidden + vocab)
    return dtype_bytes * max_loras * max_lora_rank * per_rank


def _decoder_per_rank(text: Any, qwen_moe: bool, fused_phi3: bool) -> int:
    """Σ over decoder layers of the LoRA buffer elements per unit of rank (docs/theory.md §5)."""
    hidden = int(config_value(text, "hidden_size"))
    layers = int(config_value(text, "num_hidden_layers"))
    heads = int(config_value(text, "num_attention_heads"))
    kv_heads = int(config_value(text, "num_key_value_heads", heads))
    head_dim = int(config_value(text, "head_dim", hidden // heads))
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = 4 * hidden + 2 * q + 2 * kv
    if qwen_moe:
        experts = int(config_value(text, "num_experts"))
        moe_intermediate = int(config_value(text, "moe_intermediate_size"))
        sparse, dense = moe_layers(text)
        per_rank = sparse * (attention + (hidden + experts) + 3 * experts * (hidden + moe_intermediate))
        if dense:
            per_rank += dense * (attention + 3 * hidden + 3 * int(config_value(text, "intermediate_size")))
        return per_rank
    intermediate = int(config_value(text, "intermediate_size"))
    mlp = 3 * hidden + 3 * intermediate  # two-slice gate_up 2H + 2I, down_proj I + H
    if fused_phi3:  # single-slice qkv (H + Q + 2KV) and gate_up (H + 2I)
        attention, mlp = attention - 2 * hidden, mlp - hidden
    return layers * (attention + mlp)
