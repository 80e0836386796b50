"""Unsloth fast_inference GRPO with r="auto", the vLLM rank check and KL-free mode.

    python examples/unsloth_grpo.py [--model PATH_OR_ID] [--max-lora-rank 16] [--episodes 20000]

Everything up to Unsloth itself runs anywhere: the rank is planned from the run (episodes x bits
per episode x margin, over the matrices Unsloth adapts), checked against the max_lora_rank
Unsloth will start vLLM with, and the GRPO config is made KL-free. Unsloth's fast_inference needs
a CUDA GPU: elsewhere the script says so and stops at that boundary.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Hub id or local path (default: a small local model)")
    parser.add_argument("--max-lora-rank", type=int, default=16, help="what you pass to from_pretrained")
    parser.add_argument("--episodes", type=float, default=20_000)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)

    from lora_rl_plugins import RunPlan, select_rank
    from lora_rl_plugins.serving.unsloth import (
        UNSLOTH_DEFAULT_TARGET_MODULES,
        check_unsloth_lora,
        unsloth_engine_rank,
        unsloth_lora_config,
    )

    model_path = args.model
    if model_path is None:  # a small local model (head_dim 64 for vLLM's kernels), nothing downloaded
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer

        model_path = tempfile.mkdtemp(prefix="lora-rl-unsloth-")
        build_tiny_model(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512).save_pretrained(
            model_path
        )
        build_tokenizer().save_pretrained(model_path)

    # 1. Plan the rank before loading anything big: only the config is read (meta device).
    engine_rank = unsloth_engine_rank(args.max_lora_rank)
    plan = RunPlan(episodes=args.episodes, reward_levels=2)
    from lora_rl_plugins.lora.shapes import load_model_config

    if os.path.isdir(model_path):
        config = load_model_config(model_path)
    else:  # a Hub id: its config.json only
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
    choice = select_rank(
        plan=plan, model_config=config, target_modules=list(UNSLOTH_DEFAULT_TARGET_MODULES), max_lora_rank=engine_rank
    )
    print(f"plan: {plan.explain()}")
    print(
        f"r='auto' -> r={choice.rank} ({choice.capacity_bits:,.0f} bits of capacity); "
        f"Unsloth starts vLLM with max_lora_rank={engine_rank}"
    )
    # 2. The whole LoRA config against the engine, before any generation (unsloth issue #2097).
    check_unsloth_lora(unsloth_lora_config(choice.rank, lora_alpha=2 * choice.rank), engine_max_lora_rank=engine_rank)
    print("vLLM check: the adapter fits the engine")

    # 3. Unsloth itself: GPU only.
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU")
        from unsloth import FastLanguageModel
    except Exception as error:  # ImportError, or Unsloth refusing to import without a GPU
        print(
            f"Unsloth fast_inference needs a CUDA GPU and Unsloth ({type(error).__name__}: {error}); "
            "stopping at that boundary: the rank plan and the vLLM check above ran."
        )
        return 0

    from trl import GRPOConfig, GRPOTrainer

    from lora_rl_plugins.demo.task import CodebookTask
    from lora_rl_plugins.integrations.trl import LoraRLCallback
    from lora_rl_plugins.integrations.unsloth import get_peft_model, kl_free_config

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_path,
        max_seq_length=128,
        fast_inference=True,
        max_lora_rank=args.max_lora_rank,
        gpu_memory_utilization=0.4,
    )
    model = get_peft_model(model, r="auto", plan=plan, lora_alpha=16)  # checked against the engine
    task = CodebookTask()
    config = kl_free_config(
        GRPOConfig(
            output_dir="runs/unsloth_grpo",
            per_device_train_batch_size=32,
            num_generations=8,
            max_completion_length=4,
            max_steps=args.steps,
            learning_rate=2e-4,
            use_vllm=True,
            report_to=[],
        )
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=task.reward,
        args=config,
        train_dataset=task.dataset(args.steps * 4 + 16),
    )
    trainer.add_callback(LoraRLCallback(trainer, kl_free=True, answer_extractor=task.answer))
    trainer.train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
