"""Single-digit addition as a chat task, for demos on a real instruct model (``lora-rl demo --model smollm2``).

Prompt: a system message "Answer with just the number." and a user message "What is a+b?" with
a, b drawn uniformly from 0..9. Answer: the last integer in the completion. Reward: 1.0 when that
answer is a + b, else 0.0. The reward is binary and a function of the answer alone, with exactly
one correct answer per prompt, so the bandwidth plugin's group bound log2(M+1) applies
(docs/theory.md §1, M the distinct answers in a group; §7 says why the uniform-prior value does not apply).

Why this task: SmolLM2-135M-Instruct rarely answers with a bare number ("To find 7+7, we ..."),
so with 8 new tokens the last number is the sum in about 25 % of samples; when it writes the
equation out ("3 + 4 = 7") it is usually right. GRPO teaches it to state the equation at once:
the reward rose from 0.06 to 1.0 within 10 steps (30 steps: README, "A real model").
"""

from __future__ import annotations

import random
import re
from typing import Any

__all__ = ["SYSTEM_PROMPT", "AdditionTask"]

#: Replaces SmolLM2's long default system prompt (43 prompt tokens -> 27) and asks for the number.
SYSTEM_PROMPT = "Answer with just the number."
_NUMBER = re.compile(r"-?\d+")


def _text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational ``[{"role": ..., "content": ...}]``."""
    if isinstance(completion, list):
        return "".join(str(message.get("content", "")) for message in completion if isinstance(message, dict))
    return str(completion)


class AdditionTask:
    """Prompts, reward function and answer extractor for single-digit addition in chat format.

    Args:
        seed: seed of the prompt stream.
        max_operand: operands are drawn from 0..max_operand (default 9).

    Raises:
        ValueError: ``max_operand`` is negative.
    """

    description = "single-digit addition"

    def __init__(self, seed: int = 0, max_operand: int = 9) -> None:
        if max_operand < 0:
            raise ValueError(f"max_operand must be >= 0, got {max_operand}")
        self.seed = seed
        self.max_operand = max_operand
        self.samples: list[tuple[list[str], list[float]]] = []
        """(completion texts, rewards) of every reward call, in order: the run's scored batches."""

    #: No single number: what the model must learn is a format ("a + b = c"), not a table of bits.
    bits_to_learn: float | None = None

    def problems(self, count: int, seed: int | None = None) -> list[tuple[int, int]]:
        """``count`` operand pairs (a, b), uniform and seeded."""
        rng = random.Random(self.seed if seed is None else seed)
        return [(rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)) for _ in range(count)]

    @staticmethod
    def messages(a: int, b: int) -> list[dict[str, str]]:
        """The chat prompt for a + b: the system message and the question."""
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"What is {a}+{b}?"}]

    def dataset(self, count: int, seed: int | None = None) -> Any:
        """A ``datasets.Dataset`` with "prompt" (chat messages) and "target" (the sum, as text) columns."""
        from datasets import Dataset

        pairs = self.problems(count, seed)
        return Dataset.from_list([{"prompt": self.messages(a, b), "target": str(a + b)} for a, b in pairs])

    @staticmethod
    def answer(completion: Any) -> str | None:
        """The last integer in the completion, as text; None when it has none."""
        numbers = _NUMBER.findall(_text(completion))
        return numbers[-1] if numbers else None

    def reward(self, completions: list[Any], target: list[str], **_: Any) -> list[float]:
        """1.0 when the completion's last integer is the sum, else 0.0 (a TRL reward function;
        ``target`` is the dataset column TRL passes through)."""
        rewards = [float(self.answer(c) == t) for c, t in zip(completions, target, strict=True)]
        self.samples.append(([_text(c) for c in completions], rewards))
        return rewards

    def format_samples(self) -> str:
        """The first and the last scored batch's first completions with their rewards (what changed)."""
        if not self.samples:
            return ""
        lines = ["", "  completions (reward), first and last generation batch:"]
        picks = [1] if len(self.samples) == 1 else [1, len(self.samples)]
        for call in picks:
            texts, rewards = self.samples[call - 1]
            shown = "  ".join(f"{text!r} ({reward:g})" for text, reward in zip(texts[:4], rewards[:4], strict=True))
            lines.append(f"    batch {call:>3}: {shown}")
        return "\n".join(lines)

    def callback_options(self) -> dict[str, Any]:
        """``LoraRLCallback`` options for this task: the answer extractor (no answer-space size: the sums
        0..18 are not uniform, so the uniform-prior value would not hold)."""
        return {"answer_extractor": self.answer}
