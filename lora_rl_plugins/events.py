"""The events that flow through the hooks: small, framework-free dataclasses.

Integrations build them from a trainer's state; plugins read them. Tensors appear only in
``PolicySample`` (the KL monitor needs the model and the generated token ids).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .adapters import AdapterSummary

__all__ = [
    "Action",
    "AdapterReady",
    "Collective",
    "GatheringCollective",
    "PolicySample",
    "RolloutsScored",
    "RunStarted",
    "SetKLPenalty",
    "SingleProcess",
    "StepEnded",
    "StopTraining",
    "TensorCollective",
]


@runtime_checkable
class Collective(Protocol):
    """Cross-process reductions an integration provides (DDP, accelerate, or one process)."""

    world_size: int
    rank: int

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (every process gets the result)."""
        ...

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of ``values`` over all processes."""
        ...


class GatheringCollective:
    """A ``Collective`` built on one primitive: gather a vector from every process.

    Integrations implement ``gather_rows`` with their framework's all-gather (rows in process
    order); sums and maxima follow.
    """

    world_size: int = 1
    rank: int = 0

    def gather_rows(self, values: Sequence[float]) -> list[list[float]]:
        raise NotImplementedError

    def _rows(self, values: Sequence[float]) -> list[list[float]]:
        return self.gather_rows(values) if self.world_size > 1 else [[float(v) for v in values]]

    def sum(self, values: Sequence[float]) -> list[float]:
        return [float(sum(column)) for column in zip(*self._rows(values), strict=True)]

    def max(self, values: Sequence[float]) -> list[float]:
        return [float(max(column)) for column in zip(*self._rows(values), strict=True)]


class TensorCollective(GatheringCollective):
    """A ``Collective`` from a framework's tensor all-gather (accelerate's ``gather``, Lightning's
    ``strategy.all_gather``); torch is imported only when there is more than one process."""

    def __init__(self, all_gather: Any, device: Any, world_size: int, rank: int) -> None:
        self.all_gather, self.device = all_gather, device
        self.world_size, self.rank = world_size, rank

    def gather_rows(self, values: Sequence[float]) -> list[list[float]]:
        import torch

        local = torch.tensor([[float(v) for v in values]], dtype=torch.float64, device=self.device)
        return self.all_gather(local).reshape(self.world_size, -1).tolist()


class SingleProcess:
    """The ``Collective`` of a run on one process."""

    world_size = 1
    rank = 0

    def sum(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def max(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]


@dataclass(frozen=True)
class RunStarted:
    """Training is about to start (or resume)."""

    framework: str
    """"trl", "lightning", "unsloth" or another integration's name."""
    group_size: int
    """K: rollouts (generations) per prompt."""
    total_steps: int | None = None
    """Optimizer steps the run plans, where the trainer knows them."""
    rollouts_per_step: int | None = None
    """Rollouts scored per optimizer step over all processes, where known."""
    world_size: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    """Trainer settings plugins may want (temperature, beta, use_vllm, ...)."""


@dataclass(frozen=True)
class AdapterReady:
    """The model is wrapped and its adapter is known."""

    adapter: AdapterSummary
    model: Any = None
    """The trained model (a PEFT model where LoRA is used); plugins must not keep gradients alive."""


@dataclass(frozen=True)
class RolloutsScored:
    """One generation batch was scored: every rollout of every process, in global order.

    ``rewards[i][f]`` is reward function f's value for rollout i (NaN where it returned None);
    rollouts ``[g*K, (g+1)*K)`` are the K generations of prompt g.
    """

    step: int
    """The optimizer step these rollouts train (1-based)."""
    rewards: Sequence[Sequence[float]]
    reward_names: Sequence[str]
    reward_weights: Sequence[float]
    group_size: int
    completions: Sequence[Any] | None = None
    """One per rollout (text or token ids); used for distinct-completion counts and answers."""
    answers: Sequence[Hashable] | None = None
    """Final answers, one per rollout, where the integration already extracted them."""
    token_rewards: Sequence[Sequence[float]] | None = None
    """Per-token rewards of each rollout, for token-level reward setups."""


@dataclass(frozen=True)
class PolicySample:
    """Sequences the policy just generated, on this process, for measurements that need the model.

    ``input_ids``/``attention_mask`` cover prompt + completion; the last
    ``completion_mask.shape[1]`` positions are the completion, and ``completion_mask`` marks
    its real tokens.
    """

    step: int
    model: Any
    input_ids: Any
    attention_mask: Any
    completion_mask: Any
    temperature: float = 1.0
    collective: Collective = field(default_factory=SingleProcess)
    reference_adapter: str | None = None
    """Name of a frozen reference adapter (TRL's "ref") to use instead of disabling adapters."""


@dataclass(frozen=True)
class StepEnded:
    """An optimizer step finished."""

    step: int
    total_steps: int | None = None


@dataclass(frozen=True)
class StopTraining:
    """Ask the trainer to end training cleanly after this step."""

    reason: str


@dataclass(frozen=True)
class SetKLPenalty:
    """Ask the trainer to (re)enable a KL penalty toward the reference with coefficient ``beta``."""

    beta: float
    reason: str


Action = StopTraining | SetKLPenalty
