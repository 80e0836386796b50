"""The secret-codebook task (docs/theory.md §7): the symbol-emitting bandit of [Hernandez].

Prompt "d=" for a digit d; reward 1 when the completion starts with code[d] for a hidden
codebook ``code`` (each digit mapped to an independently drawn digit), else 0. The policy
must learn 10·log2(10) ≈ 33.2 bits; each binary rollout delivers at most 1 bit.
"""

from __future__ import annotations

import math
import random
from typing import Any

__all__ = ["CodebookTask"]


class CodebookTask:
    """Prompts, reward function, answer extractor and a supervised warm-up for the codebook task."""

    def __init__(self, seed: int = 0, digits: int = 10) -> None:
        rng = random.Random(seed)
        self.digits = digits
        self.code = {str(d): str(rng.randrange(digits)) for d in range(digits)}

    @property
    def bits_to_learn(self) -> float:
        """H(code) = digits · log2(digits): each digit's code is uniform and independent."""
        return self.digits * math.log2(self.digits)

    def prompts(self, count: int, seed: int = 0) -> list[str]:
        """``count`` prompts "d=" with digits drawn uniformly (seeded)."""
        rng = random.Random(seed)
        return [f"{rng.randrange(self.digits)}=" for _ in range(count)]

    def dataset(self, count: int, seed: int = 0) -> Any:
        """A ``datasets.Dataset`` with a "prompt" column of ``count`` prompts."""
        from datasets import Dataset

        return Dataset.from_dict({"prompt": self.prompts(count, seed)})

    @property
    def reference_answers(self) -> dict[str, str]:
        """Prompt "d=" -> code[d] for every digit: the probe set whose answers hold the whole codebook."""
        return {f"{d}=": self.code[str(d)] for d in range(self.digits)}

    @staticmethod
    def answer(completion: Any) -> str | None:
        """The final answer of a completion: its first character, or None when it is empty."""
        text = completion if isinstance(completion, str) else str(completion)
        return text[0] if text else None

    def reward(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        """1.0 when the completion starts with code[d] for prompt "d=", else 0.0 (a TRL reward function)."""
        return [float(self.answer(c) == self.code[p[0]]) for p, c in zip(prompts, completions, strict=True)]

    def warm_up(self, model: Any, tokenizer: Any, steps: int = 150, lr: float = 3e-3, seed: int = 0) -> list[float]:
        """Supervised warm-up of the base model on a related format; returns the losses.

        A random-init model gives LoRA poor features (docs/theory.md §7). The warm-up teaches two things
        and not the codebook: "d=" -> one uniformly random digit then <eos> (so the initial reward is
        1/digits), and "d+" -> d (copying, so the model learns to carry the prompt digit to the answer
        position; that feature is what the LoRA policy then needs).
        """
        import torch

        generator = random.Random(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        losses = []
        for _ in range(steps):
            texts = []
            for i in range(64):
                d = generator.randrange(self.digits)
                answer = d if i % 2 else generator.randrange(self.digits)
                texts.append(f"{d}{'+' if i % 2 else '='}{answer}{tokenizer.eos_token}")
            batch = tokenizer(texts, return_tensors="pt")
            labels = batch["input_ids"].clone()
            labels[:, :2] = -100  # learn the answer and <eos>, not the prompt
            loss = model(**batch, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        return losses
