"""The problem record and the error every vLLM check returns or raises."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VLLMLoRAError", "VLLMProblem"]


class VLLMLoRAError(ValueError):
    """vLLM would refuse this adapter or engine setting; ``problems`` lists every reason."""

    def __init__(self, problems: list[VLLMProblem], context: str = "vLLM would reject this LoRA setup") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{context} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")


@dataclass(frozen=True)
class VLLMProblem:
    """One reason vLLM would refuse: which rule, what is wrong, and how to fix it."""

    rule: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}"
