"""Unsloth integration: ``get_peft_model`` with ``r="auto"`` and a vLLM check before any generation.

    from unsloth import FastLanguageModel
    from lora_rl_plugins import RunPlan
    from lora_rl_plugins.integrations.unsloth import get_peft_model

    model, tokenizer = FastLanguageModel.from_pretrained(name, fast_inference=True, max_lora_rank=32)
    model = get_peft_model(model, r="auto", plan=RunPlan(dataset_size=7473, generations=8, reward_levels=2))

A drop-in for ``FastLanguageModel.get_peft_model``: the same arguments, plus ``r="auto"``
(``lora_rl_plugins.select_rank`` over the modules Unsloth will adapt) and, when the model was loaded
with ``fast_inference=True``, the whole LoRA config checked against the engine's ``max_lora_rank``
(as Unsloth rounded it) before vLLM sees it, as Unsloth will build it (on a mixture-of-experts
model: ``target_parameters`` on the fused experts, which PEFT gives ``gate_up_proj`` rank 2r).
Unsloth needs a GPU; everything that does not need Unsloth itself lives in
``lora_rl_plugins.serving.unsloth`` and runs anywhere.
"""

from __future__ import annotations

from typing import Any

from lora_rl_plugins.kl.kl_free import check_kl_free
from lora_rl_plugins.lora.capacity import DEFAULT_BITS_PER_PARAM
from lora_rl_plugins.planning.rank import RankChoice, RunPlan, select_rank
from lora_rl_plugins.plugin.log import logger
from lora_rl_plugins.serving.unsloth import UNSLOTH_DEFAULT_TARGET_MODULES, check_unsloth_lora, unsloth_lora_config

__all__ = ["engine_max_lora_rank", "get_peft_model", "kl_free_config"]


def engine_max_lora_rank(model: Any) -> int | None:
    """The ``max_lora_rank`` of the vLLM engine Unsloth attached (``fast_inference=True``), else None."""
    engine = getattr(model, "vllm_engine", None)
    if engine is None:
        inner = getattr(model, "model", None)
        engine = getattr(inner, "vllm_engine", None)
    if engine is None:
        return None
    llm_engine = getattr(engine, "llm_engine", engine)
    lora_config = getattr(getattr(llm_engine, "vllm_config", None), "lora_config", None) or getattr(
        llm_engine, "lora_config", None
    )
    rank = getattr(lora_config, "max_lora_rank", None)
    return int(rank) if rank is not None else None


def get_peft_model(
    model: Any,
    r: int | str = 16,
    *,
    plan: RunPlan | None = None,
    bits: float | None = None,
    bits_per_param: float = DEFAULT_BITS_PER_PARAM,
    **kwargs: Any,
) -> Any:
    """``FastLanguageModel.get_peft_model`` with ``r="auto"`` and a fail-fast vLLM rank check."""
    engine_rank = engine_max_lora_rank(model)
    if r == "auto":
        choice: RankChoice = select_rank(
            plan=plan,
            bits=bits,
            model=model,
            target_modules=list(kwargs.get("target_modules", UNSLOTH_DEFAULT_TARGET_MODULES)),
            bits_per_param=bits_per_param,
            max_lora_rank=engine_rank,
        )
        r = choice.rank
        logger.warning(
            "lora_rl_plugins: r='auto' chose r=%d: %s bits fit in %s bits of capacity (%s rule, %g bits/param)",
            r,
            f"{choice.bits:,.0f}",
            f"{choice.capacity_bits:,.0f}",
            choice.rule,
            bits_per_param,
        )
    elif not isinstance(r, int) or isinstance(r, bool):
        raise TypeError(f'r must be a positive integer or "auto", got {r!r}')
    if engine_rank is not None:
        # the config Unsloth will build, MoE expert target_parameters and PEFT's fused rank_pattern included
        check_unsloth_lora(unsloth_lora_config(r, model=model, **kwargs), engine_max_lora_rank=engine_rank)
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(model, r=r, **kwargs)


def kl_free_config(config: Any) -> Any:
    """Make a TRL / Unsloth ``GRPOConfig`` KL-free, in place: ``beta = 0.0``.

    Unsloth resolves an unset ``beta`` to 0.001 unless ``loss_type`` is "dapo" or "dr_grpo"
    (docs/theory.md §4), so KL-free training must set it explicitly; ``sync_ref_model=True`` is refused.
    Then add ``LoraRLCallback(trainer, kl_free=True)`` to keep the KL monitor as guard rail.
    """
    check_kl_free(beta=0.0, sync_ref_model=bool(getattr(config, "sync_ref_model", False)))
    config.beta = 0.0
    return config
