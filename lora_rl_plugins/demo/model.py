"""A tiny causal language model and tokenizer built locally: no Hub, no download.

Needs ``transformers`` and ``tokenizers`` (the ``trl`` or ``lightning`` extra).
"""

from __future__ import annotations

from typing import Any

__all__ = ["VOCAB", "build_tiny_model", "build_tokenizer"]

#: Characters the tokenizer knows, one token each.
VOCAB = ["<pad>", "<eos>", *"0123456789", "=", "+", " ", *"abcdefghijklmnopqrstuvwxyz"]


def build_tokenizer() -> Any:
    """A character-level ``PreTrainedTokenizerFast`` over ``VOCAB`` (pad and eos are special)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({token: i for i, token in enumerate(VOCAB)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    seed: int = 0,
) -> Any:
    """A randomly initialised Qwen2-architecture causal LM (float32, CPU)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size or len(VOCAB),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=VOCAB.index("<pad>"),
        eos_token_id=VOCAB.index("<eos>"),
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model
