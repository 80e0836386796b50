"""What ``run_demo`` trains: a model, its tokenizer and a task, with the GRPO settings that suit them.

``tiny_setup`` is the default (the embedded tiny model on the codebook task, no download);
``lora_rl_plugins.demo.smollm2.smollm2_setup`` is SmolLM2-135M-Instruct on single-digit addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import build_tiny_model, build_tokenizer
from .task import CodebookTask

__all__ = ["DemoSetup", "tiny_setup"]


@dataclass
class DemoSetup:
    """A model, tokenizer and task for ``run_demo``.

    ``task`` provides ``dataset(count, seed=...)`` (a ``datasets.Dataset`` with a "prompt" column),
    ``reward`` (a TRL reward function) and ``bits_to_learn`` (bits, or None where no single number
    says what the task holds). ``grpo`` holds ``GRPOConfig`` fields that override the demo's
    defaults; ``callback_options`` are ``LoraRLCallback`` options for the task.
    """

    model: Any
    tokenizer: Any
    task: Any
    description: str
    callback_options: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    default_steps: int = 300
    default_rank: int = 8


def tiny_setup(seed: int = 0) -> DemoSetup:
    """The default demo: the tiny local model (warmed up, docs/theory.md §7) on the codebook task."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(seed=seed)
    task = CodebookTask(seed=seed)
    task.warm_up(model, tokenizer, seed=seed)
    return DemoSetup(
        model=model,
        tokenizer=tokenizer,
        task=task,
        description="the codebook task",
        callback_options={
            "answer_extractor": task.answer,
            "answer_space_size": task.digits,
            "reference_answer": task.reference_answers,  # probes: every codebook digit (learning/absorbed_bits)
        },
    )
