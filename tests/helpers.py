"""Builders for real GRPO runs on the tiny local model, shared by the tests."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
from lora_rl_plugins.demo.task import CodebookTask


class RecordingReward:
    """A TRL reward function that returns ``fn(prompts, completions)`` and records every call."""

    def __init__(self, fn: Callable[[list[str], list[str]], list[Any]], name: str = "recorded") -> None:
        self.fn = fn
        self.calls: list[list[Any]] = []
        self.completions: list[list[str]] = []
        self.__name__ = name

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[Any]:
        rewards = self.fn(prompts, completions)
        self.calls.append(list(rewards))
        self.completions.append(list(completions))
        return rewards


def grpo_trainer(
    reward_funcs: Any,
    tmp_path: Any,
    *,
    steps: int = 4,
    peft: bool = True,
    model: Any = None,
    batch: int = 16,
    generations: int = 4,
    completion_length: int = 2,
    warm_up: bool = False,
    **config: Any,
) -> Any:
    """A real ``GRPOTrainer`` on the tiny model; ``config`` overrides ``GRPOConfig`` fields."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = build_tokenizer()
    task = CodebookTask()
    if model is None:
        model = build_tiny_model()
        if warm_up:
            task.warm_up(model, tokenizer, steps=60)
    settings: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=batch,
        num_generations=generations,
        max_completion_length=completion_length,
        learning_rate=2e-3,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    settings.update(config)
    args = GRPOConfig(**settings)
    dataset_size = max(64, steps * args.generation_batch_size // args.num_generations + 16)
    return GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=task.dataset(dataset_size),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if peft else None,
    )


def isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def latest_logged(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's latest logged value over a trainer's ``log_history`` (end-of-training summary left out):
    the quiet log line publishes a running total or a setting only when it changes."""
    latest: dict[str, Any] = {}
    for entry in history:
        if "train_runtime" not in entry:
            latest.update(entry)
    return latest
