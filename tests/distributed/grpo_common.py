"""What the 2-process worker scripts share: the tiny GRPO trainer they launch (imported from beside them)."""

from __future__ import annotations

import os
from typing import Any

from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
from lora_rl_plugins.demo.task import CodebookTask

#: The adapter every worker trains.
LORA = dict(r=4, lora_alpha=8, target_modules="all-linear")


def tiny_grpo_trainer(out_dir: str, reward: Any, *, lora: dict[str, Any] | None = None, **config: Any) -> GRPOTrainer:
    """A 4-step ``GRPOTrainer`` on the tiny model (12 rollouts per process, groups of 8, fp32, CPU);
    ``lora`` replaces the ``LoraConfig`` fields (default ``LORA``), ``config`` overrides ``GRPOConfig`` fields."""
    settings: dict[str, Any] = dict(
        output_dir=os.path.join(out_dir, "trl"),
        per_device_train_batch_size=12,
        num_generations=8,
        max_completion_length=2,
        learning_rate=5e-2,
        max_steps=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    settings.update(config)
    return GRPOTrainer(
        model=build_tiny_model(),
        processing_class=build_tokenizer(),
        reward_funcs=reward,
        args=GRPOConfig(**settings),
        train_dataset=CodebookTask().dataset(64),
        peft_config=LoraConfig(**(lora or LORA)),
    )
